"""Exactness of the benchmark protocols on fixtures: the linear probe against a numpy Newton solver and closed-form
classifiers, k-NN against a plain float64 numpy reference, the few-shot draws and the classification metrics."""
from __future__ import annotations

import numpy as np
import pytest

from wfa.eval.classification import average_precision, mean_average_precision, per_class_accuracy, score, topk_accuracy
from wfa.eval.fewshot import MAX_VAL_SHOTS, draw
from wfa.eval.knn import knn_classify, knn_scores, nearest, vote_scores
from wfa.eval.probe import fit_logistic, linear_probe

# -- the linear probe


def newton_reference(x: np.ndarray, y: np.ndarray, num_classes: int, lam: float, multilabel: bool) -> tuple:
    """Minimise the probe's objective with Newton's method in plain numpy (the independent solver).

    Parameters theta = [W (D x C) row-major, b (C)]. Softmax's bias is defined up to a constant (the Hessian
    is singular there), so the step uses a least-squares solve and the bias is compared centred.
    """
    n, d = x.shape
    xt = np.hstack([x, np.ones((n, 1))])  # [N, D+1]: the last row of the (D+1) x C matrix is the bias
    theta = np.zeros((d + 1, num_classes))
    targets = y.astype(np.float64) if multilabel else np.eye(num_classes)[y]
    reg = np.r_[np.full(d, lam), 0.0]  # no penalty on the bias row
    for _ in range(50):
        logits = xt @ theta
        if multilabel:
            p = 1.0 / (1.0 + np.exp(-logits))
        else:
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
        grad = xt.T @ (p - targets) / n + reg[:, None] * theta
        hessian = np.zeros(((d + 1) * num_classes,) * 2)
        for i in range(n):
            block = np.diag(p[i] * (1 - p[i])) if multilabel else np.diag(p[i]) - np.outer(p[i], p[i])
            hessian += np.kron(np.outer(xt[i], xt[i]), block) / n
        hessian += np.kron(np.diag(reg), np.eye(num_classes))
        step = np.linalg.lstsq(hessian, grad.reshape(-1), rcond=None)[0].reshape(d + 1, num_classes)
        theta -= step
        if np.abs(step).max() < 1e-13:
            break
    return theta[:d], theta[d]


@pytest.mark.parametrize("multilabel", [False, True])
def test_probe_weights_equal_a_numpy_newton_solver(multilabel):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w_true = rng.normal(size=(5, 3)) * 4
    y = (x @ w_true + rng.normal(size=(60, 3)) > 0).astype(np.int8) if multilabel else np.argmax(
        x @ w_true + rng.gumbel(size=(60, 3)), axis=1)
    lam = 1e-2
    fitted = fit_logistic(x, y, 3, lam, multilabel=multilabel, tolerance=1e-10)
    weight, bias = newton_reference(x, y, 3, lam, multilabel)
    assert fitted.grad_max < 1e-7  # the float64 limit: the loss stops changing below ~1e-16
    np.testing.assert_allclose(fitted.weight.numpy(), weight, atol=1e-6)
    centre = (lambda b: b) if multilabel else (lambda b: b - b.mean())
    np.testing.assert_allclose(centre(fitted.bias.numpy()), centre(bias), atol=1e-6)
    # a warm start from another regularisation reaches the same minimiser
    warm = fit_logistic(x, y, 3, lam, multilabel=multilabel, init=fit_logistic(x, y, 3, 1.0, multilabel=multilabel),
                        tolerance=1e-10)
    np.testing.assert_allclose(warm.weight.numpy(), weight, atol=1e-6)


def separable_fixture(rng, per_class: int, classes: int, dim: int, noise: float, directions=None):
    """Unit-norm features near orthogonal class directions; the closed-form classifier is argmax over them."""
    if directions is None:
        directions = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:classes]
    y = np.repeat(np.arange(classes), per_class)
    x = directions[y] + noise * rng.normal(size=(len(y), dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True), y, directions


def test_probe_reaches_the_closed_form_accuracy_on_separable_data():
    rng = np.random.default_rng(1)
    classes = [f"c{i}" for i in range(4)]
    train_x, train_y, directions = separable_fixture(rng, 30, 4, 16, 0.15)
    test_x, test_y, _ = separable_fixture(rng, 50, 4, 16, 0.15, directions)
    closed_form = 100.0 * np.mean(np.argmax(test_x @ directions.T, axis=1) == test_y)
    assert closed_form == 100.0  # separable by construction
    for shots in (None, 4):
        result = linear_probe(train_x, train_y, test_x, test_y, classes, draw(train_y, shots, 0))
        assert result["top1"] == closed_form
        assert result["train_images"] == (120 if shots is None else 16)


def test_probe_matches_the_bayes_classifier_of_gaussian_classes():
    """Shared isotropic Gaussians: the Bayes-optimal rule is linear (nearest mean, closed form); a probe fitted
    on 2,000 samples scores within one point of it on 6,000 test samples."""
    rng = np.random.default_rng(3)
    means = rng.normal(size=(3, 8)) * 0.9
    classes = ["a", "b", "c"]

    def sample(n):
        y = rng.integers(0, 3, size=n)
        return means[y] + rng.normal(size=(n, 8)), y

    train_x, train_y = sample(2000)
    test_x, test_y = sample(6000)
    bayes = 100.0 * np.mean(np.argmax(test_x @ means.T - 0.5 * (means ** 2).sum(axis=1), axis=1) == test_y)
    result = linear_probe(train_x, train_y, test_x, test_y, classes, draw(train_y, None, 0))
    assert 60.0 < bayes and abs(result["top1"] - bayes) < 1.0
    assert f"{result['lambda']:.3g}" in result["held_out"] and result["grad_max"] < 1e-5


def test_probe_needs_held_out_images():
    x, y = np.eye(2), np.array([0, 1])
    with pytest.raises(ValueError, match="too small"):
        linear_probe(x, y, x, y, ["a", "b"], draw(y, None, 0))


# -- k-NN


def knn_reference(train_x, train_y, test_x, k, num_classes):
    """Plain numpy: float64 cosine similarities, stable sort (ties by training index), majority vote, ties to the
    class whose nearest neighbour comes first."""
    tx = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    qx = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    sims = qx.astype(np.float32).astype(np.float64) @ tx.astype(np.float32).astype(np.float64).T
    predictions, neighbours = [], []
    for row in sims:
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]
        neighbours.append(order)
        votes = np.bincount(train_y[order], minlength=num_classes)
        tied = set(np.flatnonzero(votes == votes.max()))
        predictions.append(next(int(train_y[j]) for j in order if train_y[j] in tied))
    return np.array(predictions), np.array(neighbours)


@pytest.mark.parametrize("k", [1, 3, 5, 20])
def test_knn_equals_the_numpy_reference(k):
    rng = np.random.default_rng(k)
    train_x = rng.normal(size=(300, 24)).astype(np.float32)
    train_x[100:110] = train_x[0]  # exact duplicates: tied similarities, broken by the training index
    train_y = rng.integers(0, 6, size=300)
    test_x = rng.normal(size=(80, 24)).astype(np.float32)
    test_x[:5] = train_x[0]
    expected, expected_neighbours = knn_reference(train_x, train_y, test_x, k, 6)
    idx, sims = nearest(train_x, test_x, k)
    np.testing.assert_array_equal(idx, expected_neighbours)
    assert np.all(np.diff(sims, axis=1) <= 0)
    scores = knn_scores(train_x, train_y, test_x, k, 6)
    np.testing.assert_array_equal(np.argmax(scores, axis=1), expected)


def test_knn_exact_scan_fallback_and_small_galleries(monkeypatch):
    import wfa.eval.knn as knn

    rng = np.random.default_rng(7)
    gallery = rng.normal(size=(50, 8)).astype(np.float32)
    queries = rng.normal(size=(10, 8)).astype(np.float32)
    expected = nearest(gallery, queries, 3)[0]
    monkeypatch.setattr(knn, "score_margin", lambda dim, gpu=False: 10.0)  # nothing is sure: every query rescans
    np.testing.assert_array_equal(knn.nearest(gallery, queries, 3)[0], expected)
    assert nearest(gallery, queries, 500)[0].shape == (10, 50)  # k beyond the gallery: all of it, in order


def test_vote_scores_rule():
    # neighbours nearest first: [2, 1, 1, 2] -> 2 votes each, class 2's first neighbour comes first
    scores = vote_scores(np.array([[2, 1, 1, 2], [0, 0, 1, 1]]), 3)
    assert list(np.argmax(scores, axis=1)) == [2, 0]
    assert scores[0, 0] == 0 and scores[0, 2] > scores[0, 1] > 2 - 1e-9
    multi = vote_scores(np.array([[[1, 0], [1, 1]]]), 2, multilabel=True)
    np.testing.assert_allclose(multi, [[1.0, 0.5]])


def test_knn_classify_chooses_k_on_held_out_images():
    rng = np.random.default_rng(4)
    classes = ["a", "b", "c"]
    x, y, _ = separable_fixture(rng, 40, 3, 12, 0.1)
    result = knn_classify(x, y, x, y, classes, draw(y, None, 0))
    assert result["top1"] == 100.0 and str(result["k"]) in result["held_out"]
    assert set(result["held_out"]) <= {"1", "3", "5", "10", "20", "50"}


# -- draws and metrics


def test_few_shot_draws():
    y = np.repeat(np.arange(5), [3, 10, 10, 10, 10])
    d = draw(y, 4, seed=0)
    assert np.array_equal(d.fit, d.final) and not set(d.fit) & set(d.val)
    assert [int(np.sum(y[d.fit] == c)) for c in range(5)] == [3, 4, 4, 4, 4] and d.short_classes == 1
    assert [int(np.sum(y[d.val] == c)) for c in range(5)] == [0, 4, 4, 4, 4]  # class 0 gave all it has
    d16 = draw(y, 16, seed=0)
    assert len(d16.val) == 0 or max(np.bincount(y[d16.val])) <= MAX_VAL_SHOTS
    assert not np.array_equal(draw(y, 2, seed=0).fit, draw(y, 2, seed=1).fit)
    assert np.array_equal(draw(y, 2, seed=3).fit, draw(y, 2, seed=3).fit)
    full = draw(y, None, seed=0)
    assert np.array_equal(full.final, np.arange(len(y))) and len(full.val) == 1 + 4 * 2
    assert not set(full.fit) & set(full.val)
    with pytest.raises(ValueError, match="single-label"):
        draw(np.zeros((4, 2)), 1, 0, multilabel=True)


def test_classification_metrics():
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.3, 0.3], [0.2, 0.1, 0.0]])
    assert topk_accuracy(scores, np.array([1, 2, 2]), (1, 2, 3))["top3"] == 100.0
    out = score(scores, np.array([1, 0, 2]), ["a", "b", "c"], multilabel=False)
    # row 1: all tied -> class 0 wins; row 2 predicts 0, target 2
    assert out["top1"] == pytest.approx(200 / 3) and out["main"] == out["top1"] and "top5" not in out
    assert out["per_class_top1"] == {"a": 100.0, "b": 100.0, "c": 0.0}
    assert out["mean_per_class"] == pytest.approx(200 / 3)
    assert per_class_accuracy(np.array([0]), np.array([0]), ["a", "b"])["b"] is None
    multi = score(scores, np.array([[0, 1, 0], [1, 0, 0], [1, 0, 1]]), ["a", "b", "c"], multilabel=True)
    assert multi["main"] == multi["mAP"] == pytest.approx(mean_average_precision(
        scores, np.array([[0, 1, 0], [1, 0, 0], [1, 0, 1]]))[0])
    assert average_precision([0.5, 0.5, 0.1], [1, 0, 1]) == pytest.approx(0.25 + 1 / 3)
