"""Check a whole training config against its data before anything is written: one pass, one-line errors.

:func:`check_run` is what :class:`wfa.trainer.Trainer` runs before it builds anything. It checks

- **the data**: ``index.json`` readable and consistent (a band list that disagrees with its layout, a
  ``bands_bytes`` the layout cannot hold, a shard entry without a sample count are refused by
  :func:`wfa.data.loader.read_index` / :func:`~wfa.data.loader.split_shards`); ``data.split`` and
  ``data.val_split`` present; the shards of **both** splits read against the index (tar headers,
  :mod:`wfa.data.audit`) and one sample of every shard of both decoded as the loader would
  (:func:`wfa.data.loader.probe_split`), so a garbage validation or test shard is found before training,
  not after it;
- **the settings against the data**: one global batch (``train.batch_size`` x ranks) fits in the split's
  epoch (images, captions or distinct captions, as the method's loader view counts them);
- **the settings against the model**: the model is built on PyTorch's ``meta`` device (no memory, no
  weights) with the run's input channels and ``data.image_size``, and an image batch goes through its image
  tower there, so an image smaller than a patch fails here; the method's aggregator is built from the
  ``aggregator.*`` settings (``hidden_dim <= 0`` or ``temperature`` 0 fail here).

A data problem is a :class:`~wfa.errors.TrainError` (exit 1); a setting that cannot work is one with exit
code 2, naming the key. Nothing is written before these checks pass, so a refused run leaves no run folder.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator

from wfa.config import Config
from wfa.data.audit import audit_split, check_loss, check_probes
from wfa.data.loader import epoch_size, probe_split, read_index, split_shards
from wfa.errors import TrainError

__all__ = ["check_run"]


def check_run(cfg: Config, world_size: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check ``cfg`` against its shards and model before a run starts; returns ``(index, audit of data.split)``
    (the audit goes to ``metrics.jsonl``). Raises :class:`~wfa.errors.TrainError` naming the problem."""
    index, audit = _check_data(cfg)
    _check_batch(cfg, index, world_size)
    _check_model(cfg, index)
    return index, audit


def _setting(message: str) -> TrainError:
    """A setting that cannot work: exit code 2, as for other unusable arguments."""
    return TrainError(message).with_exit_code(2)


def _check_data(cfg: Config) -> tuple[dict[str, Any], dict[str, Any]]:
    shards_dir, splits = cfg.data.shards, [cfg.data.split]
    if cfg.data.val_split and cfg.data.val_split != cfg.data.split:
        splits.append(cfg.data.val_split)
    try:
        index = read_index(shards_dir)
        listed = {split: split_shards(index, shards_dir, split) for split in splits}
    except (OSError, ValueError) as error:
        raise TrainError(f"data: {error}") from None
    audits = {}
    for split in splits:
        audits[split] = audit_split(listed[split])
        reason = check_loss(audits[split], split)
        if reason is not None:
            raise TrainError(reason)
    for split in splits:
        try:
            probes = probe_split(shards_dir, split, cfg.data.image_size, cfg.data.max_captions, index)
        except (OSError, ValueError) as error:
            raise TrainError(f"data: {error}") from None
        reason = check_probes(probes, split)
        if reason is not None:
            raise TrainError(reason)
    return index, audits[cfg.data.split]


def _check_batch(cfg: Config, index: dict[str, Any], world_size: int) -> None:
    from wfa.methods import create_method

    view = create_method(cfg.method, cfg.method_options).view
    loader_cfg = cfg.loader_config(view=view)
    samples = epoch_size(loader_cfg, index)
    needed = cfg.train.batch_size * world_size
    if samples < needed:
        ranks = f" x {world_size} ranks" if world_size > 1 else ""
        raise _setting(f"train.batch_size={cfg.train.batch_size}{ranks} needs {needed} samples per step, but split "
                       f"{cfg.data.split!r} of {cfg.data.shards} has {samples} ({view} view of method={cfg.method}); "
                       "lower train.batch_size")


@contextmanager
def _quiet() -> Iterator[None]:
    """Hide open_clip's "initialized randomly" notice of the meta-device model (the real build logs its own)."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _check_model(cfg: Config, index: dict[str, Any]) -> None:
    import torch

    from wfa.aggregation import create_aggregator
    from wfa.methods import create_method
    from wfa.model import create_model, resolve_model_name, text_embed_dim

    try:
        resolve_model_name(cfg.model.name)
    except (OSError, ValueError) as error:
        raise _setting(f"model.name={cfg.model.name!r}: {error}") from None
    bands = cfg.model.bands if cfg.model.bands is not None else index.get("bands")
    in_chans = cfg.model.in_chans or (len(bands) if bands else 3)
    size = cfg.data.image_size
    try:
        with _quiet(), torch.device("meta"):
            clip, _ = create_model(cfg.model.name, in_chans=in_chans, bands=bands, image_size=size, device="meta")
    except Exception:  # an architecture that cannot be built on the meta device: the real build will tell
        return
    try:
        with torch.no_grad():
            clip.encode_image(torch.empty(1, in_chans, size, size, device="meta"))
    except (RuntimeError, ValueError) as error:
        detail = " ".join(str(error).split())[:200]
        raise _setting(f"data.image_size={size} does not fit model {cfg.model.name!r} with {in_chans} input channels "
                       f"({detail}); use a larger data.image_size (at least one patch)") from None
    patch = getattr(clip.visual, "patch_size", None)
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    low = cfg.data.low_res_size
    if low is not None and isinstance(patch, int) and low % patch:
        raise _setting(f"data.low_res_size={low} is not a multiple of model {cfg.model.name!r}'s patch size {patch}: "
                       f"the positional embeddings cannot be resized to its grid; use a multiple of {patch}")
    aggregator = create_method(cfg.method, cfg.method_options).aggregator
    if aggregator == "attention":
        settings = {"hidden_dim": cfg.aggregator.hidden_dim, "temperature": cfg.aggregator.temperature}
        try:
            with torch.device("meta"):
                create_aggregator(aggregator, text_embed_dim(clip), **settings)
        except (ValueError, TypeError) as error:
            given = ", ".join(f"aggregator.{key}={value}" for key, value in settings.items())
            raise _setting(f"{given} do not make an attention aggregator: {error}") from None
