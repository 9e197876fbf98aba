"""Running a study: shards, the budget's plan, every (arm, seed) run resumably, records, summary and plots.

:func:`run_study` trains what is missing and then summarises; :func:`summarize_study` only reads the records.

- **Shards** (:func:`prepare_shards`): the study's shard folder, written once from its Karpathy caption file
  (``write_shards(..., reuse=True)``: a folder written from the same source is reused, one from another refused).
- **Plan** (``OUT/plan.json``, :func:`wfa.study.budget.plan`): each arm's steps. A FLOP or time budget probes every
  arm once; the plan is kept, so a resumed study trains exactly what it planned.
- **Runs** (:func:`run_one`): ``RUNS_DIR/<arm>-s<seed>/`` is a :class:`wfa.run.Run`. A finished run's record
  (``OUT/runs/<arm>-s<seed>.json``) is skipped when it was made with the same settings (an error otherwise); an
  interrupted run (same settings, stored beside it in ``study_run.json``) continues from its newest checkpoint. After
  training, the checkpoint with the best val ``mR_t2i`` and the final one are evaluated on test through
  :meth:`wfa.run.Run.evaluate`; checkpoints are then deleted unless ``keep_checkpoints``.
- **Processes**: ``jobs`` > 1 trains that many runs at once, each in a fresh process with ``threads`` torch threads
  (a process per run: accelerate keeps one precision per process).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any, Sequence

from wfa.errors import StudyError
from wfa.study.config import Arm, StudyConfig, arm_config
from wfa.study.records import (RESULT_VERSION, command_line, identity, machine_info, read_record, record_identity,
                               record_path, write_json)

PAIR_VIEWS = ("pairs", "distinct-pairs")
MARKER = "study_run.json"  # beside a run's files: the settings it was started with


def prepare_shards(study: StudyConfig) -> Path:
    """The study's shard folder, written from its caption file unless a data set of the same source is there."""
    path = Path(study.shards_path)
    source = study.shards
    if source is None or source.captions is None:
        if not (path / "index.json").is_file():
            raise StudyError(f"shards: {path} holds no index.json; write it with `wfa shards` or give the study's "
                             "shards a captions file and images folder")
        return path
    from wfa.data.karpathy import KarpathyReader, write_karpathy_subset
    from wfa.data.writer import write_shards

    captions, images = Path(study.path(source.captions)), Path(study.path(source.images))
    labels = Path(study.path(source.labels)) if source.labels else None
    if not captions.is_file() or not images.is_dir():
        raise StudyError(f"shards: {captions} or {images} not found (set WFA_SHARED_DATA, pass --data-dir, or fix "
                         "the study's shards)")
    if source.limit_images:
        captions = write_karpathy_subset(captions, source.limit_images, path.parent / f"{path.name}-subset.json")
    reader = KarpathyReader(captions, images, labels=labels if labels is not None and labels.is_file() else None)
    index = write_shards(reader, path, shard_size=source.shard_size, progress=False, reuse=True)
    sizes = ", ".join(f"{split} {info['num_samples']}" for split, info in index["splits"].items())
    print(f"shards: {path} ({sizes})")
    return path


def load_plan(study: StudyConfig, create: bool = True, started: float | None = None) -> dict[str, Any]:
    """Each arm's steps: for a steps budget, computed; for a FLOP or time budget, ``OUT/plan.json`` when it was made
    for this study's arms and budget, else a new plan (probes; a time budget counts from ``started``) written
    there. ``create=False`` (summaries): a missing plan of a probed budget is an error."""
    from wfa.study.budget import plan

    key = json.loads(json.dumps(_plan_key(study)))
    if study.budget.kind == "steps":
        return {"key": key, **plan(study, Path(study.runs_dir))}
    path = Path(study.out) / "plan.json"
    stored = None
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            stored = None
        if isinstance(stored, dict) and stored.get("key") == key:
            return stored
    if not create:
        raise StudyError(f"{path}: no plan of this study's arms and budget (each arm's steps, from its probes); run "
                         "the study (without --summarize) first")
    probes = {}  # an arm probed before with the same settings keeps its probe (a study that gained arms)
    if isinstance(stored, dict) and isinstance(stored.get("key"), dict):
        for name, arm_key in key["arms"].items():
            if stored["key"].get("arms", {}).get(name) == arm_key and "probe" in stored.get("arms", {}).get(name, {}):
                probes[name] = stored["arms"][name]["probe"]
    made = {"key": key, **plan(study, Path(study.runs_dir), started, probes)}
    write_json(path, made)
    for name, entry in made["arms"].items():
        print(f"[plan] {name}: {entry['steps']} steps ({entry['predicted_flops'] / 1e12:.4f} TFLOP predicted; "
              f"{entry['probe']['flops_per_step'] / 1e9:.2f} GFLOP/step)", flush=True)
    return made


def _plan_key(study: StudyConfig) -> dict[str, Any]:
    """What a plan depends on: the arms' configs (at probe length) and the budget."""
    from wfa.config import config_to_dict

    probe = study.budget.probe_steps
    seeds = study.seeds if study.budget.kind == "minutes" else None  # a time budget is split over the seeds
    return {"budget": {k: v for k, v in vars(study.budget).items() if k != "reference"},
            "reference": vars(study.budget.reference) if study.budget.reference else None, "seeds": seeds,
            "arms": {a.name: identity(study.dataset, None, config_to_dict(arm_config(study, a, 0, probe, Path("."))))
                     for a in study.arms}}


def eval_every(study: StudyConfig, steps: int) -> int | None:
    """The validation interval of a run of ``steps`` steps: ``budget.validations`` evenly, else the base's."""
    validations = study.budget.validations
    return max(1, math.ceil(steps / validations)) if validations else None


def run_config(study: StudyConfig, arm: Arm, seed: int, plan: dict[str, Any]):
    """The run config of (``arm``, ``seed``) under ``plan``."""
    steps = plan["arms"][arm.name]["steps"]
    return arm_config(study, arm, seed, steps, Path(study.runs_dir) / f"{arm.name}-s{seed}", eval_every(study, steps))


def expected_identity(study: StudyConfig, arm: Arm, seed: int, plan: dict[str, Any]) -> dict[str, Any]:
    """The :func:`wfa.study.records.identity` a record of (``arm``, ``seed``) of this study must have."""
    from wfa.config import config_to_dict

    limit = study.shards.limit_images if study.shards else None
    return identity(study.dataset, limit, config_to_dict(run_config(study, arm, seed, plan)))


def run_one(study: StudyConfig, arm: Arm, seed: int, plan: dict[str, Any], keep_checkpoints: bool = False
            ) -> dict[str, Any]:
    """Train (or continue) one run, select on val, evaluate on test; write its record and return it."""
    import torch

    from wfa.config import config_to_dict
    from wfa.methods import create_method
    from wfa.run import Run
    from wfa.study.weights import weights_record
    from wfa.trainer import train

    cfg = run_config(study, arm, seed, plan)
    run_dir, out = Path(cfg.out), Path(study.out)
    wanted = expected_identity(study, arm, seed, plan)
    marker = run_dir / MARKER
    try:  # an unreadable marker is treated like another study's folder
        same = json.loads(marker.read_text(encoding="utf-8")) == json.loads(json.dumps(wanted))
    except (OSError, UnicodeDecodeError, ValueError):
        same = False
    interrupted = same and bool(Run(run_dir).checkpoints)
    if run_dir.exists() and not interrupted:  # another study's or a checkpoint-less run: start clean
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(wanted), encoding="utf-8")
    if interrupted:  # continue exactly from its newest checkpoint (the loop drops the later metrics records)
        cfg.resume = "latest"
    load_before = os.getloadavg()
    started = time.perf_counter()
    summary = train(cfg)
    run = Run.open(run_dir)
    curve = run.val_curve()
    if not curve:
        raise StudyError(f"{run.metrics_path} has no validation record: the study needs data.val_split")
    from wfa.study.analysis import best_val_point

    best, final = best_val_point(curve), curve[-1]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shards = study.shards_path if study.shards else None
    test_best = run.evaluate("test", best["step"], shards=shards, device=device, curve_k=20)
    test_final = test_best if best["step"] == final["step"] else run.evaluate("test", final["step"], shards=shards,
                                                                             device=device, curve_k=20)
    weights_file = None
    if test_best.aggregator == "attention":  # a learned aggregator: keep what it weighs, for the ablations
        weights_file = write_json(out / "weights" / f"{arm.name}-s{seed}.json",
                                  weights_record(test_best.encoded, arm.name, seed, best["step"]))
    if not (keep_checkpoints or study.keep_checkpoints):
        shutil.rmtree(run.checkpoints_dir, ignore_errors=True)
    entry = plan["arms"][arm.name]
    record = {
        "version": RESULT_VERSION, "study": study.name, "arm": arm.name, "group": arm.group, "seed": seed,
        "method": cfg.method, "dataset": study.dataset,
        "limit_images": study.shards.limit_images if study.shards else None,
        "base": study.source, "overrides": [*study.set, *arm.overrides],
        "config": config_to_dict(run.config), "precision": cfg.train.precision, "compile": cfg.train.compile,
        "budget": {"steps": summary["steps"], "batch_size": cfg.train.batch_size,
                   "sample": "(image, caption) pair" if create_method(cfg.method).view in PAIR_VIEWS
                   else "image with its captions",
                   "flops": plan.get("budget_flops"), "predicted_flops": entry.get("predicted_flops"),
                   "kind": study.budget.kind},
        "train_wall_s": final["train_wall_s"], "loop_wall_s": summary["wall_s"],
        "flops_per_step": summary["flops_per_step"], "train_flops": summary["train_flops"],
        "flops_phases": summary["flops_phases"], "mfu": summary.get("mfu"),
        "run_wall_s": time.perf_counter() - started,
        "images_encoded": summary["images_seen"], "captions_encoded": summary["captions_seen"],
        "best_val": {"step": best["step"], "train_wall_s": best["train_wall_s"], "val_mR_t2i": best["mR_t2i"],
                     "test": test_best.metrics, "recall_curve": test_best.recall_curve()},
        "final": {"step": final["step"], "val_mR_t2i": final["mR_t2i"], "test": test_final.metrics,
                  "recall_curve": test_final.recall_curve()},
        "val_curve": curve, "final_loss": summary["final_loss"], "resumed": interrupted,
        "weights_file": str(weights_file) if weights_file else None, "run_dir": str(run_dir),
        "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
        "torch_threads": torch.get_num_threads(),
    }
    write_json(record_path(out, arm.name, seed), record)
    return record


def _run_task(study: StudyConfig, arm: Arm, seed: int, plan: dict[str, Any], keep: bool, threads: int) -> str:
    """One run in a worker process (``threads`` torch threads); returns its one-line result."""
    import torch

    torch.set_num_threads(threads)
    return _done_line(run_one(study, arm, seed, plan, keep))


def _done_line(record: dict[str, Any]) -> str:
    return (f"[done] {record['arm']} seed {record['seed']}: test mR_t2i {record['best_val']['test']['mR_t2i']:.2f} "
            f"(best val step {record['best_val']['step']} of {record['budget']['steps']}), train wall "
            f"{record['train_wall_s']:.0f} s")


def run_study(study: StudyConfig, *, jobs: int = 1, threads: int = 1, only_arms: Sequence[str] | None = None,
              keep_checkpoints: bool = False, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train every missing (arm, seed) run of ``study`` (seed by seed, arms in order; ``only_arms``: a subset), in
    ``jobs`` processes of ``threads`` torch threads, then summarise. Returns the summary."""
    import torch

    started = time.monotonic()
    torch.set_num_threads(threads)
    arms = [study.arm(name) for name in only_arms] if only_arms else study.arms
    prepare_shards(study)
    plan = load_plan(study, started=started)
    todo = []
    for seed in study.seeds:
        for arm in arms:
            path = record_path(study.out, arm.name, seed)
            if path.is_file():
                if record_identity(read_record(path)) != json.loads(json.dumps(expected_identity(study, arm, seed,
                                                                                                 plan))):
                    raise StudyError(f"{path} was made with other settings than this study's arm {arm.name}; give "
                                     "the study another out: or delete the record")
                print(f"[skip] {arm.name} seed {seed}: {path} exists", flush=True)
                continue
            todo.append((arm, seed))
    if jobs <= 1:
        for arm, seed in todo:
            cfg = run_config(study, arm, seed, plan)
            print(f"[run] {arm.name} seed {seed}: {cfg.train.steps} steps x {cfg.train.batch_size}", flush=True)
            print(_done_line(run_one(study, arm, seed, plan, keep_checkpoints)), flush=True)
    elif todo:
        context = get_context("forkserver" if "forkserver" in get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context, max_tasks_per_child=1) as pool:
            futures = [pool.submit(_run_task, study, arm, seed, plan, keep_checkpoints, threads) for arm, seed in todo]
            for arm, seed in todo:
                print(f"[run] {arm.name} seed {seed}: {plan['arms'][arm.name]['steps']} steps (queued)", flush=True)
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                for future in futures:
                    future.cancel()
                raise failed[0].exception()
            for future in futures:
                print(future.result(), flush=True)
    return summarize_study(study, plan=plan, argv=argv)


def collect_records(study: StudyConfig, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The records in ``OUT/runs`` made with this study's settings, arm by arm in the study's order, every seed an
    arm has; the others are counted and named on stderr. :class:`StudyError` when none matches."""
    folder = Path(study.out) / "runs"
    found = [read_record(p) for p in sorted(folder.glob("*-s*.json"))]
    kept, other = [], []
    for arm in study.arms:
        for record in sorted((r for r in found if r.get("arm") == arm.name), key=lambda r: r["seed"]):
            wanted = json.loads(json.dumps(expected_identity(study, arm, record["seed"], plan)))
            if record_identity(record) == wanted:
                kept.append({**record, "group": arm.group})  # the study's grouping, also for older records
            else:
                other.append(record)
    names = {study_arm.name for study_arm in study.arms}
    other += [r for r in found if r.get("arm") not in names]
    if other:
        print(f"[summarize] {len(other)} run record(s) in {folder} left out (another arm or other settings): "
              + ", ".join(f"{r.get('arm')}-s{r.get('seed')}" for r in other), file=sys.stderr)
    if not kept:
        raise StudyError(f"no run record in {folder} was made with this study's settings")
    print(f"[summarize] {len(kept)} run record(s): " + ", ".join(f"{r['arm']}-s{r['seed']}" for r in kept))
    return kept


def goal_reference(study: StudyConfig) -> list[dict[str, Any]] | None:
    """The runs of another study that set the goal's target (``goal.reference``), checked to share the protocol
    (data set, model, input size, batch) with this study's reference arm; None when the goal is this study's."""
    goal = study.goal
    if goal is None or goal.reference is None:
        return None
    folder = Path(goal.reference) / "runs"
    runs = [read_record(p) for p in sorted(folder.glob(f"{goal.arm}-s*.json"))]
    runs = [r for r in runs if r.get("arm") == goal.arm]
    if not runs:
        raise StudyError(f"goal.reference: no run records of {goal.arm} in {folder}")
    mine = arm_config(study, study.arm(study.reference_arm) if any(a.name == study.reference_arm
                                                                    for a in study.arms) else study.arms[0],
                      study.seeds[0], 1, Path("."))
    wanted = {"dataset": study.dataset, "model": mine.model.name, "image_size": mine.data.image_size,
              "batch_size": mine.train.batch_size}
    for r in runs:
        have = {"dataset": r["dataset"], "model": r["config"]["model"]["name"],
                "image_size": r["config"]["data"]["image_size"], "batch_size": r["config"]["train"]["batch_size"]}
        if have != wanted:
            differ = sorted(k for k in wanted if wanted[k] != have[k])
            raise StudyError(f"goal.reference: {folder} ({goal.arm}-s{r['seed']}) differs from this study in "
                             f"{differ}: a goal compares runs of one protocol")
    return runs


def study_summary(study: StudyConfig, plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary (:func:`wfa.study.analysis.summarize`) of the study's matching records and its goal; writes
    nothing."""
    from wfa.study.analysis import summarize

    plan = plan if plan is not None else load_plan(study, create=False)
    goal = None
    if study.goal is not None:
        goal = {"arm": study.goal.arm, "fraction": study.goal.fraction, "metrics": study.goal.metrics,
                "tolerance": study.goal.tolerance}
    return summarize(collect_records(study, plan), study.dataset, study.reference_arm, goal, goal_reference(study))


def summarize_study(study: StudyConfig, plan: dict[str, Any] | None = None,
                    argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Summarise the study's records: ``OUT/summary.json``, ``OUT/summary.md`` (also printed) and the plots."""
    from wfa.study.analysis import markdown_summary
    from wfa.study.plots import plot_quality, plot_recall

    plan = plan if plan is not None else load_plan(study, create=False)
    summary = study_summary(study, plan)
    out = Path(study.out)
    payload = {"command": command_line(argv), "machine": machine_info(), "study": study.name,
               "config_file": study.source, "plan": {k: v for k, v in plan.items() if k != "key"}, **summary}
    write_json(out / "summary.json", payload)
    table = markdown_summary(summary)
    (out / "summary.md").write_text(table + "\n", encoding="utf-8")
    plot_recall(summary, out / "recall_at_k.png")
    plot_quality(summary, out / "time_to_quality.png")
    chance = summary["chance"]
    print(f"\nchance: t2i R@1/5/10 = {chance['t2i_r1']:.2f}/{chance['t2i_r5']:.2f}/{chance['t2i_r10']:.2f} % "
          f"(k / N_test, N_test = {summary['num_test_images']}), mR = {chance['mR']:.2f} %\n")
    print(table)
    return summary
