"""Zero-shot classification (docs/metrics.md) of any registered task (:mod:`wfa.eval.tasks`).

Each class gets the text feature ``normalize(mean_t normalize(encode_text(template_t(c))))`` over the
prompt templates of the task's section of ``zeroshot_templates.yaml`` (package data; a file given as
``templates`` replaces the sections it defines). The section's ``classnames`` map turns raw class names into
readable ones (UCM's folder names, e.g. ``mediumresidential`` -> ``a medium residential area``); names it
does not list go through :func:`wfa.eval.tasks.readable_name`. An image's class scores are the cosine
similarities of its image feature with the class features, in float64.

Single-label tasks report top-1 / top-5 accuracy, the mean per-class accuracy and each class's top-1;
multi-label tasks (BigEarthNet) the macro ``mAP`` over the classes with a positive image
(:mod:`wfa.eval.classification`). :func:`run_zeroshot` is what ``wfa eval --zeroshot KIND`` runs;
``wfa benchmark`` calls :func:`zeroshot_scores` on cached features.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from wfa.eval.classification import score, topk_accuracy
from wfa.eval.tasks import Task, readable_name
from wfa.model import encode_text

TEMPLATES_RESOURCE = "zeroshot_templates.yaml"


def _read_templates(text: str, where: str) -> dict[str, Any]:
    config = yaml.safe_load(text) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{where}: a prompt file is a mapping of sections")
    for name, section in config.items():
        templates = section.get("templates") if isinstance(section, dict) else None
        if section is None or not isinstance(section, dict) or (templates is not None and (
                not templates or any(not isinstance(t, str) or "{c}" not in t for t in templates))):
            raise ValueError(f"zero-shot templates for {name!r} must be a non-empty list of strings with '{{c}}'")
        if not isinstance(section.get("classnames") or {}, dict):
            raise ValueError(f"zero-shot section {name!r}: classnames must map raw names to readable ones")
    return config


def load_templates(path: str | Path | None = None) -> dict[str, Any]:
    """The prompt config: ``{section: {"templates": [...], "classnames": {raw: readable}}}``.

    The packaged ``wfa/eval/zeroshot_templates.yaml``, with the sections of ``path`` (when given) in place
    of the packaged sections of the same name. A ``ValueError`` names a malformed file or section.
    """
    config = _read_templates(resources.files("wfa.eval").joinpath(TEMPLATES_RESOURCE).read_text(), TEMPLATES_RESOURCE)
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"prompt file {path}: {error}") from None
        try:
            config.update(_read_templates(text, str(path)))
        except yaml.YAMLError as error:
            raise ValueError(f"prompt file {path} is not valid YAML ({str(error).splitlines()[0]})") from None
    return config


def readable_classnames(classes: Sequence[str], mapping: dict[str, str] | None) -> list[str]:
    """Readable names of ``classes`` through ``mapping``; unlisted names through ``readable_name``."""
    mapping = mapping or {}
    return [mapping.get(c) or readable_name(c) for c in classes]


def prompts(section: str, classes: Sequence[str], templates: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(the templates, the readable class names) of ``section`` (default's templates where it has none)."""
    config = templates.get(section) or {}
    chosen = config.get("templates") or templates["default"]["templates"]
    return list(chosen), readable_classnames(classes, config.get("classnames"))


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


def zeroshot_scores(model, tokenizer, image_emb: np.ndarray, task: Task, templates: dict[str, Any] | None = None,
                    section: str | None = None, device=None) -> dict[str, Any]:
    """Zero-shot class scores of encoded images ``image_emb`` ``[n, D]`` of ``task``'s items.

    Returns ``{"scores": [n, C] float64 cosine similarities (classes in ``task.classes`` order), "section":
    the prompt section used, "templates": how many prompts per class}``; ``section`` overrides the task's.
    """
    templates = templates or load_templates()
    section = section or task.prompts
    chosen, names = prompts(section, task.classes, templates)
    model_mode = model.training
    model.eval()
    try:
        text = class_text_features(model, tokenizer, names, chosen, device).cpu().numpy()
    finally:
        model.train(model_mode)
    return {"scores": l2_rows(image_emb) @ text.astype(np.float64).T, "section": section if section in templates
            else "default", "templates": len(chosen)}


def zeroshot_metrics(scores: np.ndarray, task: Task, indices: Sequence[int]) -> dict[str, Any]:
    """The metrics of zero-shot ``scores`` of ``task.items[indices]`` with counts and the chance level."""
    out = score(scores, task.targets(indices), task.classes, task.multilabel)
    out.update({"num_images": len(indices), "num_classes": len(task.classes)})
    if not task.multilabel:
        out["chance_top1"] = 100.0 / len(task.classes)
    return out


def run_zeroshot(task: Task, model, tokenizer, *, device=None, templates: dict[str, Any] | None = None,
                 image_size: int | None = None, batch_size: int = 64, num_workers: int = 0,
                 progress: bool = True) -> dict[str, Any]:
    """Zero-shot classification of the task's evaluation part (``wfa eval --zeroshot KIND``).

    Returns the metrics (:func:`zeroshot_metrics`) with the split used, the prompt section, and the
    items skipped while listing or reading (by reason).
    """
    from wfa.eval.encode import model_image_size
    from wfa.eval.features import encode_task, model_channels

    device = torch.device(device or "cpu")
    if hasattr(task, "for_channels"):
        task.for_channels(model_channels(model))
    part = task.partition()
    encoded = encode_task(model, task, part.test, image_size or model_image_size(model), device=device,
                          batch_size=batch_size, num_workers=num_workers, progress=progress,
                          desc=f"zero-shot {task.kind}")
    found = zeroshot_scores(model, tokenizer, encoded.features, task, templates, device=device)
    out = zeroshot_metrics(found["scores"], task, encoded.indices)
    out.update({"split": part.how, "prompts": found["section"],
                "skipped": {**dict(task.skipped), **encoded.skipped}})
    return out


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
    chosen, readable = prompts(section, classes, templates)
    text = class_text_features(model, tokenizer, readable, chosen, device).cpu().numpy()
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
