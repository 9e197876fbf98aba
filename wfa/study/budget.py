"""Compute-matched budgets: measure what a step of each arm costs with a short probe, then give every arm the
number of steps that spends the study's FLOP budget.

A **probe** trains an arm for a few steps (``budget.probe_steps``) in a scratch folder, once per phase of its
schedule (:meth:`wfa.phases.Phases.fractions`: a resolution schedule's low and full size, patch dropout on and off
for ``train.unmasked_fraction``), with the phase's settings fixed. Every other step runs under
``torch.utils.flop_counter`` (its FLOPs) and the steps between are timed (seconds per step, from the log records of
``metrics.jsonl``). An arm's predicted training FLOPs for ``S`` steps are then the sum over its phases of the steps
the loop gives that phase (:meth:`wfa.phases.Phases.steps`) times the phase's FLOPs per step; its steps are the
most whose prediction stays within the budget.

The budget is ``flops`` per run, a ``fraction`` of a reference's run FLOPs (this study's arm trained N steps,
probed, or another study's recorded runs), or ``minutes`` for the whole study: the time left after the probes,
less a quarter kept for validation, test evaluation and start-up, is split over arms x seeds so that every run
spends the same FLOPs (arm ``a`` at its measured rate ``r_a`` FLOP/s: FLOPs per run = time / (seeds x sum 1/r_a)).
"""
from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from wfa.errors import StudyError
from wfa.phases import Phases
from wfa.study.config import StudyConfig

#: share of a ``minutes`` budget kept for validation, test evaluation and process start-up
EVALUATION_SHARE = 0.25


def schedule(cfg) -> Phases:
    """The phases of a run config's schedule."""
    return Phases(cfg.data.image_size, cfg.data.low_res_size, cfg.data.low_res_fraction, cfg.model.patch_dropout,
                  cfg.train.unmasked_fraction)


def probe(cfg, workdir: Path, steps: int) -> dict[str, Any]:
    """Measure one arm (its run config ``cfg``): per phase, the mean FLOPs of the counted steps and the median
    seconds of the others. Returns ``{"phases": [...], "flops_per_step", "seconds_per_step"}`` (the last two
    weighted by each phase's share of the run)."""
    from wfa.run import Run
    from wfa.trainer import train

    costs = []
    for phase, fraction in schedule(cfg).fractions():
        folder = workdir / phase.name
        shutil.rmtree(folder, ignore_errors=True)
        probe_cfg = replace(
            cfg, out=str(folder), resume=None,
            data=replace(cfg.data, image_size=phase.image_size, low_res_size=None, low_res_fraction=0.0,
                         val_split=None),
            model=replace(cfg.model, patch_dropout=phase.patch_dropout),
            train=replace(cfg.train, steps=steps, max_minutes=None, unmasked_fraction=0.0, count_flops_every=2,
                          log_every=1, eval_every=0, checkpoint_every=0, keep_checkpoints=1, tensorboard=False,
                          warmup_steps=0, compile=False))
        summary = train(probe_cfg)
        seconds = step_seconds(Run(folder).metrics(), counted_every=2)
        shutil.rmtree(folder, ignore_errors=True)
        if not summary.get("flops_per_step") or not seconds:
            raise StudyError(f"probe of phase {phase.name} gave no FLOP count or timing ({steps} steps); raise "
                             "budget.probe_steps")
        costs.append({"phase": phase.name, "image_size": phase.image_size, "patch_dropout": phase.patch_dropout,
                      "fraction": fraction, "flops_per_step": summary["flops_per_step"],
                      "seconds_per_step": statistics.median(seconds)})
    return {"phases": costs, "flops_per_step": sum(c["fraction"] * c["flops_per_step"] for c in costs),
            "seconds_per_step": sum(c["fraction"] * c["seconds_per_step"] for c in costs), "probe_steps": steps}


def step_seconds(records: list[dict[str, Any]], counted_every: int) -> list[float]:
    """Seconds of every uncounted step of a run logged at every step (``train.log_every=1``): a log record's images
    over its images per second, for the steps ``train.count_flops_every`` did not count (their FLOP counting slows
    them down); the first step (start-up) is left out."""
    logged = [r for r in records if "images_per_s" in r and "step" in r]
    seconds, before = [], 0
    for record in logged:
        images = record["images_seen"] - before
        before = record["images_seen"]
        index = record["step"] - 1  # the step this record closes
        if index > 0 and index % counted_every and record["images_per_s"] > 0:
            seconds.append(images / record["images_per_s"])
    return seconds


def predicted_flops(cfg, costs: dict[str, Any], steps: int) -> float:
    """Training FLOPs of ``steps`` steps of the arm ``cfg`` from its probe ``costs``: each phase's steps (as the loop
    assigns them) times its FLOPs per step."""
    per_phase = {c["phase"]: c["flops_per_step"] for c in costs["phases"]}
    return sum(n * per_phase[phase.name] for phase, n in schedule(cfg).steps(steps).items())


def steps_for(cfg, costs: dict[str, Any], budget_flops: float) -> int:
    """The most steps of the arm ``cfg`` whose predicted FLOPs stay within ``budget_flops`` (at least 1)."""
    steps = max(1, int(budget_flops // costs["flops_per_step"]))
    while steps > 1 and predicted_flops(cfg, costs, steps) > budget_flops:
        steps -= 1
    while predicted_flops(cfg, costs, steps + 1) <= budget_flops:
        steps += 1
    return steps


def plan(study: StudyConfig, workdir: Path, started: float | None = None,
         known: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each arm's steps under the study's budget: ``{"budget": ..., "budget_flops": F or None, "arms": {arm: {"steps",
    "predicted_flops", "probe"}}}``. A steps budget needs no probe; the FLOP budgets probe every arm not in
    ``known`` (earlier probes by arm; the reference arm too, for a fraction of its probed run). ``started``: when
    the study began (a minutes budget counts from it)."""
    from wfa.study.config import arm_config

    budget = study.budget
    if budget.kind == "steps":
        arms = {arm.name: {"steps": budget.steps or _base_steps(study, arm)} for arm in study.arms}
        return {"budget": {"steps": budget.steps}, "budget_flops": None, "arms": arms}
    started = started if started is not None else time.monotonic()
    probes = dict(known or {})
    for arm in study.arms:
        if arm.name in probes:
            continue
        cfg = arm_config(study, arm, 0, steps=budget.probe_steps, run_dir=workdir)  # probes at seed 0
        print(f"[probe] {arm.name}: {budget.probe_steps} steps per phase", flush=True)
        probes[arm.name] = probe(cfg, workdir / "probes" / arm.name, budget.probe_steps)
    shutil.rmtree(workdir / "probes", ignore_errors=True)
    if budget.flops is not None:
        flops = budget.flops
    elif budget.fraction is not None:
        flops = budget.fraction * reference_flops(study, workdir, probes)
    else:
        elapsed = time.monotonic() - started
        left = (budget.minutes * 60 - elapsed) * (1 - EVALUATION_SHARE)
        if left <= 0:
            raise StudyError(f"budget.minutes={budget.minutes:g}: the probes alone took {elapsed / 60:.1f} min; give "
                             "more minutes")
        rates = [probes[a.name]["flops_per_step"] / probes[a.name]["seconds_per_step"] for a in study.arms]
        flops = left / (len(study.seeds) * sum(1 / r for r in rates))
    arms = {}
    for arm in study.arms:
        cfg = arm_config(study, arm, 0, steps=1, run_dir=workdir)
        steps = steps_for(cfg, probes[arm.name], flops)
        arms[arm.name] = {"steps": steps, "predicted_flops": predicted_flops(cfg, probes[arm.name], steps),
                          "probe": probes[arm.name]}
    return {"budget": {k: getattr(budget, k) for k in ("flops", "fraction", "minutes") if getattr(budget, k)},
            "reference": vars(budget.reference) if budget.reference else None, "budget_flops": flops, "arms": arms}


def reference_flops(study: StudyConfig, workdir: Path, probes: dict[str, Any]) -> float:
    """The run FLOPs a fractional budget is a fraction of: the mean recorded ``train_flops`` of the reference arm's
    runs in another study's folder, or this study's reference arm trained ``reference.steps`` steps (probed)."""
    from wfa.study.config import arm_config
    from wfa.study.records import read_record

    reference = study.budget.reference
    if reference.study is not None:
        runs = [read_record(p) for p in sorted((Path(reference.study) / "runs").glob(f"{reference.arm}-s*.json"))]
        runs = [r for r in runs if r.get("arm") == reference.arm and r.get("train_flops")]
        if not runs:
            raise StudyError(f"budget.reference: no run records of {reference.arm} with FLOPs in "
                             f"{Path(reference.study) / 'runs'}")
        return sum(r["train_flops"] for r in runs) / len(runs)
    arm = study.arm(reference.arm)
    cfg = arm_config(study, arm, 0, steps=reference.steps, run_dir=workdir)
    return predicted_flops(cfg, probes[arm.name], reference.steps)


def _base_steps(study: StudyConfig, arm) -> int:
    """The steps of a study without a budget: the base config's ``train.steps``."""
    from wfa.config import config_from_dict

    steps = config_from_dict(study.base, [*study.set, *arm.overrides], validate=False).train.steps
    if not steps:
        raise StudyError("the study has no budget and its base config no train.steps: give budget: {steps: N}")
    return steps
