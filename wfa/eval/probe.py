"""Linear probe on frozen image features: L2-regularised logistic regression solved by full-batch L-BFGS.

The objective for features ``x_i`` (unit-norm, ``[N, D]``), weights ``W`` ``[D, C]`` and bias ``b`` ``[C]``:

* single-label: ``mean_i CE(softmax(x_i W + b), y_i) + lam / 2 * ||W||^2`` (multinomial; scikit-learn's
  ``LogisticRegression(solver="lbfgs")`` with ``C = 1 / (lam * N)``);
* multi-label: ``mean_i sum_c BCE(sigmoid(x_i w_c + b_c), y_ic) + lam / 2 * ||W||^2`` (one-vs-rest),
  scored by mAP.

The bias is not regularised. For ``lam > 0`` the objective is smooth and strictly convex in ``W``, so it has
one minimiser, and any solver that drives the gradient to zero finds the same classifier.

Why a small torch solver and not scikit-learn: the same objective and the same algorithm (L-BFGS with a
strong-Wolfe line search, ``torch.optim.LBFGS``), but no new dependency (scikit-learn and SciPy would enlarge
every install, CI's fresh one included, for one function), it runs on the GPU when the features are large and in
float64 on the CPU (exact to the stopping tolerance), and one regularisation path reuses each solution as
the next start (warm starts). Exactness is tested against a numpy Newton solver of the same objective and
against the closed-form classifier of a separable fixture (``tests/test_benchmark_protocols.py``).

``lam`` is chosen by the held-out score of a :class:`wfa.eval.fewshot.Draw`: first over the decades of
:data:`LAMBDAS` (strongest first, each fit starting from the previous solution; the path stops after
:data:`PATIENCE` decades without a better held-out score, which spares the slow, nearly unregularised fits on
small separable draws), then over the two half-decade neighbours of the best decade (ties: the larger
``lam``, the simpler model); the final classifier is fitted on ``draw.final`` with that ``lam``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wfa.eval.classification import score
from wfa.eval.fewshot import Draw

#: the decades of the regularisation path, strongest first (unit-norm features need small values)
LAMBDAS: tuple[float, ...] = tuple(float(10.0 ** -e) for e in range(0, 9))
PATIENCE = 3
MAX_ITER = 1000
TOLERANCE = 1e-6


@dataclass
class LinearModel:
    """A fitted probe: ``scores = x @ weight + bias``; how the solver ended."""

    weight: torch.Tensor
    bias: torch.Tensor
    lam: float
    iterations: int
    grad_max: float

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Class scores ``[N, C]`` (float64 numpy) of features ``x``."""
        with torch.no_grad():
            features = torch.as_tensor(np.asarray(x), dtype=self.weight.dtype, device=self.weight.device)
            return (features @ self.weight + self.bias).double().cpu().numpy()


def _objective(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, lam: float,
               multilabel: bool) -> torch.Tensor:
    logits = x @ weight + bias
    if multilabel:
        loss = F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / x.shape[0]
    else:
        loss = F.cross_entropy(logits, y)
    return loss + 0.5 * lam * (weight * weight).sum()


def fit_logistic(x: np.ndarray, y: np.ndarray, num_classes: int, lam: float, *, multilabel: bool = False,
                 init: LinearModel | None = None, device: Any = None, max_iter: int = MAX_ITER,
                 tolerance: float = TOLERANCE) -> LinearModel:
    """Minimise the module docstring's objective for ``(x, y)`` with L-BFGS (from ``init``, else zeros).

    ``y`` is class indices ``[N]`` or a 0/1 matrix ``[N, C]`` (``multilabel``). float64 on the CPU, float32 on
    a GPU. Stops when every gradient entry is below ``tolerance`` (or after ``max_iter`` iterations;
    ``grad_max`` tells which).
    """
    device = torch.device(device or "cpu")
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    features = torch.as_tensor(np.asarray(x), dtype=dtype, device=device)
    targets = torch.as_tensor(np.asarray(y), device=device)
    targets = targets.to(dtype) if multilabel else targets.long()
    weight = torch.zeros(features.shape[1], num_classes, dtype=dtype, device=device)
    bias = torch.zeros(num_classes, dtype=dtype, device=device)
    if init is not None:
        weight.copy_(init.weight.to(device, dtype))
        bias.copy_(init.bias.to(device, dtype))
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    solver = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=tolerance,
                               tolerance_change=1e-14, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        solver.zero_grad()
        loss = _objective(features, targets, weight, bias, lam, multilabel)
        loss.backward()
        return loss

    solver.step(closure)
    closure()  # the gradient at the solution, for grad_max
    grad_max = max(float(weight.grad.abs().max()), float(bias.grad.abs().max()))
    iterations = int(solver.state[weight].get("n_iter", 0))  # LBFGS keeps its state under the first parameter
    return LinearModel(weight.detach(), bias.detach(), lam, iterations, grad_max)


def _best(held_out: dict[float, float]) -> float:
    """The ``lam`` of the best held-out score (ties: the larger ``lam``)."""
    best = max(held_out.values())
    return max(lam for lam, value in held_out.items() if value == best)


def _main(scores: np.ndarray, targets: np.ndarray, classes: Sequence[str], multilabel: bool) -> float:
    return float(score(scores, targets, classes, multilabel, ks=(1,), per_class=False)["main"])


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 classes: Sequence[str], draw: Draw, *, multilabel: bool = False, device: Any = None,
                 lambdas: Sequence[float] = LAMBDAS) -> dict[str, Any]:
    """One probe run: choose ``lam`` on ``draw.val``, fit on ``draw.final``, score the test features.

    ``train_x``/``train_y`` are the whole training pool (the draw indexes into it). Returns the test
    metrics (:func:`wfa.eval.classification.score`: ``main`` is top-1 or mAP), ``lambda``, the held-out score
    of every ``lam`` tried, the images used and the solver's iterations and final gradient.
    """
    if not len(draw.val):
        raise ValueError("the training pool is too small to hold out images for choosing the regularisation")
    num_classes = len(classes)
    fit_x, fit_y, val_x, val_y = train_x[draw.fit], train_y[draw.fit], train_x[draw.val], train_y[draw.val]
    path: dict[float, LinearModel] = {}
    held_out: dict[float, float] = {}

    def try_lambda(lam: float, start: LinearModel | None) -> None:
        path[lam] = fit_logistic(fit_x, fit_y, num_classes, lam, multilabel=multilabel, init=start, device=device)
        held_out[lam] = _main(path[lam].scores(val_x), val_y, classes, multilabel)

    previous = None
    for lam in lambdas:
        try_lambda(lam, previous)
        previous = path[lam]
        if len(held_out) > PATIENCE and max(list(held_out.values())[-PATIENCE:]) <= max(
                list(held_out.values())[:-PATIENCE]):
            break
    decade = _best(held_out)
    for lam in (decade * 10 ** 0.5, decade / 10 ** 0.5):
        if min(lambdas) <= lam <= max(lambdas):
            try_lambda(lam, path[decade])
    chosen = _best(held_out)
    same = np.array_equal(draw.fit, draw.final)
    final = path[chosen] if same else fit_logistic(train_x[draw.final], train_y[draw.final], num_classes, chosen,
                                                   multilabel=multilabel, init=path[chosen], device=device)
    out = score(final.scores(test_x), test_y, classes, multilabel, per_class=False)
    out.update({"lambda": chosen, "held_out": {f"{lam:.3g}": v for lam, v in sorted(held_out.items(), reverse=True)},
                "train_images": int(len(draw.final)), "val_images": int(len(draw.val)),
                "iterations": final.iterations, "grad_max": final.grad_max})
    return out
