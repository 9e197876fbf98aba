"""Run records: one JSON file per (arm, seed) of a study, written when the run is done and read back to summarise.

A record (``OUT/runs/<arm>-s<seed>.json``, :data:`RESULT_VERSION` 4) holds what defines the run (``arm``,
``seed``, ``dataset``, ``config``: the resolved run config, ``overrides``: every override the arm applied to the
base, ``precision``, ``compile``), what it cost (steps, FLOPs per step and per run, per phase, training wall time,
images and captions encoded) and what it reached (the validation curve, the test metrics of the best-val and the
final checkpoints with their recall curves).

Records of version 3 (written by ``scripts/bench/method_study.py`` before ``wfa study``: ``benchmarks/study-ucm``,
``study-rsicd``, ``study-rsicd-880``) are read too: :func:`read_record` rebuilds the run config they describe from
their flat ``settings``, so a study config can match them and summarise them with new records.

A record matches an arm of a study when its :func:`identity` (data set, subset, and the run config without what
does not change a result: paths, worker counts, logging, checkpoint cadence) equals the arm's.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from wfa.errors import StudyError

RESULT_VERSION = 4
#: the data sets of version-3 records (their ``settings["dataset"]``) by the names tables show
V3_DATASETS = {"ucm": "UCM-Captions", "rsicd": "RSICD"}
#: run-config keys that do not change what a run computes: left out when records are matched to arms
NOT_RESULT_KEYS = (("out",), ("resume",), ("data", "shards"), ("data", "num_workers"), ("model", "in_chans"),
                   ("model", "bands"), ("train", "log_every"), ("train", "checkpoint_every"),
                   ("train", "keep_checkpoints"), ("train", "tensorboard"), ("train", "count_flops_every"),
                   ("train", "compile_backend"))


def identity(dataset: str, limit_images: int | None, config: dict[str, Any]) -> dict[str, Any]:
    """What a run's result depends on: the data set, its subset, and the run config (a ``config_to_dict``
    mapping) without :data:`NOT_RESULT_KEYS`."""
    kept = copy.deepcopy(config)
    for path in NOT_RESULT_KEYS:
        node = kept
        for part in path[:-1]:
            node = node.get(part, {})
        node.pop(path[-1], None)
    return {"dataset": dataset, "limit_images": limit_images, "config": kept}


def record_identity(record: dict[str, Any]) -> dict[str, Any]:
    """:func:`identity` of a record (as :func:`read_record` returns it)."""
    return identity(record["dataset"], record.get("limit_images"), record["config"])


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """A run record (version 4, or 3 turned into the same shape); :class:`StudyError` naming the file when it is
    unreadable, not a record or of a version this wfa does not know."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise StudyError(f"{path}: not a readable run record ({error}); delete it to run it again") from None
    if not isinstance(record, dict):
        raise StudyError(f"{path}: not a run record (a JSON object); delete it to run it again")
    settings = record.get("settings")
    try:
        if record.get("version") == RESULT_VERSION:
            return record
        if isinstance(settings, dict) and settings.get("version") == 3:
            return from_v3(record, arm=arm_of_file(path, record["seed"]))
    except (KeyError, TypeError, ValueError) as error:
        raise StudyError(f"{path}: a run record with a missing or malformed field ({error})") from None
    version = record.get("version", (settings or {}).get("version") if isinstance(settings, dict) else None)
    raise StudyError(f"{path}: a run record of version {version}; this wfa reads versions 3 and {RESULT_VERSION}")


def v3_config(record: dict[str, Any]):
    """The :class:`wfa.config.Config` a version-3 record's run trained with, rebuilt as the v3 study script built it
    from its ``settings``. What v3 settings do not name has the value it had then: the library defaults, and
    ``method_options.copy_positives`` off for records without ``overrides`` (the feature came after them; the v3
    writer that added ``overrides`` ran with the library default, on)."""
    from wfa.config import config_from_dict

    s = record["settings"]
    values = {
        "method": record["method"], "seed": record["seed"],
        "data": {"split": "train", "val_split": "val", "max_captions": s["max_captions"],
                 "image_size": s["image_size"], "shuffle": s["shuffle_images"], "augment": s["augment"]},
        "model": {"name": s["model"], "pretrained": None, "trim_text": True},
        "aggregator": {"temperature": s.get("attention_temperature", 1.0),
                       "lr_scale": s.get("aggregator_lr_scale", 100.0)},
        "method_options": {"keep_prob": s.get("keep_prob", 0.5), "hybrid_mix": s.get("hybrid_mix", 0.5),
                           "copy_positives": "overrides" in s},
        "train": {"batch_size": s["batch_size"], "steps": s["budget_steps"], "lr": s["lr"],
                  "weight_decay": s["weight_decay"], "warmup_steps": s["warmup_steps"], "grad_clip": 1.0,
                  "precision": "no", "eval_every": s["eval_every"]},
    }
    return config_from_dict(values, s.get("overrides", []), validate=False)


def arm_of_file(path: Path, seed: int) -> str | None:
    """The arm a record file names (``<arm>-s<seed>.json``), None when its name has another form."""
    suffix = f"-s{seed}"
    return path.stem[:-len(suffix)] if path.stem.endswith(suffix) and len(path.stem) > len(suffix) else None


def from_v3(record: dict[str, Any], arm: str | None = None) -> dict[str, Any]:
    """A version-3 record with the fields of version 4 added (``arm``: ``arm`` when given (the record's file
    name), else its method; ``group``, ``dataset``, ``limit_images``, ``config``, ``overrides``, ``precision``,
    ``compile``); everything it had is kept. The v3 script named its records ``<method>-s<seed>.json``; a v3
    record of an arm with overrides is filed under the arm's name to be matched with that arm."""
    from wfa.config import config_to_dict

    settings = record["settings"]
    cfg = v3_config(record)
    arm = arm or record["method"]
    return {**record, "version": 3, "arm": arm, "group": arm,
            "dataset": V3_DATASETS.get(settings["dataset"], settings["dataset"]),
            "limit_images": settings.get("limit_images"), "config": config_to_dict(cfg),
            "overrides": list(settings.get("overrides", [])), "precision": cfg.train.precision,
            "compile": cfg.train.compile}


def record_path(out: str | os.PathLike, arm: str, seed: int) -> Path:
    """``OUT/runs/<arm>-s<seed>.json``."""
    return Path(out) / "runs" / f"{arm}-s{seed}.json"


# -- writing results that get shared ------------------------------------------------------------------------------

def portable_paths(obj: Any, root: str | os.PathLike | None = None, data: str | os.PathLike | None = None) -> Any:
    """``obj`` with machine paths inside every string made portable, for results that get committed.

    A path under ``data`` (default ``$WFA_SHARED_DATA``) becomes ``$WFA_SHARED_DATA/...``, one under ``root``
    (default the current directory) becomes relative to it (the root itself ``.``), one under the home folder
    ``~/...``. Other paths (e.g. temporary folders) are kept. Dict keys, lists and tuples are walked.
    """
    root = Path(root if root is not None else Path.cwd())
    data = data if data is not None else os.environ.get("WFA_SHARED_DATA")
    prefixes = ([(str(Path(data).resolve()), "$WFA_SHARED_DATA")] if data else []) + [(str(root.resolve()), ".")]
    home = str(Path.home())
    if home not in ("/", ""):
        prefixes.append((home, "~"))

    def fix(text: str) -> str:
        for prefix, label in prefixes:
            text = text.replace(prefix + "/", "" if label == "." else label + "/")
            text = re.sub(re.escape(prefix) + r"(?![\w.-])", label, text)
        return text

    if isinstance(obj, str):
        return fix(obj)
    if isinstance(obj, dict):
        return {fix(k) if isinstance(k, str) else k: portable_paths(v, root, data) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable_paths(v, root, data) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any, root: str | os.PathLike | None = None,
               data: str | os.PathLike | None = None, indent: int = 2) -> Path:
    """Write ``obj`` as JSON atomically (temporary file, then rename) with portable paths (:func:`portable_paths`);
    returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(portable_paths(obj, root, data), indent=indent) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def machine_info(repo: str | os.PathLike | None = None) -> dict[str, Any]:
    """Where and when a result was made: date (UTC), platform, CPUs, load average now, library versions, GPU, and
    the git commit of ``repo`` (default the current directory) when it is a checkout."""
    import numpy

    try:
        import torch
    except ImportError:
        torch = None
    gpu = bool(torch is not None and torch.cuda.is_available())
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo or Path.cwd(), capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "gpu": gpu,
        "gpu_name": torch.cuda.get_device_name(0) if gpu else None,
        "git_commit": commit,
    }


def command_line(argv: Sequence[str] | None = None, program: str = "wfa") -> str:
    """The command as run (``wfa study ARGS``), shell-quoted."""
    return shlex.join([program, *(sys.argv[1:] if argv is None else argv)])
