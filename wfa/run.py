"""A run folder and its one owner, :class:`Run`: where each file of a training run lives and how it is read back.

A run folder (``wfa train out=...``) holds::

    config.yaml              the resolved run config (wfa.config)
    metrics.jsonl            one JSON record per logged step, validation, phase change, start and end
    checkpoints/step_XXXXXX.pt   resumable training state (loads with weights_only=True)
    model_final.pt           the trained model, open_clip format (a state dict of tensors)
    aggregator.safetensors   the trained aggregator of a method that fuses captions
    tensorboard/             TensorBoard scalars

The trainer writes through :class:`Run` (the paths, the one-run-per-folder rule, pruning, orphan cleanup) and
everything that reads a run back goes through it too: ``wfa eval``, ``wfa demo``, ``wfa study``, the ablations and
the notebook. ``run.load_model(step | "final")`` is the one way to get a model back from a run; it and
:func:`load_model_file` (a bare ``model_final.pt``-style file, for ``wfa eval --checkpoint FILE``) load with
``torch.load(weights_only=True)`` and aggregators from safetensors, so a shared run folder cannot run code; the
names of the files read are the layout's own, never taken from a file.

This module imports torch and open_clip only when a model is loaded: reading a run's config or metrics is light.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Union

from wfa.errors import CheckpointError, RunFolderError, TrainError

if TYPE_CHECKING:  # only for type hints: importing them would pull in torch
    from torch import nn

    from wfa.config import Config
    from wfa.eval.evaluation import EvalReport

#: ``"final"`` (model_final.pt and aggregator.safetensors) or a checkpoint's step number.
Which = Union[int, str]

_STEP_NAME = re.compile(r"^step_(\d+)\.pt$")
_TMP_NAME = re.compile(r"^\..+\.tmp\d+$")


class Run:
    """One run folder: its layout, and the run's config, metrics, validation curve, models and evaluation.

    ``Run(folder)`` only names the folder (the trainer opens it before anything is written); :meth:`open` is for
    reading a finished or interrupted run and checks that the folder holds one.
    """

    CONFIG = "config.yaml"
    METRICS = "metrics.jsonl"
    CHECKPOINTS = "checkpoints"
    MODEL = "model_final.pt"
    AGGREGATOR = "aggregator.safetensors"
    TENSORBOARD = "tensorboard"
    #: what a run writes into its folder: any of them means the folder holds a run
    FILES = (CONFIG, METRICS, CHECKPOINTS, MODEL, AGGREGATOR, TENSORBOARD)

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def __repr__(self) -> str:
        return f"Run({str(self.folder)!r})"

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "Run":
        """The run in ``folder``; :class:`~wfa.errors.RunFolderError` when it is no folder or holds no run config."""
        run = cls(folder)
        if not run.folder.is_dir():
            raise RunFolderError(f"run folder {run.folder} not found or not a folder")
        if not run.config_path.is_file():
            raise RunFolderError(f"{run.folder} holds no {cls.CONFIG}: not a wfa run folder (train one with wfa train)")
        return run

    @classmethod
    def holding(cls, file: str | os.PathLike) -> "Run | None":
        """The run whose folder holds ``file`` (e.g. a ``model_final.pt``), or None when no ``config.yaml`` is
        beside it (a bare model file)."""
        run = cls(Path(file).resolve().parent)
        return run if run.config_path.is_file() else None

    # -- the layout ------------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.folder / self.CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.folder / self.METRICS

    @property
    def checkpoints_dir(self) -> Path:
        return self.folder / self.CHECKPOINTS

    @property
    def model_path(self) -> Path:
        return self.folder / self.MODEL

    @property
    def aggregator_path(self) -> Path:
        return self.folder / self.AGGREGATOR

    @property
    def tensorboard_dir(self) -> Path:
        return self.folder / self.TENSORBOARD

    def checkpoint_path(self, step: int) -> Path:
        """``checkpoints/step_XXXXXX.pt`` of ``step``."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"a checkpoint is named by its step, a non-negative int; got {step!r}")
        return self.checkpoints_dir / f"step_{step:06d}.pt"

    @property
    def checkpoints(self) -> dict[int, Path]:
        """``{step: file}`` of the run's checkpoints, oldest step first (sorted by number, not by name)."""
        folder = self.checkpoints_dir
        if not folder.is_dir():
            return {}
        found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_NAME.match(p.name)) and p.is_file()]
        return dict(sorted(found))

    def find_checkpoint(self, which: str) -> Path | None:
        """Resolve a ``resume`` value: ``"latest"`` (None when the run has no checkpoint yet) or the path of a
        ``step_*.pt`` file the user names."""
        if which != "latest":
            path = Path(which)
            if not path.is_file():
                raise CheckpointError(f"checkpoint {path} not found or not a file (use resume=latest or a step_*.pt "
                                      "path)")
            return path
        found = list(self.checkpoints.values())
        return found[-1] if found else None

    def held_files(self) -> list[str]:
        """The run files (:data:`FILES`) present in the folder."""
        return [name for name in self.FILES if (self.folder / name).exists()]

    def check_new(self, resume: str | None) -> None:
        """Refuse to start a new run (no ``resume``) in a folder that already holds a run's files; other files (e.g.
        a ``shards/`` folder) do not count."""
        if self.folder.exists() and not self.folder.is_dir():
            raise TrainError(f"out={self.folder} is a file, not a folder; choose another out=")
        found = self.held_files()
        if resume is None and found:
            raise TrainError(f"run folder {self.folder} already holds a run ({', '.join(found)}); continue it with "
                             "--resume latest, train into another out=, or remove the folder")

    def prune_checkpoints(self, keep: int) -> list[Path]:
        """Delete all but the ``keep`` newest checkpoints (0 keeps all); returns the deleted files."""
        old = list(self.checkpoints.values())[:-keep] if keep else []
        for path in old:
            path.unlink()
        return old

    def clean_orphans(self) -> list[Path]:
        """Remove the ``.NAME.tmpPID`` files that a killed atomic save (:func:`wfa.checkpoint.save_atomic`) left in
        the folder and in ``checkpoints/``."""
        removed = []
        for folder in (self.folder, self.checkpoints_dir):
            if folder.is_dir():
                for path in folder.iterdir():
                    if _TMP_NAME.match(path.name) and path.is_file():
                        path.unlink()
                        removed.append(path)
        return removed

    def save_config(self, cfg: "Config") -> Path:
        """Write the resolved config as ``config.yaml``."""
        from wfa.config import save_config

        return save_config(cfg, self.config_path)

    # -- reading the run back -------------------------------------------------------------------------------
    @cached_property
    def config(self) -> "Config":
        """The run's resolved config (``config.yaml``); :class:`~wfa.errors.RunFolderError` naming the file when it
        cannot be read as one."""
        from wfa.config import ConfigError, load_config

        try:
            return load_config(self.config_path, validate=False)
        except ConfigError as error:
            raise RunFolderError(f"{self.config_path} (the run's config) cannot be read ({error}); fix or remove it "
                                 "(wfa eval: and pass --model)") from None
        except (OSError, UnicodeDecodeError) as error:
            raise RunFolderError(f"{self.config_path} (the run's config) cannot be read ({error})") from None

    def metrics(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl`` in order (a torn or foreign line, e.g. of a killed run, is left out)."""
        from wfa.metrics_log import read_metrics

        return read_metrics(self.metrics_path)

    def summary(self) -> dict[str, Any] | None:
        """The run's last ``end`` record (what :func:`wfa.train` returned), None for an unfinished run."""
        return next((r for r in reversed(self.metrics()) if r.get("event") == "end"), None)

    def val_curve(self) -> list[dict[str, Any]]:
        """One point per validation: ``step``, ``train_wall_s`` (training time up to it, without validation and
        checkpoints), ``images_encoded``, ``captions_encoded``, ``flops_per_step``, ``flops`` (training FLOPs up
        to it) and the validation metrics (``mR_t2i``, ``i2t_r1``, ...).

        A run written before the trainer stamped validations with their FLOPs gets ``step x`` its mean FLOPs per
        step (None when it counted none)."""
        records = self.metrics()
        end = next((r for r in reversed(records) if r.get("event") == "end"), {})
        curve = []
        for r in records:
            if r.get("event") != "val":
                continue
            flops = r.get("flops")
            if flops is None and end.get("flops_per_step"):
                flops = r["step"] * end["flops_per_step"]
            curve.append({"step": r["step"], "train_wall_s": r.get("train_wall_s"),
                          "images_encoded": r.get("images_seen"), "captions_encoded": r.get("captions_seen"),
                          "flops_per_step": r.get("flops_per_step"), "flops": flops,
                          **{key[len("val/"):]: value for key, value in r.items() if key.startswith("val/")}})
        return curve

    def _file(self, which: Which) -> Path:
        """``model_final.pt`` for ``"final"``, the checkpoint of a step number otherwise; it must exist."""
        if which == "final":
            path = self.model_path
            hint = "the run has not finished: train it to the end (wfa train --resume latest) or load a step"
        elif isinstance(which, int) and not isinstance(which, bool):
            path = self.checkpoint_path(which)
            steps = list(self.checkpoints)
            hint = f"its checkpoints are at steps {steps}" if steps else "it keeps no checkpoint"
        else:
            raise ValueError(f"which must be 'final' or a step number, got {which!r}")
        if not path.is_file():
            raise RunFolderError(f"{path} not found in run {self.folder}: {hint}")
        return path

    def image_size(self, which: Which = "final") -> int:
        """The input size the model of ``which`` was trained at: the checkpoint's own (a resolution schedule's low
        size before its switch), the config's ``data.image_size`` for the final model."""
        if which != "final":
            from wfa.checkpoint import read_checkpoint

            return int(read_checkpoint(self._file(which)).get("image_size") or self.config.data.image_size)
        return self.config.data.image_size

    def load_model(self, which: Which = "final", *, device: Any = None) -> tuple["nn.Module", Any]:
        """``(model, tokenizer)`` of the final model or of the checkpoint at step ``which``, in eval mode, built
        with the run's architecture, bands and image size."""
        from wfa.model import create_model

        cfg = self.config
        path = self._file(which)
        if which == "final":
            model, tokenizer = load_model_file(path, cfg.model.name, bands=cfg.model.bands,
                                               image_size=cfg.data.image_size, device=device)
            return model, tokenizer
        from wfa.checkpoint import load_states, read_checkpoint

        state = read_checkpoint(path)
        size = int(state.get("image_size") or cfg.data.image_size)
        with quiet_random_init():
            model, tokenizer = create_model(cfg.model.name, in_chans=cfg.model.in_chans, bands=cfg.model.bands,
                                            image_size=size)
        load_states(path, [("model", model, state["model"])])
        return model.to(device or "cpu").eval(), tokenizer

    def aggregator(self, which: Which = "final", *, device: Any = None) -> "nn.Module | None":
        """The run's aggregator (None for a method without one): ``aggregator.safetensors`` for ``"final"``; for a
        step, the checkpoint's aggregator weights in the same architecture (from ``aggregator.safetensors`` when
        the run finished, else from the config)."""
        from wfa.aggregation import load_aggregator

        if which == "final":
            return load_aggregator(self.aggregator_path, device or "cpu") if self.aggregator_path.is_file() else None
        from wfa.checkpoint import load_states, read_checkpoint

        path = self._file(which)
        weights = read_checkpoint(path)["aggregator"]
        if weights is None:
            return None
        if self.aggregator_path.is_file():
            return load_aggregator(self.aggregator_path, device or "cpu", state_dict=weights)
        model, _ = self.load_model(which)
        from wfa.model import text_embed_dim

        aggregator = build_aggregator(self.config, text_embed_dim(model))
        if aggregator is None:
            raise RunFolderError(f"{path} holds aggregator weights but method={self.config.method} has no aggregator")
        load_states(path, [("aggregator", aggregator, weights)])
        return aggregator.to(device or "cpu").eval()

    def evaluate(self, split: str = "test", which: Which = "final", *, shards: str | os.PathLike | None = None,
                 device: Any = None, **options: Any) -> "EvalReport":
        """Retrieval of the model ``which`` on ``split`` of ``shards`` (default: the run's own ``data.shards``)
        through the one evaluation door, :func:`wfa.eval.evaluate`, with the run's aggregator and text-encoding
        options; ``options`` go to it (``curve_k``, ``batch_size``, ``backend``, ...)."""
        from wfa.eval import evaluate

        cfg = self.config
        model, tokenizer = self.load_model(which, device=device)
        aggregator = self.aggregator(which, device=device)
        options = {"trim_text": cfg.model.trim_text, "text_buckets": cfg.model.text_buckets,
                   "dedup_captions": cfg.model.dedup_captions, **options}
        return evaluate(model, tokenizer, shards or cfg.data.shards, split, aggregator, device=device, **options)


def build_aggregator(cfg: "Config", dim: int) -> "nn.Module | None":
    """The aggregator of ``cfg.method`` for ``dim``-dimensional text features with the config's ``aggregator``
    options (None for a method that fuses nothing); what the trainer trains and a run's checkpoints hold."""
    from wfa.aggregation import create_aggregator
    from wfa.methods import create_method

    name = create_method(cfg.method, cfg.method_options).aggregator
    if name is None:
        return None
    kwargs = {"hidden_dim": cfg.aggregator.hidden_dim, "temperature": cfg.aggregator.temperature} \
        if name == "attention" else {}
    return create_aggregator(name, dim, **kwargs)


def check_model_file(path: str | os.PathLike) -> int | None:
    """Refuse, with one line naming the file, what is not an open_clip-format state dict: a missing, empty, truncated
    or text file, a pickle (never executed), or a training checkpoint ``step_*.pt``. Returns the input channels of
    the image tower's first convolution (its first 4-D ``visual.`` weight), None when it has none."""
    import torch

    from wfa.checkpoint import is_model_checkpoint, safe_load

    state = safe_load(path, "checkpoint")
    if is_model_checkpoint(state):
        raise CheckpointError(f"checkpoint {path} is a training checkpoint (step {state.get('step')}); evaluate the "
                              "run's model_final.pt, or finish the run with `wfa train --resume latest`")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} is not a model state dict (written by wfa train as model_final.pt, "
                              "or an open_clip checkpoint)")
    stems = [value for key, value in state.items() if key.startswith("visual.") and value.ndim == 4]
    return int(stems[0].shape[1]) if stems else None


def load_model_file(path: str | os.PathLike, name: str, *, bands: list[str] | None = None,
                    image_size: int | None = None, device: Any = None) -> tuple["nn.Module", Any]:
    """``(model, tokenizer)`` from an open_clip-format model file (``model_final.pt``) for the architecture
    ``name``, in eval mode: checked first (:func:`check_model_file`), loaded ``weights_only``. A file that does not
    fit the architecture is a :class:`~wfa.errors.CheckpointError` naming it."""
    from wfa.model import create_model

    check_model_file(path)
    try:
        with quiet_random_init():
            model, tokenizer = create_model(name, pretrained=str(path), bands=bands, image_size=image_size,
                                            device=device or "cpu")
    except (RuntimeError, ValueError, KeyError, AssertionError) as error:  # open_clip asserts on some mismatches
        detail = str(error).strip().split("\n")[0][:300]
        raise CheckpointError(f"checkpoint {path} does not fit the model {name!r} ({detail}); pass the --model it "
                              "was trained with (or keep the run's config.yaml beside it)") from None
    return model.eval(), tokenizer


@contextmanager
def quiet_random_init() -> Iterator[None]:
    """Hide open_clip's "initialized randomly" notice while weights are about to be loaded into the model."""
    import logging

    class Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "initialized randomly" not in record.getMessage()

    root, drop = logging.getLogger(), Drop()  # open_clip logs it with logging.warning, on the root logger
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


__all__ = ["Run", "build_aggregator", "check_model_file", "load_model_file", "quiet_random_init", "Which"]
