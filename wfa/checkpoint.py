"""Training checkpoints: the counters of a run (:class:`TrainState`), saved atomically and loaded safely.

A checkpoint (``OUT/checkpoints/step_XXXXXX.pt``; where it lives, which is the latest and the one-run-per-folder
rule belong to :class:`wfa.run.Run`) is a dict of tensors, numbers, strings and lists only,
so it loads with ``torch.load(path, map_location="cpu", weights_only=True)``: a file from elsewhere cannot
run code. The RNG states are stored in that form too (python's Mersenne-Twister state as a list of ints,
numpy's as a tensor plus numbers). Checkpoints written by wfa before this format (pickled RNG states) are
refused with a message to start the run again.
"""
from __future__ import annotations

import os
import pickle
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from wfa.errors import CheckpointError

FORMAT = "wfa-checkpoint"
FORMAT_VERSION = 2


@dataclass
class TrainState:
    """Where a run stands: the counters a checkpoint saves and a resume restores, in one place."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of this epoch consumed: with the epoch, the data position
    images_seen: int = 0  # over all ranks
    captions_seen: int = 0
    train_wall_s: float = 0.0  # seconds in the training loop, without validation and checkpoint writing
    # FLOPs of the counted steps (train.count_flops_every), in total and per phase ({name: counted, counted_steps,
    # steps}); see Trainer.flops_trained
    flops: dict[str, Any] = field(default_factory=lambda: {"counted": 0.0, "steps": 0, "phases": {}})
    image_size: int = 0  # the input size the model is at (the resolution schedule's phase)

    def as_dict(self) -> dict[str, Any]:
        """The counters as plain values (what a checkpoint stores)."""
        return asdict(self)

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Take the counters a checkpoint saved; one absent from an older checkpoint (``image_size`` before the
        resolution schedule) keeps its value, and FLOP counters from before the phases get an empty phase table."""
        for counter in fields(self):
            if counter.name in saved:
                setattr(self, counter.name, saved[counter.name])
        self.flops.setdefault("phases", {})


COUNTERS = tuple(counter.name for counter in fields(TrainState))
# image_size (the input size the checkpoint was trained at) is absent from checkpoints of earlier wfa versions
REQUIRED = (*COUNTERS[:-1], "method", "model", "optimizer", "scheduler", "rng")


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
