"""The training loop: one short accelerate loop for every registered method.

Run it with ``accelerate launch -m wfa.trainer --config configs/ucm.yaml method=bleu train.lr=1e-3`` (any number
of processes, CPU or GPUs) or ``wfa train --config ...`` (one process). :func:`train` is the library entry.

Per micro-step the method (:mod:`wfa.methods`) selects the captions to encode — drawing with a generator seeded
from ``(seed, micro-step, rank)`` when its choice is random, so a resumed run draws the same —, the model
(:class:`wfa.model.ContrastiveModel`) encodes images and those captions (trimmed, length-bucketed, repeats
encoded once) and fuses them when the method has an aggregator, and the method's loss trains on the output.
The method also names the loader view (one sample per image, per caption, or per distinct caption).

Data position and exact resume: the loader's shard and sample order, and the augmentation of every sample,
are a pure function of ``(seed, epoch, rank, worker)`` (:mod:`wfa.data.loader`), and the checkpoint records
``(epoch, batches consumed in that epoch)``. Resuming sets the loader to that epoch and skips the consumed batches: exact,
at the cost of decoding the skipped batches once. Every other piece of state (weights, AdamW moments,
schedule, grad scaler, RNG states of every rank, counters) is in the checkpoint, so 4 + 4 steps give the
same weights as 8 steps.

The WebDataset loader does not go through ``accelerator.prepare`` (that would re-shard or dispatch it);
it splits shards by rank itself and batches are moved to the device here. The LR scheduler is stepped by
this loop once per optimizer step (``step_scheduler_with_optimizer=False``: accelerate would otherwise
step it ``num_processes`` times per step).
"""
from __future__ import annotations

import argparse
import errno
import json
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast, gather_object, set_seed
from torch.profiler import record_function
from torch.utils.flop_counter import FlopCounterMode
from open_clip.model import resize_pos_embed
from tqdm.auto import tqdm

from wfa.aggregation import distance_from_uniform, save_aggregator, weight_entropy
from wfa.checkpoint import TrainState, build_checkpoint, load_states, read_checkpoint, rng_state, save_atomic
from wfa.config import Config, ConfigError, add_config_arguments, config_from_args, config_to_dict
from wfa.data.loader import SKIP_REASONS, build_loader
from wfa.data.publish import folder_lock
from wfa.errors import NonFiniteError, RunFolderError, TrainError, WfaError
from wfa.eval import evaluate
from wfa.methods import create_method
from wfa.metrics_log import MetricsLog, truncate_metrics
from wfa.model import (ContrastiveModel, attention_kernels, compile_towers, create_model, get_tokenizer,
                       save_open_clip_checkpoint, set_patch_dropout, text_embed_dim)
from wfa.optim import build_optimizer, cosine_with_warmup
from wfa.peak import peak_flops, resolve_precision
from wfa.phases import Phase, Phases
from wfa.preflight import check_run
from wfa.run import Run, build_aggregator

LOG_SCALE_MAX = math.log(100)  # open_clip clamps the learnable temperature at 100


def step_generator(seed: int, micro_step: int, rank: int, world_size: int) -> torch.Generator:
    """The generator a method draws its random caption choices of one micro-step from: a pure function of
    ``(seed, micro_step, rank)``, so a resumed run draws the same."""
    return torch.Generator().manual_seed((seed * 1_000_003 + micro_step) * world_size + rank)


class Trainer:
    """State of one run; :meth:`run` trains. Use :func:`train` rather than this class directly."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.run_folder = Run(cfg.out)  # where every file of the run goes
        if cfg.train.precision == "auto":  # resolved once per run: a resumed run keeps what it started with
            saved = None
            if cfg.resume and self.run_folder.config_path.is_file():
                try:
                    saved = self.run_folder.config.train.precision
                except RunFolderError:  # unreadable: decide afresh (the run writes config.yaml again)
                    pass
            self.cfg = cfg = replace(cfg, train=replace(cfg.train, precision=resolve_precision(saved or "auto")))
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        # accelerate only forms a CPU process group (gloo) when told the run is on CPU; under torchrun
        # on a machine without CUDA it would otherwise start WORLD_SIZE independent 1-process runs.
        try:
            self.acc = Accelerator(mixed_precision=cfg.train.precision,
                                   gradient_accumulation_steps=cfg.train.grad_accum,
                                   step_scheduler_with_optimizer=False,
                                   cpu=launched > 1 and not torch.cuda.is_available())
        except ValueError as error:  # accelerate keeps one mixed precision per process
            if "already been initialized" not in str(error):
                raise
            raise TrainError(f"train.precision={cfg.train.precision!r} differs from an earlier run in this process, "
                             "and accelerate keeps one precision per process: train in a new process") from None
        self.rank, self.world_size = self.acc.process_index, self.acc.num_processes
        if launched != self.world_size:
            raise RuntimeError(f"launched with WORLD_SIZE={launched} but accelerate formed {self.world_size} "
                               "process(es); on CPU use ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu ... "
                               "or torchrun --nproc_per_node N -m wfa.trainer ...")
        self.is_main = self.acc.is_main_process
        set_seed(cfg.seed)
        self.run_folder.check_new(cfg.resume)  # every rank looks before any rank writes
        self.acc.wait_for_everyone()

        index, self.data_audit = check_run(cfg, self.world_size)  # the whole config against the data
        bands = cfg.model.bands if cfg.model.bands is not None else index.get("bands")
        self.in_chans, self.bands = cfg.model.in_chans or (len(bands) if bands else 3), bands
        # the saved config is the resolved one: record the channels and bands the model was built with
        self.cfg = cfg = replace(cfg, model=replace(cfg.model, in_chans=self.in_chans, bands=bands))
        self.method = create_method(cfg.method, cfg.method_options)
        self.tokenizer = get_tokenizer(cfg.model.name)
        self.loader_cfg = cfg.loader_config(view=self.method.view)
        self.loader, self.batches_per_epoch = build_loader(self.loader_cfg, self.tokenizer,
                                                           world_size=self.world_size, rank=self.rank)
        steps_per_epoch = max(1, self.batches_per_epoch // cfg.train.grad_accum)
        # A time budget (train.max_minutes) ends the run by itself: then only an explicit train.steps caps it.
        self.budget_s = cfg.train.max_minutes * 60 if cfg.train.max_minutes else None
        self.total_steps = cfg.train.steps or (
            None if self.budget_s else max(1, math.ceil(cfg.train.epochs * steps_per_epoch)))
        self.time_used = 0.0  # fraction of the time budget used, as rank 0 measured it
        self.phases = Phases(cfg.data.image_size, cfg.data.low_res_size, cfg.data.low_res_fraction,
                             cfg.model.patch_dropout, cfg.train.unmasked_fraction)
        self.peak_flops = peak_flops(self.acc.device, cfg.train.precision) if cfg.train.count_flops_every else None

        self.state = TrainState()  # the counters a checkpoint saves
        self._clock: float | None = None  # when the training clock last started (None: stopped)
        self._window_flops = 0.0  # FLOPs of the steps since the last log record (for the achieved FLOP/s)
        self._unsynced = [0, 0]  # this rank's images and captions not yet added to the global counters
        self.resumed_from: Path | None = None
        path = self.run_folder.find_checkpoint(cfg.resume) if cfg.resume else None
        state = read_checkpoint(path, cfg.method) if path is not None else None
        if cfg.resume and path is None and self.is_main:
            print(f"resume=latest: no checkpoint in {self.run_folder.checkpoints_dir} yet, starting from step 0")
        # a resumed run continues at the size its checkpoint was trained at (the positional embeddings' grid)
        self.state.image_size = (int(state.get("image_size", cfg.data.image_size)) if state
                                 else self.phases.at(0).image_size)
        self._build(pretrained=None if state else cfg.model.pretrained)
        if state is not None:
            self.load_checkpoint(path, state)
        self.compile_s: float | None = None  # wall time of the first step(s) after building compiled towers
        if self.is_main:
            self.run_folder.clean_orphans()
            truncate_metrics(self.run_folder.metrics_path, self.state.step)

    def _build(self, pretrained: str | None) -> None:
        """Model (at :attr:`image_size`), aggregator, optimizer, schedule and loss, prepared by accelerate.

        Called once at start and again at the resolution switch, which is a resume at the new size
        (:meth:`_switch_resolution`)."""
        cfg = self.cfg
        clip, _ = create_model(cfg.model.name, pretrained=pretrained, in_chans=self.in_chans, bands=self.bands,
                               image_size=self.state.image_size, patch_dropout=cfg.model.patch_dropout or None)
        aggregator = build_aggregator(cfg, text_embed_dim(clip))
        model = ContrastiveModel(clip, aggregator, cfg.model.trim_text, cfg.model.text_buckets,
                                 cfg.model.dedup_captions)
        if cfg.train.compile:
            compile_towers(clip, cfg.train.compile_backend)
        optimizer = build_optimizer(model, cfg.train, cfg.aggregator.lr_scale)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(
            cfg.train.warmup_steps, self.total_steps or 1, self._progress if self.budget_s else None))
        self.model, self.optimizer, self.scheduler = self.acc.prepare(model, optimizer, scheduler)
        self.loss_fn = self.method.build_loss(cfg.train.local_loss)
        self._fresh_build = True

    # -- data ---------------------------------------------------------------------------------------------
    def _batches(self) -> Iterator[dict[str, Any]]:
        """Endless batches from the current data position; keeps ``epoch``/``batch_in_epoch`` up to date.

        An epoch that skips more than ``MAX_MISSING_FRACTION`` of its samples as unreadable is stopped by the
        loader itself (:class:`~wfa.errors.DataError`, its liveness rule)."""
        skip = self.state.batch_in_epoch
        while True:
            self.loader.set_epoch(self.state.epoch)
            for i, batch in enumerate(self.loader):
                if i < skip:
                    continue
                self.state.batch_in_epoch = i + 1
                yield batch
            if self.state.batch_in_epoch == 0:
                raise TrainError(f"split {self.cfg.data.split!r} of {self.cfg.data.shards} gave no batch for rank "
                                 f"{self.rank} (loader: {self.loader.stats.as_dict()}); rewrite the shards")
            self.state.epoch, self.state.batch_in_epoch, skip = self.state.epoch + 1, 0, 0

    def _inputs(self, batch: dict[str, Any], micro_step: int) -> tuple[dict[str, torch.Tensor], Any]:
        """The model inputs on the device for the captions the method selects, and that selection."""
        captions = self.method.select(batch, step_generator(self.cfg.seed, micro_step, self.rank, self.world_size))
        inputs = {"images": batch["images"], "tokens": captions.tokens, "mask": captions.mask,
                  "weights": captions.weights}
        dev = self.acc.device
        inputs = {k: v.to(dev, non_blocking=True) for k, v in inputs.items()}
        if inputs["images"].shape[-1] != self.state.image_size:  # the resolution schedule's low-res phase
            inputs["images"] = F.interpolate(inputs["images"], size=(self.state.image_size, self.state.image_size),
                                             mode="bilinear", antialias=True, align_corners=False)
        captions.mask, captions.weights = inputs["mask"], inputs["weights"]
        if captions.keys is not None:
            captions.keys = captions.keys.to(dev, non_blocking=True)
        return inputs, captions

    # -- one optimizer step ---------------------------------------------------------------------------------
    def train_step(self, batches: Iterator[dict[str, Any]]) -> dict[str, float]:
        """``grad_accum`` micro-batches, one optimizer step; returns the step's scalars."""
        cfg = self.cfg
        losses, n_img, n_txt, stats = [], 0, 0, {}
        phase = self.phases.at(self._progress(self.state.step))
        if phase.image_size != self.state.image_size:
            raise RuntimeError(f"step {self.state.step} trains at {phase.image_size} px but the model is at "
                               f"{self.state.image_size} px: the loop switches resolution before the step")
        set_patch_dropout(self.acc.unwrap_model(self.model).clip, phase.patch_dropout)
        every = cfg.train.count_flops_every
        counting = bool(every) and (self.state.step % every == 0 or self._phase_flops_per_step(phase) is None)
        with FlopCounterMode(display=False) if counting else nullcontext() as counter:
            for micro in range(cfg.train.grad_accum):
                with record_function("wfa.loader_wait"):
                    batch = next(batches)
                micro_step = self.state.step * cfg.train.grad_accum + micro
                loss, out, inputs, captions = self._micro_step(batch, micro_step, losses)
                losses.append(loss.detach().float())
                n_img, n_txt = n_img + inputs["images"].shape[0], n_txt + captions.count
                if "weights" in out:
                    w, m = out["weights"].detach(), inputs["mask"]
                    stats = {"agg_entropy": weight_entropy(w, m).item(),
                             "agg_dist_uniform": distance_from_uniform(w, m).item()}
        self._add_step_flops(phase, counter.get_total_flops() if counting else None)
        self._window_flops += self._phase_flops_per_step(phase) or 0.0
        lr = self.scheduler.get_last_lr()[0]  # the rate this step used (group 0: the model's, not the aggregator's)
        self._measure_time_used()
        self.scheduler.step()
        with torch.no_grad():
            self.acc.unwrap_model(self.model).clip.logit_scale.clamp_(0, LOG_SCALE_MAX)
        self.state.step += 1
        return {"loss": torch.stack(losses).mean(), "lr": lr, "images": n_img, "captions": n_txt, **stats}

    def _micro_step(self, batch: dict[str, Any], micro_step: int, earlier: list[torch.Tensor]
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], Any]:
        """Forward, loss and backward of one micro-batch; on the last one (``earlier``: the step's previous
        losses) the gradients are clipped and checked, and the optimizer steps."""
        with record_function("wfa.select"):
            inputs, captions = self._inputs(batch, micro_step)
        with self.acc.accumulate(self.model):
            with attention_kernels(self.acc.device, self.cfg.train.precision != "no"):
                out = self.model(**inputs)
            with record_function("wfa.loss"):
                loss = self.loss_fn(out, captions)
            with record_function("wfa.backward"):
                self.acc.backward(loss)
            with record_function("wfa.optimizer"):
                if self.acc.sync_gradients:
                    norm = (self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
                            if self.cfg.train.grad_clip else None)
                    self._check_finite([*earlier, loss.detach().float()], norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        return loss, out, inputs, captions

    def _check_finite(self, losses: list[torch.Tensor], norm: torch.Tensor | None) -> None:
        """Raise :class:`NonFiniteError` before the optimizer step when a loss or (without fp16 loss scaling,
        which skips such steps itself) the gradient norm is NaN or inf on any rank (collective)."""
        loss = torch.stack(losses).mean()
        if self.acc.scaler is None and norm is None:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        bad = [not bool(torch.isfinite(loss)), self.acc.scaler is None and norm is not None
               and not bool(torch.isfinite(norm))]
        flags = self.acc.reduce(torch.tensor([float(b) for b in bad], device=self.acc.device), reduction="sum")
        if flags.sum().item() > 0:
            raise NonFiniteError(self.state.step + 1, "loss" if flags[0].item() else "gradient", loss.item())

    # -- checkpoints ------------------------------------------------------------------------------------------
    def _sync_counts(self) -> None:
        """Add every rank's images and captions encoded since the last call to the global counters (collective)."""
        counts = self.acc.reduce(torch.tensor(self._unsynced, dtype=torch.float64, device=self.acc.device),
                                 reduction="sum").cpu()
        self.state.images_seen += int(counts[0])
        self.state.captions_seen += int(counts[1])
        self._unsynced = [0, 0]

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly; RNG states of every rank."""
        self._sync_counts()
        inner = self.acc.unwrap_model(self.model)
        return build_checkpoint(
            self.state.as_dict(), world_size=self.world_size, method=self.cfg.method,
            config=config_to_dict(self.cfg), model=inner.clip.state_dict(),
            aggregator=inner.aggregator.state_dict() if inner.aggregator is not None else None,
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.acc.scaler.state_dict() if self.acc.scaler is not None else None,
            rng=gather_object([rng_state()]))

    def save_checkpoint(self) -> Path:
        """Write ``out/checkpoints/step_XXXXXX.pt`` atomically (main process); prune old ones."""
        state = self.checkpoint_state()  # collective: every rank takes part
        path = self.run_folder.checkpoint_path(self.state.step)
        if self.is_main:
            save_atomic(state, path)
            self.run_folder.prune_checkpoints(self.cfg.train.keep_checkpoints)
        self.acc.wait_for_everyone()
        return path

    def load_checkpoint(self, path: Path, state: dict[str, Any] | None = None) -> None:
        """Restore a :meth:`checkpoint_state` file (``state``: it, already read) into this prepared run.

        A checkpoint trained at another input size (before the resolution switch) gets its positional embeddings
        resized to this model's grid by open_clip's ``resize_pos_embed``, their AdamW moments bilinearly."""
        state = read_checkpoint(path, self.cfg.method) if state is None else state
        inner = self.acc.unwrap_model(self.model)
        model_state, optimizer_state = self._fit_positional_embedding(inner.clip, state["model"], state["optimizer"])
        parts = [("model", inner.clip, model_state), ("aggregator", inner.aggregator, state["aggregator"]),
                 ("optimizer", self.optimizer, optimizer_state), ("scheduler", self.scheduler, state["scheduler"]),
                 ("scaler", self.acc.scaler, state["scaler"])]
        load_states(path, [(name, target, value) for name, target, value in parts
                           if target is not None and (value is not None or name == "aggregator")])
        rngs = state["rng"]
        load_states(path, [("rng states", None, rngs[self.rank] if len(rngs) == self.world_size else rngs[0])])
        self.state.restore(state)
        self.resumed_from = path
        if self.is_main:
            at = self.state
            print(f"resumed from {path} at step {at.step} (epoch {at.epoch}, batch {at.batch_in_epoch})")

    def _fit_positional_embedding(self, clip: torch.nn.Module, model_state: dict[str, Any],
                                  optimizer_state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(model_state, optimizer_state)`` with the image tower's positional embeddings (and their AdamW
        moments) resized to ``clip``'s grid when they were trained at another input size; unchanged otherwise."""
        key = "visual.positional_embedding"
        current = getattr(clip.visual, "positional_embedding", None)
        if key not in model_state or current is None or model_state[key].shape == current.shape:
            return model_state, optimizer_state
        model_state = dict(model_state)
        resize_pos_embed(model_state, clip)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        index = next(i for i, p in enumerate(params) if p is current)
        moments = optimizer_state["state"].get(index)
        if moments:
            resized = dict(moments)
            for name in ("exp_avg", "exp_avg_sq"):  # bilinear keeps the second moments >= 0
                one = {key: moments[name]}
                resize_pos_embed(one, clip, interpolation="bilinear", antialias=False)
                resized[name] = one[key]
            optimizer_state = {**optimizer_state, "state": {**optimizer_state["state"], index: resized}}
        return model_state, optimizer_state

    def _switch_resolution(self, image_size: int, metrics: MetricsLog) -> None:
        """The resolution schedule's switch: checkpoint, then continue from that checkpoint at ``image_size``
        exactly as a resumed run would (model rebuilt at the new size, positional embeddings resized)."""
        path = self.save_checkpoint()
        state = read_checkpoint(path, self.cfg.method)
        old, self.state.image_size = self.state.image_size, image_size
        self.acc.free_memory()
        self._build(pretrained=None)
        self.load_checkpoint(path, state)
        self.state.image_size = image_size  # the checkpoint recorded the size it was trained at
        self.model.train()
        metrics.write({"event": "resolution", "step": self.state.step, "from": old, "to": image_size})

    # -- time and compute --------------------------------------------------------------------------------------
    def _start_clock(self) -> None:
        self._clock = time.perf_counter()

    def _stop_clock(self) -> None:
        if self._clock is not None:
            self.state.train_wall_s += time.perf_counter() - self._clock
            self._clock = None

    def _progress(self, step: int) -> float:
        """Schedule progress in [0, 1]: the larger of the time budget used and ``step / total_steps``."""
        by_steps = step / self.total_steps if self.total_steps else 0.0
        return max(self.time_used, by_steps)

    def _measure_time_used(self) -> None:
        """Update :attr:`time_used` from the training clock; rank 0's value, so every rank stops and schedules
        alike (collective with a time budget)."""
        if self.budget_s is None:
            return
        seconds = self.state.train_wall_s + (time.perf_counter() - self._clock if self._clock is not None else 0.0)
        used = torch.tensor([seconds / self.budget_s], dtype=torch.float64, device=self.acc.device)
        self.time_used = float(broadcast(used, from_process=0).item()) if self.world_size > 1 else float(used)

    def _mfu(self) -> float | None:
        """The run's model-FLOPs utilisation so far: training FLOPs / training wall time / measured peak."""
        total = self.flops_trained()
        if total is None or not self.peak_flops or not self.state.train_wall_s:
            return None
        return total / self.state.train_wall_s / self.peak_flops

    def _done(self) -> bool:
        return (self.total_steps is not None and self.state.step >= self.total_steps) or self.time_used >= 1.0

    def _add_step_flops(self, phase: Phase, counted: float | None) -> None:
        """Account one trained step of ``phase``; ``counted``: its FLOPs when this step was counted."""
        entry = self.state.flops["phases"].setdefault(phase.name, {"counted": 0.0, "counted_steps": 0, "steps": 0})
        entry["steps"] += 1
        if counted is not None:
            entry["counted"] += counted
            entry["counted_steps"] += 1
            self.state.flops["counted"] += counted
            self.state.flops["steps"] += 1

    def _phase_flops_per_step(self, phase: Phase) -> float | None:
        """Mean counted FLOPs of one step of ``phase`` (None before its first counted step)."""
        entry = self.state.flops["phases"].get(phase.name)
        return entry["counted"] / entry["counted_steps"] if entry and entry["counted_steps"] else None

    def flops_trained(self) -> float | None:
        """Training FLOPs of this process up to now: each phase's steps x its mean counted FLOPs per step (steps
        of a run resumed from a checkpoint without per-phase counters at the overall mean). None when no step
        was counted (``train.count_flops_every=0``)."""
        if not self.state.flops["steps"]:
            return None
        mean = self.state.flops["counted"] / self.state.flops["steps"]
        phases = self.state.flops["phases"].values()
        tracked = sum(entry["steps"] for entry in phases)
        return (sum(entry["steps"] * (entry["counted"] / entry["counted_steps"] if entry["counted_steps"] else mean)
                    for entry in phases) + (self.state.step - tracked) * mean)

    def flops_per_step(self) -> float | None:
        """Mean training FLOPs of one optimizer step on this process so far (forward + backward of both towers,
        counted by ``torch.utils.flop_counter.FlopCounterMode`` every ``train.count_flops_every`` steps and on the
        first step of every phase; see :meth:`flops_trained`)."""
        total = self.flops_trained()
        return total / self.state.step if total is not None and self.state.step else None

    # -- the loop ----------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to ``total_steps`` or the time budget; write checkpoints, final model and logs; return the
        final summary."""
        cfg, acc = self.cfg, self.acc
        ranks = gather_object([{"rank": self.rank, "pid": os.getpid()}])
        writer = None
        if self.is_main:
            self.run_folder.folder.mkdir(parents=True, exist_ok=True)
            self.run_folder.save_config(cfg)
            if cfg.train.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(self.run_folder.tensorboard_dir))
        metrics = MetricsLog(self.run_folder.metrics_path, writer, enabled=self.is_main)
        metrics.write({"event": "start", "step": self.state.step, "world_size": self.world_size, "ranks": ranks,
                       "device": str(acc.device), "method": cfg.method, "total_steps": self.total_steps,
                       "batches_per_epoch": self.batches_per_epoch,
                       "resumed_from": str(self.resumed_from) if self.resumed_from else None})
        self.model.train()
        batches = self._batches()
        bar = tqdm(total=self.total_steps, initial=self.state.step, disable=not self.is_main,
                   desc=f"train {cfg.method}", dynamic_ncols=True)
        window = {"images": 0, "captions": 0, "loss": [], "stats": {}}
        t_window = t_start = time.perf_counter()
        cpu_window = time.process_time()
        self._start_clock()
        self._measure_time_used()
        start_step = self.state.step
        last: dict[str, Any] = {}
        val: dict[str, float] = {}
        metrics.write({"event": "data", "step": self.state.step, "split": cfg.data.split, **self.data_audit})
        while not self._done():
            phase = self.phases.at(self._progress(self.state.step))
            if phase.image_size != self.state.image_size:
                self._stop_clock()
                self._switch_resolution(phase.image_size, metrics)
                self._start_clock()
            first_compiled = cfg.train.compile and self._fresh_build
            started = time.perf_counter()
            try:
                s = self.train_step(batches)
            except NonFiniteError as error:
                metrics.write({"event": "non_finite", "step": error.step, "what": error.what, "loss": str(error.loss)})
                metrics.close()
                bar.close()
                last_good = self.run_folder.find_checkpoint("latest")
                raise TrainError(f"{error}; the last good checkpoint is "
                                 f"{last_good or 'none (no checkpoint was written yet)'}: lower train.lr, set "
                                 "train.grad_clip, or check the data, then --resume latest") from None
            except BaseException:  # the message of a stopped run starts on its own line, after the bar
                bar.close()
                metrics.close()
                raise
            if first_compiled:  # torch.compile traces and generates code in the first step after a build
                self._fresh_build = False
                metrics.write({"event": "compile", "step": self.state.step, "image_size": self.state.image_size,
                               "first_step_s": time.perf_counter() - started})
            window["images"] += s["images"]
            window["captions"] += s["captions"]
            self._unsynced = [self._unsynced[0] + s["images"], self._unsynced[1] + s["captions"]]
            window["loss"].append(s["loss"])
            window["stats"] = {k: v for k, v in s.items() if k.startswith("agg_") or k == "lr"}
            if self.state.step % cfg.train.log_every == 0 or self._done():
                last = self._log(window, time.perf_counter() - t_window, time.process_time() - cpu_window, metrics,
                                 bar)
                window = {"images": 0, "captions": 0, "loss": [], "stats": {}}
                t_window, cpu_window = time.perf_counter(), time.process_time()
            bar.update(1)
            ckpt_due = cfg.train.checkpoint_every and self.state.step % cfg.train.checkpoint_every == 0
            val_due = cfg.data.val_split and cfg.train.eval_every and self.state.step % cfg.train.eval_every == 0
            if (ckpt_due or val_due) and not self._done():
                self._stop_clock()
                if ckpt_due:
                    self.save_checkpoint()
                if val_due:
                    val = self.validate(metrics)
                t_window, cpu_window = time.perf_counter(), time.process_time()
                self._start_clock()
        bar.close()
        self._stop_clock()
        wall = time.perf_counter() - t_start
        ckpt = self.save_checkpoint()
        if cfg.data.val_split:
            val = self.validate(metrics)
        result = self._finish(ckpt, last, val, wall, start_step)
        result["data"] = {"audit_missing": self.data_audit["missing"], "loader": self.loader.stats.as_dict(),
                          "per_shard": self.loader.stats.per_shard()}
        metrics.write({"event": "end", **result})
        if self.is_main:
            loader, audit = result["data"]["loader"], self.data_audit
            print(f"data: {loader['samples']} samples read, {loader['skipped']} skipped "
                  f"({', '.join(f'{k}: {loader[k]}' for k in SKIP_REASONS if loader[k]) or 'none'}); "
                  f"{audit['readable']} of {audit['expected']} samples of split {cfg.data.split!r} readable",
                  file=sys.stderr)
        metrics.close()
        return result

    def _log(self, window: dict[str, Any], seconds: float, cpu_seconds: float, metrics: MetricsLog,
             bar: Any) -> dict[str, Any]:
        """Reduce the window's counters over ranks and write one metrics record (collective).

        ``cpu_seconds``: this process's CPU time in the window (all its threads, not the loader's workers):
        ``images_per_cpu_s`` is the rate a machine shared with other work would give if this process had its
        cores to itself."""
        counts = torch.tensor([window["images"], window["captions"]], dtype=torch.float64, device=self.acc.device)
        counts = self.acc.reduce(counts, reduction="sum").cpu()
        loss = self.acc.reduce(torch.stack(window["loss"]).mean().to(self.acc.device), reduction="mean").item()
        self._sync_counts()
        seconds = max(seconds, 1e-9)
        record = {"step": self.state.step, "epoch": self.state.epoch, "loss": loss,
                  "logit_scale": self.acc.unwrap_model(self.model).clip.logit_scale.exp().item(),
                  "images_per_s": float(counts[0]) / seconds, "captions_per_s": float(counts[1]) / seconds,
                  "images_per_cpu_s": window["images"] / max(cpu_seconds, 1e-9),
                  "images_seen": self.state.images_seen, "captions_seen": self.state.captions_seen, **window["stats"]}
        postfix = {"loss": f"{loss:.4f}", "img_s": f"{record['images_per_s']:.1f}"}
        if self._window_flops and self.peak_flops:  # this process's FLOPs against this device's measured peak
            record["gflops_per_s"] = self._window_flops / seconds / 1e9
            record["mfu"] = self._window_flops / seconds / self.peak_flops
            postfix["mfu"] = f"{record['mfu']:.1%}"
        self._window_flops = 0.0
        metrics.write(record)
        bar.set_postfix(**postfix)
        return record

    def validate(self, metrics: MetricsLog) -> dict[str, float]:
        """Retrieval on ``data.val_split`` by :func:`wfa.eval.evaluate` (main process only).

        The ``val`` record holds the metrics as ``val/<key>`` (``agg_*`` with an aggregator) plus the run's
        ``train_wall_s`` (training loop time so far, without validation and checkpoints), ``images_seen``
        and ``captions_seen`` (all ranks). Collective: every rank calls it.
        """
        self._sync_counts()
        result: dict[str, float] = {}
        if self.is_main:
            inner = self.acc.unwrap_model(self.model)
            cfg, text = self.loader_cfg, inner.text_options
            with self.acc.autocast(), attention_kernels(self.acc.device, self.cfg.train.precision != "no"):
                result = evaluate(inner.clip, self.tokenizer, cfg.shards, self.cfg.data.val_split, inner.aggregator,
                                  device=self.acc.device, image_size=self.state.image_size, batch_size=cfg.batch_size,
                                  num_workers=cfg.num_workers, trim_text=text["trim"], text_buckets=text["buckets"],
                                  dedup_captions=text["dedup"]).metrics
            metrics.write({"event": "val", "step": self.state.step, "train_wall_s": self.state.train_wall_s,
                           "flops_per_step": self.flops_per_step(), "flops": self.flops_trained(),
                           "image_size": self.state.image_size,
                           "images_seen": self.state.images_seen, "captions_seen": self.state.captions_seen,
                           **{f"val/{k}": v for k, v in result.items()}})
        self.acc.wait_for_everyone()
        return result

    def _finish(self, ckpt: Path, last: dict[str, Any], val: dict[str, float], wall: float,
                start_step: int) -> dict[str, Any]:
        """Write the open_clip-format model and the aggregator; return the run summary."""
        inner = self.acc.unwrap_model(self.model)
        final, agg_path = self.run_folder.model_path, None
        if self.is_main:
            save_open_clip_checkpoint(inner.clip, final)
            if inner.aggregator is not None:
                agg_path = save_aggregator(inner.aggregator, self.run_folder.aggregator_path)
        self.acc.wait_for_everyone()
        steps_run = self.state.step - start_step
        return {"out": str(self.run_folder.folder), "method": self.cfg.method, "steps": self.state.step,
                "steps_run": steps_run,
                "epoch": self.state.epoch, "world_size": self.world_size, "final_loss": last.get("loss"),
                "images_seen": self.state.images_seen, "captions_seen": self.state.captions_seen, "wall_s": wall,
                "train_wall_s": self.state.train_wall_s, "flops_per_step": self.flops_per_step(),
                "train_flops": self.flops_trained(), "flops_phases": self.state.flops["phases"],
                "precision": self.cfg.train.precision, "compile": self.cfg.train.compile,
                "peak_flops": self.peak_flops, "mfu": self._mfu(), "image_size": self.state.image_size,
                "checkpoint": str(ckpt), "model_final": str(final),
                "aggregator": str(agg_path) if agg_path else None, "model_name": self.cfg.model.name,
                "in_chans": self.in_chans, "bands": self.bands, "val": val,
                "metrics_file": str(self.run_folder.metrics_path), "config_file": str(self.run_folder.config_path)}


def train(cfg: Config) -> dict[str, Any]:
    """Train one run described by ``cfg``; returns the summary (paths, final loss, counters, ...).

    Output in ``cfg.out``, a run folder (:class:`wfa.run.Run` reads it back): ``config.yaml`` (resolved),
    ``metrics.jsonl``, ``tensorboard/``, ``checkpoints/step_XXXXXX.pt``, ``model_final.pt`` (open_clip format) and,
    for a method with an aggregator, ``aggregator.safetensors``.
    """
    cfg = cfg.validate()
    try:
        if int(os.environ.get("RANK", "0")) != 0:  # rank 0 holds the run folder's lock for all ranks
            return Trainer(cfg).run()
        fresh = not os.path.lexists(cfg.out)
        with folder_lock(cfg.out):
            try:
                return Trainer(cfg).run()
            except BaseException:
                # a run that failed before its first checkpoint leaves nothing to resume: remove the folder it made,
                # so that it does not block the corrected run
                if fresh and not Run(cfg.out).checkpoints:
                    shutil.rmtree(cfg.out, ignore_errors=True)
                raise
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        last = Run(cfg.out).find_checkpoint("latest") if Path(cfg.out).is_dir() else None
        then = f"continue with --resume latest (from {last}, kept)" if last else "run it again"
        raise TrainError(f"disk full while writing {error.filename or cfg.out} ({error.strerror}); free space, then "
                         f"{then}") from None


def build_arg_parser(prog: str = "python -m wfa.trainer") -> argparse.ArgumentParser:
    """The parser of ``python -m wfa.trainer`` (same arguments as ``wfa train``)."""
    parser = argparse.ArgumentParser(prog=prog, description="Train a CLIP model with one of the wfa methods.")
    add_config_arguments(parser)
    return parser


def run_from_args(args: argparse.Namespace, prog: str = "wfa.trainer") -> int:
    """Train from parsed ``--config`` / ``--resume`` / ``key=value`` arguments; print the run's outputs on
    rank 0. Returns 2 on a configuration error (shared by ``python -m wfa.trainer`` and ``wfa train``)."""
    try:
        cfg = config_from_args(args)
    except ConfigError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    try:
        result = train(cfg)
    except WfaError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return err.exit_code
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: result.get(k) for k in ("out", "steps", "final_loss", "images_seen", "captions_seen",
                                                     "model_final", "aggregator", "val")}, indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``accelerate launch -m wfa.trainer --config FILE [--resume latest] [key=value ...]``."""
    return run_from_args(build_arg_parser().parse_args(argv))

if __name__ == "__main__":
    sys.exit(main())
