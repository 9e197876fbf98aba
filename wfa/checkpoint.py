"""Training checkpoints: save atomically, find the latest, load safely, and keep a run folder to one run.

A checkpoint (``OUT/checkpoints/step_XXXXXX.pt``) is a dict of tensors, numbers, strings and lists only,
so it loads with ``torch.load(path, map_location="cpu", weights_only=True)``: a file from elsewhere cannot
run code. The RNG states are stored in that form too (python's Mersenne-Twister state as a list of ints,
numpy's as a tensor plus numbers). Checkpoints written by wfa before this format (pickled RNG states) are
refused with a message to start the run again.

Run-folder rules (:func:`prepare_run_folder`): a run folder holds one run. Starting without ``resume``
into a folder that already holds files is refused; orphan ``*.tmp*`` files of a killed save are removed
at start; on resume, ``metrics.jsonl`` loses the records after the resumed step (a killed run had
written them, the resumed run writes them again).
"""
from __future__ import annotations

import json
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wfa.errors import CheckpointError, TrainError

FORMAT = "wfa-checkpoint"
FORMAT_VERSION = 2
COUNTERS = ("step", "epoch", "batch_in_epoch", "images_seen", "captions_seen", "train_wall_s", "flops", "image_size")
# image_size (the input size the checkpoint was trained at) is absent from checkpoints of earlier wfa versions
REQUIRED = (*COUNTERS[:-1], "method", "model", "optimizer", "scheduler", "rng")
# what a run writes into its folder: any of them means the folder holds a run
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoints", "model_final.pt", "aggregator.safetensors", "tensorboard")
_STEP_NAME = re.compile(r"^step_(\d+)\.pt$")
_TMP_NAME = re.compile(r"^\..+\.tmp\d+$")


def rng_state() -> dict[str, Any]:
    """The python, numpy and torch (CPU and CUDA) RNG states of this process, as tensors and plain values."""
    version, mt, gauss = random.getstate()
    key, pos, has_gauss, cached = np.random.get_state(legacy=True)[1:]
    state: dict[str, Any] = {
        "python": [int(version), [int(v) for v in mt], gauss],
        "numpy": {"key": torch.from_numpy(np.asarray(key, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    version, mt, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in mt), gauss))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["key"].numpy().astype(np.uint32), int(numpy["pos"]),
                         int(numpy["has_gauss"]), float(numpy["cached_gaussian"])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(out: str | Path) -> Path:
    """``OUT/checkpoints``."""
    return Path(out) / "checkpoints"


def checkpoint_path(out: str | Path, step: int) -> Path:
    """``OUT/checkpoints/step_XXXXXX.pt`` of ``step``."""
    return checkpoint_dir(out) / f"step_{step:06d}.pt"


def list_checkpoints(out: str | Path) -> list[Path]:
    """The ``step_*.pt`` files of a run, oldest step first (sorted by the step number, not the name)."""
    folder = checkpoint_dir(out)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_NAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def find_checkpoint(out: str | Path, which: str) -> Path | None:
    """Resolve ``which`` (``"latest"`` or a path) to a checkpoint file; ``None`` if latest has none yet."""
    if which != "latest":
        path = Path(which)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} not found or not a file (use resume=latest or a step_*.pt path)")
        return path
    found = list_checkpoints(out)
    return found[-1] if found else None


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, flush it to disk, then rename: a crash never
    leaves half a file under ``path`` (at most an orphan ``.NAME.tmpPID``, removed by the next run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def prune_checkpoints(out: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints (by step number); returns the deleted paths."""
    old = list_checkpoints(out)[:-keep] if keep else []
    for path in old:
        path.unlink()
    return old


def build_checkpoint(counters: dict[str, Any], *, world_size: int, method: str, config: dict[str, Any],
                     model: dict[str, torch.Tensor], aggregator: dict[str, torch.Tensor] | None,
                     optimizer: dict[str, Any], scheduler: dict[str, Any], scaler: dict[str, Any] | None,
                     rng: list[dict[str, Any]]) -> dict[str, Any]:
    """The checkpoint dict: ``counters`` (:data:`COUNTERS`), state dicts and the RNG states of every rank."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, **{k: counters[k] for k in COUNTERS},
            "world_size": world_size, "method": method, "config": config, "model": model, "aggregator": aggregator,
            "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, "rng": rng}


def safe_load(path: str | Path, what: str) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with every failure as a
    :class:`CheckpointError` naming the file: missing, empty, truncated, not a torch file, or holding
    Python objects (pickled code or an old format), which are never executed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} not found or not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes); it was not written completely")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = str(error).split("\n")[0][:200]
        raise CheckpointError(f"{what} {path} holds Python objects that wfa does not load ({detail}); it was "
                              "written by an older wfa or by another program: start the run again without "
                              "--resume (or into a new out=), or use a file written by this wfa") from None
    except Exception as error:  # noqa: BLE001 - weights_only runs no code: any failure is the file's (KeyError, ...)
        detail = str(error).split("\n")[0][:200]
        raise CheckpointError(f"{what} {path} is not a readable torch file (truncated or corrupt: {detail}); "
                              "use another checkpoint") from None


def read_checkpoint(path: str | Path, method: str | None = None) -> dict[str, Any]:
    """Load and check a training checkpoint (see :func:`safe_load`); ``method`` must match when given."""
    state = safe_load(path, "checkpoint")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is not a wfa training checkpoint (a {type(state).__name__})")
    if state.get("format") != FORMAT:
        hint = ("it looks like a model file (e.g. model_final.pt): resume from a checkpoints/step_*.pt file"
                if state and all(isinstance(v, torch.Tensor) for v in state.values()) else
                "start the run again without --resume, or into a new out=")
        raise CheckpointError(f"checkpoint {path} is not a wfa training checkpoint of format {FORMAT} "
                              f"v{FORMAT_VERSION}; {hint}")
    missing = [key for key in REQUIRED if key not in state]
    if missing or not isinstance(state["rng"], list) or not state["rng"]:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing) or 'rng states'}; use another checkpoint")
    if method is not None and state["method"] != method:
        raise CheckpointError(f"checkpoint {path} was trained with method={state['method']}, this run is "
                              f"method={method}; pass method={state['method']} or start a new run")
    return state


def load_states(path: str | Path, parts: list[tuple[str, Any, Any]]) -> None:
    """Load each ``(name, target, state)`` of a checkpoint: ``target.load_state_dict(state)``, or, for a
    ``None`` target, ``state`` as the RNG states. A part that does not fit this run (another architecture,
    aggregator or optimiser setting) raises :class:`CheckpointError` naming the file and the part."""
    for name, target, state in parts:
        try:
            if target is None:
                set_rng_state(state)
            else:
                target.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
            detail = str(error).strip().split("\n")[0][:200]
            raise CheckpointError(f"checkpoint {path}: its {name} does not fit this run ({detail}); resume with the "
                                  "run's own config (model, method, aggregator settings) or start a new run") from None


def is_model_checkpoint(state: Any) -> bool:
    """Whether a loaded object is a training checkpoint (as opposed to a plain model state dict)."""
    return isinstance(state, dict) and state.get("format") == FORMAT


def clean_orphans(out: str | Path) -> list[Path]:
    """Remove the ``.NAME.tmpPID`` files a killed :func:`save_atomic` left in ``OUT`` and ``OUT/checkpoints``."""
    removed = []
    for folder in (Path(out), checkpoint_dir(out)):
        if folder.is_dir():
            for path in folder.iterdir():
                if _TMP_NAME.match(path.name) and path.is_file():
                    path.unlink()
                    removed.append(path)
    return removed


def check_run_folder(out: str | Path, resume: str | None) -> None:
    """Refuse to start a new run (no ``resume``) in a folder that already holds a run's files
    (:data:`RUN_FILES`); other files (e.g. a ``shards/`` folder) do not count."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrainError(f"out={out} is a file, not a folder; choose another out=")
    found = [name for name in RUN_FILES if (out / name).exists()]
    if resume is None and found:
        raise TrainError(f"run folder {out} already holds a run ({', '.join(found)}); continue it with "
                         "--resume latest, train into another out=, or remove the folder")


def truncate_metrics(path: str | Path, step: int) -> int:
    """Drop the records of ``metrics.jsonl`` after ``step`` (and any torn last line); returns how many.

    A resumed run writes the steps after its checkpoint again, so the killed run's records of those steps
    would otherwise appear twice.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        at = record.get("step", record.get("steps", 0)) if isinstance(record, dict) else 0
        if isinstance(at, (int, float)) and at > step:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped
