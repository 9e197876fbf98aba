"""Benchmark suites: every classification and retrieval task of a YAML suite for one model, as papers report them.

A suite (``configs/benchmarks/*.yaml``; format in docs/benchmark.md) names its data sets:

* ``classification``: ``NAME: {task: KIND, <the kind's arguments>, protocols: [zeroshot, linear_probe,
  knn], prompts: SECTION}``, a registered task (:mod:`wfa.eval.tasks`) and the protocols run on it;
* ``retrieval``: ``NAME: {shards: DIR, split: test}`` or ``NAME: {captions: FILE, images: DIR, split: test}``
  (a Karpathy caption file, written once as shards of that split into the cache);
* ``few_shot``: ``{shots: [1, 2, 4, 8, 16], seeds: [0, 1, 2], full: true}`` for the probe and k-NN;
* ``data_root`` (relative paths start there; ``$VARS`` are expanded; ``--data-root`` overrides) and
  ``templates`` (a prompt file whose sections replace the packaged ones).

:func:`run_suite` encodes each data set's images once per model (:mod:`wfa.eval.features`, cached), then
runs zero-shot (:mod:`wfa.eval.zeroshot`), the linear probe (:mod:`wfa.eval.probe`) and k-NN
(:mod:`wfa.eval.knn`) on those features over the draws of :mod:`wfa.eval.fewshot` (mean and std over the
seeds), and retrieval through the evaluation door :func:`wfa.eval.evaluate` (the numbers of ``wfa eval``).
Every result is cached under a key of what it depends on, so a second run only computes what changed. A
task that cannot run is recorded in ``skipped`` with its reason; the others still run.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import yaml

from wfa.errors import WfaError
from wfa.eval.features import FeatureCache, cache_key, cached_encode, model_channels, model_fingerprint
from wfa.eval.fewshot import draw
from wfa.eval.tasks import Task, task_class

PROTOCOLS = ("zeroshot", "linear_probe", "knn")
#: bump when a protocol's numbers for the same features would change
RESULTS_VERSION = 1
_CLASSIFICATION_KEYS = {"task", "protocols", "prompts"}
_RETRIEVAL_KEYS = {"shards", "captions", "images", "labels", "split"}
_SUITE_KEYS = {"name", "data_root", "templates", "few_shot", "classification", "retrieval"}
_FEW_SHOT_KEYS = {"shots", "seeds", "full"}


class SuiteError(ValueError):
    """A suite file that cannot be used; the message names the file and the entry."""


@dataclass
class ClassificationSpec:
    """One classification data set of a suite: a task kind, its arguments, the protocols and prompt section."""

    name: str
    kind: str
    arguments: dict[str, Any]
    protocols: tuple[str, ...] = PROTOCOLS
    prompts: str | None = None


@dataclass
class RetrievalSpec:
    """One retrieval data set: existing shards, or a Karpathy caption file with its images; the split."""

    name: str
    shards: Path | None = None
    captions: Path | None = None
    images: Path | None = None
    labels: Path | None = None
    split: str = "test"


@dataclass
class FewShotSpec:
    """The probe and k-NN settings: n per class for each of ``shots`` and ``seeds``, and the full pool."""

    shots: tuple[int, ...] = (1, 2, 4, 8, 16)
    seeds: tuple[int, ...] = (0, 1, 2)
    full: bool = True


@dataclass
class Suite:
    """A loaded suite (:func:`load_suite`)."""

    name: str
    path: Path
    data_root: Path | None
    templates: Path | None
    few_shot: FewShotSpec
    classification: list[ClassificationSpec] = field(default_factory=list)
    retrieval: list[RetrievalSpec] = field(default_factory=list)

    def names(self) -> list[str]:
        """Every data set name, classification first."""
        return [s.name for s in self.classification] + [s.name for s in self.retrieval]


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SuiteError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _unknown(found: dict, allowed: set, where: str) -> None:
    extra = sorted(set(found) - allowed)
    if extra:
        raise SuiteError(f"{where}: unknown key(s) {', '.join(extra)}; valid: {', '.join(sorted(allowed))}")


def _expand_root(value: Any, where: str) -> Path:
    text = os.path.expanduser(os.path.expandvars(str(value)))
    if "$" in text:
        raise SuiteError(f"{where}: data_root {value!r} names an unset environment variable; set it or pass "
                         "--data-root")
    return Path(text)


def _int_list(value: Any, where: str, minimum: int) -> tuple[int, ...]:
    values = value if isinstance(value, (list, tuple)) else [value]
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise SuiteError(f"{where} must be a list of integers, got {value!r}") from None
    if any(v < minimum for v in out):
        raise SuiteError(f"{where} must be integers >= {minimum}, got {value!r}")
    return out


def load_suite(path: str | Path, data_root: str | Path | None = None) -> Suite:
    """Read and check a suite file; ``data_root`` replaces the file's. Raises :class:`SuiteError`."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise SuiteError(f"suite {path}: {error}") from None
    except yaml.YAMLError as error:
        raise SuiteError(f"suite {path} is not valid YAML ({str(error).splitlines()[0]})") from None
    document = _mapping(document, f"suite {path}")
    _unknown(document, _SUITE_KEYS, f"suite {path}")
    root = Path(data_root) if data_root is not None else (
        _expand_root(document["data_root"], f"suite {path}") if document.get("data_root") is not None else None)

    def resolve(value: Any) -> Path:
        p = Path(os.path.expanduser(str(value)))
        return p if p.is_absolute() or root is None else root / p

    few = _mapping(document.get("few_shot"), f"suite {path}: few_shot")
    _unknown(few, _FEW_SHOT_KEYS, f"suite {path}: few_shot")
    few_shot = FewShotSpec(_int_list(few.get("shots", FewShotSpec.shots), f"suite {path}: few_shot.shots", 1),
                           _int_list(few.get("seeds", FewShotSpec.seeds), f"suite {path}: few_shot.seeds", 0),
                           bool(few.get("full", True)))
    if not few_shot.seeds:
        raise SuiteError(f"suite {path}: few_shot.seeds is empty")
    suite = Suite(str(document.get("name") or path.stem), path, root,
                  Path(str(document["templates"])) if document.get("templates") else None, few_shot)
    for name, entry in _mapping(document.get("classification"), f"suite {path}: classification").items():
        where = f"suite {path}: classification.{name}"
        entry = dict(_mapping(entry, where))
        if "task" not in entry:
            raise SuiteError(f"{where} needs task: KIND")
        try:
            cls = task_class(str(entry["task"]))
        except ValueError as error:
            raise SuiteError(f"{where}: {error}") from None
        declared = {**cls.ARGUMENTS, **cls.SPLIT_ARGUMENTS}
        _unknown(entry, _CLASSIFICATION_KEYS | set(declared), where)
        protocols = tuple(entry.pop("protocols", PROTOCOLS) or ())
        bad = sorted(set(protocols) - set(PROTOCOLS))
        if bad or not protocols:
            raise SuiteError(f"{where}: protocols must be a non-empty list of {', '.join(PROTOCOLS)} (got {protocols})")
        kind, prompts = str(entry.pop("task")), entry.pop("prompts", None)
        arguments = {k: (resolve(v) if declared[k].path and v is not None else v) for k, v in entry.items()}
        suite.classification.append(ClassificationSpec(str(name), kind, arguments, protocols, prompts))
    for name, entry in _mapping(document.get("retrieval"), f"suite {path}: retrieval").items():
        where = f"suite {path}: retrieval.{name}"
        entry = _mapping(entry, where)
        _unknown(entry, _RETRIEVAL_KEYS, where)
        if bool(entry.get("shards")) == bool(entry.get("captions")):
            raise SuiteError(f"{where} needs either shards: DIR or captions: FILE with images: DIR")
        if entry.get("captions") and not entry.get("images"):
            raise SuiteError(f"{where}: captions needs images: DIR")
        paths = {k: resolve(entry[k]) for k in ("shards", "captions", "images", "labels") if entry.get(k)}
        suite.retrieval.append(RetrievalSpec(str(name), split=str(entry.get("split", "test")), **paths))
    names = suite.names()
    if not names:
        raise SuiteError(f"suite {path} lists no data set (classification: or retrieval:)")
    return suite


# ---------------------------------------------------------------------------------------------- running


@dataclass
class RunOptions:
    """How :func:`run_suite` encodes: device, input size, batches, loader workers, progress, data sets."""

    device: Any = "cpu"
    image_size: int | None = None
    batch_size: int = 64
    num_workers: int = 0
    progress: bool = True
    only: Sequence[str] | None = None
    log: Callable[[str], None] = print


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0}


def _few_shot_runs(run_one: Callable[[Any], dict[str, Any]], targets: np.ndarray, spec: FewShotSpec,
                   multilabel: bool, log: Callable[[str], None], label: str) -> dict[str, Any]:
    """``{"full": result, "N": {"mean", "std", "runs": [...]}}`` over the suite's draws."""
    out: dict[str, Any] = {}
    if spec.full:
        out["full"] = run_one(draw(targets, None, spec.seeds[0], multilabel))
        log(f"  {label} full: {out['full']['main']:.2f}")
    if multilabel:
        out["few_shot_skipped"] = "n-shot draws need single-label data"
        return out
    for shots in spec.shots:
        runs = []
        for seed in spec.seeds:
            d = draw(targets, shots, seed)
            runs.append({"seed": seed, "short_classes": d.short_classes, **run_one(d)})
        out[str(shots)] = {**_mean_std([r["main"] for r in runs]), "runs": runs}
        log(f"  {label} {shots}-shot: {out[str(shots)]['mean']:.2f} ± {out[str(shots)]['std']:.2f}")
    return out


def _shards_fingerprint(shards: Path) -> str:
    digest = hashlib.sha256((shards / "index.json").read_bytes())
    for tar in sorted(shards.glob("*.tar")):
        st = tar.stat()
        digest.update(f"{tar.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return digest.hexdigest()


def _karpathy_shards(spec: RetrievalSpec, cache: FeatureCache, scratch: Path, progress: bool) -> Path:
    """Shards of ``spec.split`` of a Karpathy source, written once into the cache (or ``scratch`` without one)."""
    from wfa.data.karpathy import KarpathyReader
    from wfa.data.shard_format import WRITER_VERSION
    from wfa.data.writer import write_shards

    assert spec.captions is not None and spec.images is not None
    files = [spec.captions, *([spec.labels] if spec.labels else [])]
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    images = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(spec.images) if e.is_file())
    key = cache_key("shards", WRITER_VERSION, spec.split, stats, images)
    out = (cache.root if cache.root is not None else scratch) / "shards" / key[:2] / key
    if not (out / "index.json").is_file():
        reader = KarpathyReader(spec.captions, spec.images, splits=[spec.split], labels=spec.labels)
        write_shards(reader, out, progress=progress)
    return out


def _retrieval(spec: RetrievalSpec, model, tokenizer, model_key: str, image_size: int, cache: FeatureCache,
               scratch: Path, options: RunOptions) -> tuple[dict[str, Any], bool]:
    from wfa.eval.evaluation import evaluate

    shards = spec.shards if spec.shards is not None else _karpathy_shards(spec, cache, scratch, options.progress)
    key = cache_key("retrieval", RESULTS_VERSION, model_key, image_size, spec.split, _shards_fingerprint(shards))
    found = cache.load_result(key)
    if found is not None:
        return found, True
    report = evaluate(model, tokenizer, shards, spec.split, device=options.device, image_size=image_size,
                      batch_size=options.batch_size, num_workers=options.num_workers, progress=options.progress)
    result = {**report.metrics, "chance": report.chance, "split": spec.split,
              "shards": str(spec.shards) if spec.shards is not None else f"{spec.captions} ({spec.split} split)",
              "wall_s": report.wall_s}
    cache.save_result(key, result)
    return result, False


def _classification(spec: ClassificationSpec, task: Task, model, tokenizer, model_key: str, image_size: int,
                    cache: FeatureCache, templates: dict[str, Any], few_shot: FewShotSpec,
                    options: RunOptions) -> dict[str, Any]:
    import torch

    from wfa.eval.knn import KS, knn_classify
    from wfa.eval.probe import LAMBDAS, linear_probe
    from wfa.eval.zeroshot import prompts, zeroshot_metrics, zeroshot_scores

    part = task.partition()
    encode = {"device": options.device, "batch_size": options.batch_size, "num_workers": options.num_workers,
              "progress": options.progress}
    test, test_key = cached_encode(model, model_key, task, part.test, image_size, cache,
                                   desc=f"{spec.name} eval images", **encode)
    out: dict[str, Any] = {"task": task.describe(), "split": part.how, "test_images": int(len(test.indices)),
                           "train_images": int(len(part.train)),
                           "skipped_images": {**dict(task.skipped), **test.skipped}}
    out["task"]["arguments"] = {k: v for k, v in out["task"]["arguments"].items() if k != "band_stats"}
    test_targets = task.targets(test.indices)
    if "zeroshot" in spec.protocols:
        section = spec.prompts or task.prompts
        chosen, names = prompts(section, task.classes, templates)
        key = cache_key("zeroshot", RESULTS_VERSION, test_key, chosen, names)
        result = cache.load_result(key)
        if result is None:
            found = zeroshot_scores(model, tokenizer, test.features, task, templates, section, options.device)
            result = {**zeroshot_metrics(found["scores"], task, test.indices), "prompts": found["section"],
                      "templates": found["templates"]}
            cache.save_result(key, result)
        out["zeroshot"] = result
        options.log(f"  {spec.name} zero-shot: {result['main']:.2f}")
    wanted = [p for p in ("linear_probe", "knn") if p in spec.protocols]
    if not wanted:
        return out
    if not len(part.train):
        out["not_run"] = {p: f"no training images ({part.how})" for p in wanted}
        return out
    train, train_key = cached_encode(model, model_key, task, part.train, image_size, cache,
                                     desc=f"{spec.name} train images", **encode)
    out["train_images"] = int(len(train.indices))
    out["skipped_images"] = {k: out["skipped_images"].get(k, 0) + train.skipped.get(k, 0)
                             for k in {*out["skipped_images"], *train.skipped}}
    train_targets = task.targets(train.indices)
    shots = {"shots": few_shot.shots, "seeds": few_shot.seeds, "full": few_shot.full}
    runners = {
        "linear_probe": (LAMBDAS, lambda d: linear_probe(train.features, train_targets, test.features, test_targets,
                                                           task.classes, d, multilabel=task.multilabel,
                                                           device=options.device)),
        "knn": (KS, lambda d: knn_classify(train.features, train_targets, test.features, test_targets, task.classes,
                                            d, multilabel=task.multilabel)),
    }
    for protocol in wanted:
        grid, run_one = runners[protocol]
        device = torch.device(options.device).type if protocol == "linear_probe" else None  # float32 on GPUs
        key = cache_key(protocol, RESULTS_VERSION, train_key, test_key, shots, list(grid), device)
        result = cache.load_result(key)
        if result is None:
            result = _few_shot_runs(run_one, train_targets, few_shot, task.multilabel, options.log,
                                    f"{spec.name} {protocol.replace('_', ' ')}")
            cache.save_result(key, result)
        else:
            options.log(f"  {spec.name} {protocol.replace('_', ' ')}: cached")
        out[protocol] = result
    return out


def run_suite(suite: Suite, model, tokenizer, cache: FeatureCache, options: RunOptions | None = None,
              model_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every data set of ``suite`` (or ``options.only``) for ``model``; returns the results (JSON-ready).

    Retrieval shards written from a caption file live in the cache (in a temporary folder without one).
    """
    from wfa.eval.encode import model_image_size
    from wfa.eval.faiss_device import describe as faiss_describe
    from wfa.eval.zeroshot import load_templates

    options = options or RunOptions()
    start = time.perf_counter()
    selected = set(options.only or suite.names())
    unknown = sorted(selected - set(suite.names()))
    if unknown:
        raise SuiteError(f"--only names {', '.join(unknown)}, not in suite {suite.path} ({', '.join(suite.names())})")
    image_size = options.image_size or model_image_size(model)
    model_key = model_fingerprint(model)
    templates = load_templates(suite.templates)
    results: dict[str, Any] = {
        "suite": {"name": suite.name, "file": str(suite.path), "data_root": str(suite.data_root or "")},
        "model": {**(model_info or {}), "fingerprint": model_key[:16], "image_size": image_size},
        "few_shot": {"shots": list(suite.few_shot.shots), "seeds": list(suite.few_shot.seeds),
                     "full": suite.few_shot.full},
        "classification": {}, "retrieval": {}, "skipped": [], "faiss": faiss_describe()}
    for spec in suite.classification:
        if spec.name not in selected:
            continue
        options.log(f"{spec.name} ({spec.kind}): {', '.join(spec.protocols)}")
        try:
            task = task_class(spec.kind)(**spec.arguments)
            if hasattr(task, "for_channels"):
                task.for_channels(model_channels(model))
            results["classification"][spec.name] = _classification(
                spec, task, model, tokenizer, model_key, image_size, cache, templates, suite.few_shot, options)
        except (ValueError, OSError, WfaError) as error:
            results["skipped"].append({"dataset": spec.name, "what": ", ".join(spec.protocols), "reason": str(error)})
            options.log(f"  {spec.name}: not run: {error}")
    with tempfile.TemporaryDirectory(prefix="wfa-benchmark-") as scratch:
        for spec in suite.retrieval:
            if spec.name not in selected:
                continue
            options.log(f"{spec.name}: retrieval ({spec.split})")
            try:
                result, cached = _retrieval(spec, model, tokenizer, model_key, image_size, cache, Path(scratch),
                                            options)
            except (ValueError, OSError, WfaError) as error:
                results["skipped"].append({"dataset": spec.name, "what": "retrieval", "reason": str(error)})
                options.log(f"  {spec.name}: not run: {error}")
                continue
            results["retrieval"][spec.name] = result
            options.log(f"  {spec.name} retrieval mR: {result['mR']:.2f}{' (cached)' if cached else ''}")
    results["cache"] = {"folder": str(cache.root) if cache.root else None, "feature_hits": cache.hits,
                        "feature_misses": cache.misses}
    results["wall_s"] = time.perf_counter() - start
    return json.loads(json.dumps(results, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.ndarray, tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
