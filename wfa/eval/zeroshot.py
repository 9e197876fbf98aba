"""Zero-shot classification (docs/metrics.md): UCM 21 classes (top-1/top-5) and BigEarthNet 19 classes (mAP).

Each class gets the text feature ``normalize(mean_t normalize(encode_text(template_t(c))))`` over the
prompt templates of ``zeroshot_templates.yaml`` (package data; another file can be passed). The
``classnames`` map of that file turns raw class names into readable ones (UCM's folder names, e.g.
``mediumresidential`` -> ``a medium residential area``); names it does not list are used as written.
An image's class scores are the cosine similarities of its image feature with the class features.

* UCM: single-label accuracy; the classes are the distinct values of ``labels.csv``'s ``class`` column,
  the images those of ``dataset.json`` in the chosen split (``"all"`` for all 2,100).
* BigEarthNet: multi-label; ``mAP`` is the macro mean over classes of average precision
  (:func:`average_precision`), over the classes that have at least one positive patch.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from tqdm.auto import tqdm

from wfa.data.karpathy import KarpathyReader
from wfa.data.label_captions import V2_LABELS, to_v2_labels
from wfa.data.sample import Rejected
from wfa.data.transforms import MultispectralTransform, rgb_transform
from wfa.eval.encode import model_image_size
from wfa.model import encode_text

TEMPLATES_RESOURCE = "zeroshot_templates.yaml"


def load_templates(path: str | Path | None = None) -> dict[str, Any]:
    """The prompt config: ``{dataset: {"templates": [...], "classnames": {raw: readable}}}``.

    ``path=None`` reads the packaged ``wfa/eval/zeroshot_templates.yaml``.
    """
    if path is None:
        text = resources.files("wfa.eval").joinpath(TEMPLATES_RESOURCE).read_text()
    else:
        text = Path(path).read_text()
    config = yaml.safe_load(text) or {}
    for name, section in config.items():
        templates = section.get("templates") or []
        if not templates or any("{c}" not in t for t in templates):
            raise ValueError(f"zero-shot templates for {name!r} must be a non-empty list of strings with '{{c}}'")
    return config


def readable_classnames(classes: Sequence[str], mapping: dict[str, str] | None) -> list[str]:
    """Readable names of ``classes`` through ``mapping`` (unlisted names are kept)."""
    mapping = mapping or {}
    return [mapping.get(c, c) for c in classes]


def class_text_features(model, tokenizer, classnames: Sequence[str], templates: Sequence[str],
                        device=None):
    """Unit-norm class features ``[C, D]`` (torch, float32) from prompt ensembling over ``templates``."""
    features = []
    with torch.no_grad():
        for name in classnames:
            tokens = tokenizer([t.replace("{c}", name) for t in templates]).to(device)
            emb = F.normalize(encode_text(model, tokens).float(), dim=-1).mean(dim=0)
            features.append(F.normalize(emb, dim=-1))
    return torch.stack(features)


def image_features(model, images: Iterable, device=None, progress: bool = True) -> np.ndarray:
    """Unit-norm image features ``[N, D]`` (numpy float32) of batches of image tensors."""
    out = []
    with torch.no_grad():
        for batch in tqdm(images, desc="zero-shot images", disable=None if progress else True, unit="batch"):
            out.append(F.normalize(model.encode_image(batch.to(device)).float(), dim=-1).cpu())
    return torch.cat(out).numpy()


def topk_accuracy(scores: np.ndarray, targets: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent: a hit when the target's score has fewer than ``k`` classes ranked above.

    Ties are ranked by class index (lower first), as in the retrieval metrics.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    target_scores = scores[np.arange(len(targets)), targets][:, None]
    classes = np.arange(scores.shape[1])[None, :]
    rank = ((scores > target_scores) | ((scores == target_scores) & (classes < targets[:, None]))).sum(axis=1)
    return {f"top{k}": float(100.0 * np.mean(rank < k)) for k in ks}


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Average precision of one class: ``sum_n (R_n - R_{n-1}) P_n`` over score thresholds (descending).

    Tied scores form one threshold (as ``sklearn.metrics.average_precision_score``). ``nan`` when
    ``targets`` has no positive.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    targets = np.asarray(targets).reshape(-1).astype(bool)
    positives = int(targets.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], targets[order]
    last_of_threshold = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(t)[last_of_threshold]
    seen = np.flatnonzero(last_of_threshold) + 1
    precision = tp / seen
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """(macro mAP in percent over classes with a positive, per-class AP ``[C]`` in percent, nan if none)."""
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    per_class = np.array([average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]) * 100.0
    valid = ~np.isnan(per_class)
    return (float(per_class[valid].mean()) if valid.any() else float("nan")), per_class


def _batched(items: Sequence, batch_size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]


def ucm_reader(ucm_dir: str | Path, split: str = "test") -> tuple[KarpathyReader, list[str]]:
    """The UCM images of ``split`` ("train", "val", "test" or "all") as a reader, and their classes.

    ``dataset.json`` (the Karpathy file) lists the images and splits, ``labels.csv`` their classes; a
    ``ValueError`` names an image without a class.
    """
    ucm_dir = Path(ucm_dir)
    reader = KarpathyReader(ucm_dir / "dataset.json", ucm_dir / "images", splits=None if split == "all" else [split],
                            labels=ucm_dir / "labels.csv")
    if not len(reader):
        raise ValueError(f"no UCM image has split {split!r}; use train, val, test or all")
    missing = [entry.filename for entry in reader.entries if entry.id not in reader.labels]
    if missing:
        raise ValueError(f"{len(missing)} image(s) have no class in labels.csv, e.g. {missing[0]!r}")
    return reader, [reader.labels[entry.id] for entry in reader.entries]


def _ucm_image(reader: KarpathyReader, index: int) -> Image.Image:
    """The RGB image of the ``index``-th UCM entry; a ``ValueError`` names a missing or unreadable one."""
    item = reader.sample_at(index)
    if isinstance(item, Rejected):
        raise ValueError(f"UCM image {item.id}: {item.reason} ({item.detail})")
    return item.image


def zeroshot_ucm(model, tokenizer, ucm_dir: str | Path, split: str = "test", device=None,
                 templates: dict[str, Any] | None = None, batch_size: int = 64,
                 image_size: int | None = None) -> dict[str, Any]:
    """Zero-shot UCM classification: ``top1``, ``top5`` (percent), counts and per-class top-1.

    Images (:func:`ucm_reader`) go through the loader's evaluation transform
    (``wfa.data.transforms.rgb_transform``).
    """
    device = torch.device(device or "cpu")
    model = model.to(device).eval()
    section = (templates or load_templates())["ucm"]
    reader, labels = ucm_reader(ucm_dir, split)
    classes = sorted(set(labels))
    targets = np.array([classes.index(label) for label in labels])
    transform = rgb_transform(image_size or model_image_size(model), train=False)

    def batches():
        for chunk in _batched(range(len(reader)), batch_size):
            yield torch.stack([transform(_ucm_image(reader, i)) for i in chunk])

    feats = image_features(model, batches(), device)
    text = class_text_features(model, tokenizer, readable_classnames(classes, section.get("classnames")),
                               section["templates"], device).cpu().numpy()
    scores = feats.astype(np.float64) @ text.astype(np.float64).T
    out: dict[str, Any] = topk_accuracy(scores, targets, (1, 5))
    correct = scores.argmax(axis=1) == targets
    out.update({"num_images": len(labels), "num_classes": len(classes), "split": split,
                "per_class_top1": {c: float(100.0 * correct[targets == i].mean()) for i, c in enumerate(classes)}})
    return out


def band_statistics(images: Sequence[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per-band mean and std over all pixels of ``C x H x W`` arrays (the patches evaluated)."""
    stack = np.stack([np.asarray(im, dtype=np.float64) for im in images])
    return stack.mean(axis=(0, 2, 3)).tolist(), stack.std(axis=(0, 2, 3)).tolist()


def zeroshot_bigearthnet(model, tokenizer, reader: Iterable, device=None, templates: dict[str, Any] | None = None,
                         band_stats: dict[str, Sequence[float]] | None = None, batch_size: int = 32,
                         image_size: int | None = None) -> dict[str, Any]:
    """Zero-shot BigEarthNet 19-class multi-label classification: ``mAP`` and per-class AP (percent).

    ``reader`` yields ``Sample``/``Rejected`` (e.g. ``wfa.data.bigearthnet.BigEarthNetReader``); samples
    carry ``C x H x W`` images matching the model's input channels and 19-class labels. Bands are
    normalised with ``band_stats`` (``{"mean": [...], "std": [...]}``, e.g. a shard index's), else with
    statistics of the evaluated patches themselves. Rejected items are counted and skipped.
    """
    device = torch.device(device or "cpu")
    model = model.to(device).eval()
    section = (templates or load_templates())["bigearthnet"]
    images, label_sets, rejected = [], [], 0
    for item in reader:
        if isinstance(item, Rejected):
            rejected += 1
            continue
        images.append(np.asarray(item.image, dtype=np.float32))
        label_sets.append(to_v2_labels(item.labels or []))
    if not images:
        raise ValueError(f"the BigEarthNet reader gave no usable patch ({rejected} rejected)")
    if band_stats is None:
        mean, std = band_statistics(images)
    else:
        mean, std = list(band_stats["mean"]), list(band_stats["std"])
    transform = MultispectralTransform(image_size or model_image_size(model), mean, std, train=False)
    targets = np.array([[name in labels for name in V2_LABELS] for labels in label_sets])
    feats = image_features(model, (torch.stack([transform(im) for im in chunk]) for chunk in _batched(images, batch_size)),
                           device)
    text = class_text_features(model, tokenizer, readable_classnames(V2_LABELS, section.get("classnames")),
                               section["templates"], device).cpu().numpy()
    scores = feats.astype(np.float64) @ text.astype(np.float64).T
    mAP, per_class = mean_average_precision(scores, targets)
    return {"mAP": mAP, "num_images": len(images), "rejected": rejected, "num_classes": len(V2_LABELS),
            "classes_with_positives": int((~np.isnan(per_class)).sum()),
            "per_class_ap": {name: (None if np.isnan(ap) else float(ap)) for name, ap in zip(V2_LABELS, per_class)}}


def section_for(classes: Sequence[str], templates: dict[str, Any]) -> str:
    """The templates section whose ``classnames`` list every class (e.g. ``ucm``), else ``labels``."""
    for name, section in templates.items():
        if name != "labels" and set(classes) <= set(section.get("classnames") or {}):
            return name
    return "labels"


def zeroshot_from_labels(model, tokenizer, image_emb: np.ndarray, labels: Sequence[Sequence[str] | None],
                         device=None, templates: dict[str, Any] | None = None, section: str | None = None,
                         ks: Sequence[int] = (1, 5)) -> dict[str, Any] | None:
    """Zero-shot accuracy on already encoded images whose shard ``labels`` hold exactly one class each.

    The classes are the distinct labels; prompts come from the ``section`` of the templates file
    (default: :func:`section_for` the classes). Returns ``None`` when some image has no label or
    several (not single-label), or when there are fewer than two classes.
    """
    if not labels or any(not lab or len(lab) != 1 for lab in labels):
        return None
    names = [lab[0] for lab in labels]
    classes = sorted(set(names))
    if len(classes) < 2:
        return None
    templates = templates or load_templates()
    section = section or section_for(classes, templates)
    config = templates[section]
    text = class_text_features(model, tokenizer, readable_classnames(classes, config.get("classnames")),
                               config["templates"], device).cpu().numpy()
    targets = np.array([classes.index(n) for n in names])
    scores = l2_rows(image_emb) @ text.astype(np.float64).T
    out: dict[str, Any] = topk_accuracy(scores, targets, [k for k in ks if k <= len(classes)])
    out.update({"num_images": len(names), "num_classes": len(classes), "chance_top1": 100.0 / len(classes),
                "templates": section})
    return out


def l2_rows(x: np.ndarray) -> np.ndarray:
    """float64 copy of ``x`` with unit-norm rows."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
