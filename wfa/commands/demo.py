"""Run the main job end to end on a fresh machine: synthetic shards, a short bleu training run, evaluation.

The training run is ``configs/demo.yaml`` (packaged with wfa) with ``out`` and ``data.shards`` set to --out, the
options below and any ``key=value`` overrides applied. Writes into --out (default wfa-demo/): shards/ (unless
--data is given), the training run (config.yaml, metrics.jsonl, tensorboard/, model_final.pt -- open_clip format
-- and aggregator.safetensors), report.json, report.md and the plots. The whole demo keeps to --minutes: writing
the shards and the evaluation take what they take, and training gets the rest as a time budget
(``train.max_minutes``: the loop stops at it and the learning rate decays over it), so a busy machine trains
fewer steps instead of running late. --steps trains a fixed number of steps instead.

  wfa demo --out wfa-demo
  wfa demo --out wfa-demo method=multipos train.lr=5e-4
  wfa eval --checkpoint wfa-demo/model_final.pt --shards wfa-demo/shards --split test
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

#: the demo's training run; configs/demo.yaml in a checkout is a link to it
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``wfa demo`` options."""
    parser.add_argument("--out", default="wfa-demo", help="output directory (default: wfa-demo)")
    parser.add_argument("--data", help="existing shard directory to use instead of writing synthetic shards")
    parser.add_argument("--minutes", type=float, default=5.0,
                        help="time budget of the whole demo in minutes (default: 5); training gets what the shards "
                             "and the evaluation leave")
    parser.add_argument("--steps", type=int, help="train exactly this many steps instead of a time budget")
    parser.add_argument("--num-images", type=int, default=2000, help="synthetic images to write (default: 2000)")
    parser.add_argument("--image-size", type=int, help="model input size in pixels (default: the config's, 64)")
    parser.add_argument("--batch-size", type=int, help="default: the config's, 32")
    parser.add_argument("--lr", type=float, help="default: the config's, 1e-3")
    parser.add_argument("--model", help="model architecture (default: the config's, wfa-vit-tiny)")
    parser.add_argument("--split", default="test", help="split evaluated after training (default: test)")
    parser.add_argument("--seed", type=int, help="default: the config's, 0")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep the resumable training state in OUT/checkpoints (removed by default: "
                             "model_final.pt and aggregator.safetensors are all the demo needs)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="any other key of configs/demo.yaml, e.g. method=multipos train.lr=5e-4")


def write_synthetic_shards(out: Path, num_images: int, image_size: int, seed: int) -> dict[str, Any]:
    """Write the synthetic dataset to ``out`` (reused when a data set of the same source is already there)."""
    from wfa.data.synthetic import SyntheticReader
    from wfa.data.writer import write_shards

    reader = SyntheticReader(num_images=num_images, seed=seed, image_size=image_size)
    index = write_shards(reader, out, shard_size=max(50, num_images // 8), reuse=True)
    print(f"synthetic shards in {out}: " + ", ".join(f"{s} {v['num_samples']}" for s, v in index["splits"].items()))
    return index


def demo_config(out: Path, shards: Path, args: argparse.Namespace, steps: int | None = None,
                max_minutes: float | None = None):
    """The demo's training run: ``configs/demo.yaml`` with its output and shards in ``out``/``shards``, the
    command's options and overrides, and a cosine schedule over ``steps`` or over the time budget ``max_minutes``."""
    from wfa.config import load_config

    options = {"model.name": args.model, "data.image_size": args.image_size, "train.batch_size": args.batch_size,
               "train.lr": args.lr, "seed": args.seed}
    overrides = [f"out={out}", f"data.shards={shards}", *list(args.overrides),
                 *(f"{key}={value}" for key, value in options.items() if value is not None)]
    if steps:  # a short fixed run warms up and logs within its steps
        base = load_config(DEMO_CONFIG, overrides).train
        overrides += [f"train.steps={steps}", f"train.warmup_steps={min(base.warmup_steps, steps // 10)}",
                      f"train.log_every={max(1, min(base.log_every, steps // 10))}"]
    elif max_minutes:
        overrides += [f"train.max_minutes={max_minutes}", "train.steps=null"]
    return load_config(DEMO_CONFIG, overrides)


def training_minutes(total_minutes: float, elapsed_s: float) -> float:
    """The training budget: what is left of ``total_minutes`` after ``elapsed_s`` and a reserve for the
    evaluation and start-up (a tenth of the total, at least 20 s); never under 0.25 minutes."""
    reserve_s = max(20.0, 6.0 * total_minutes)
    return max(0.25, (total_minutes * 60 - elapsed_s - reserve_s) / 60)


def check_arguments(args: argparse.Namespace) -> None:
    """Everything that can be checked before any work: the numbers, ``--data`` and a writable ``--out``.
    Raises :class:`DemoError` (exit 2)."""
    from wfa.commands.paths import output_folder_problem
    from wfa.config import ConfigError
    from wfa.errors import DemoError

    problems = []
    if not (math.isfinite(args.minutes) and args.minutes > 0):
        problems.append(f"--minutes {args.minutes} must be a positive number of minutes")
    if args.steps is not None and args.steps < 1:
        problems.append(f"--steps {args.steps} must be >= 1")
    for option, value in (("--image-size", args.image_size), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            problems.append(f"{option} {value} must be >= 1")
    if problems:
        raise DemoError("; ".join(problems)).with_exit_code(2)
    try:
        cfg = demo_config(Path(args.out), Path(args.data or Path(args.out) / "shards"), args)
    except ConfigError as error:
        raise DemoError(f"{DEMO_CONFIG.name} with these options: {error}").with_exit_code(2) from None
    if not args.data:
        n_train = round(0.8 * args.num_images)  # SyntheticReader's 80/10/10 split
        if args.num_images < 10:
            problems.append(f"--num-images {args.num_images} must be >= 10 (80/10/10 train/val/test)")
        elif n_train < cfg.train.batch_size:
            problems.append(f"--num-images {args.num_images} gives {n_train} training images, fewer than one "
                            f"batch (--batch-size {cfg.train.batch_size})")
    elif not (Path(args.data) / "index.json").is_file():
        problems.append(f"--data {args.data}: no index.json there; write shards with `wfa shards` first")
    problem = output_folder_problem(args.out, "--out")
    if problem is not None:
        problems.append(problem)
    if problems:
        raise DemoError("; ".join(problems)).with_exit_code(2)


def run(args: argparse.Namespace) -> int:
    """Run ``wfa demo``; returns the exit code."""
    import shutil

    import torch

    from wfa.errors import TrainError
    from wfa.eval.report import write_json
    from wfa.run import Run
    from wfa.trainer import train

    check_arguments(args)
    t0 = time.perf_counter()
    out = Path(args.out)
    held = Run(out).held_files()
    if held:  # checked before any work: a demo never trains over an earlier one
        raise TrainError(f"--out {out} already holds a demo run ({', '.join(held)}); give another --out or "
                         "remove the folder")
    out.mkdir(parents=True, exist_ok=True)
    shards = Path(args.data) if args.data else out / "shards"
    if not args.data:
        base = demo_config(out, shards, args)
        write_synthetic_shards(shards, args.num_images, base.data.image_size, base.seed)
    if args.steps:
        cfg = demo_config(out, shards, args, steps=args.steps)
    else:
        budget = training_minutes(args.minutes, time.perf_counter() - t0)
        print(f"training for {budget:.2f} min (the rest of the {args.minutes:g} min goes to shards and evaluation)")
        cfg = demo_config(out, shards, args, max_minutes=budget)
    summary = train(cfg)
    steps = summary["steps"]
    run = Run.open(out)
    if not args.keep_checkpoints:
        shutil.rmtree(run.checkpoints_dir, ignore_errors=True)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    aggregator = str(run.aggregator_path) if run.aggregator_path.is_file() else None
    info = {"name": cfg.model.name, "checkpoint": str(run.model_path), "image_size": cfg.data.image_size,
            "bands": run.config.model.bands, "aggregator": aggregator}
    train_info = {k: summary.get(k) for k in ("method", "steps", "final_loss", "images_seen", "captions_seen",
                                               "wall_s", "model_final", "aggregator", "config_file")}
    report = run.evaluate(args.split, shards=shards, device=device, label_zeroshot=True, progress=True).write(
        out / "report.json", title=f"wfa demo: {cfg.model.name}, method {cfg.method}, {steps} steps",
        extra={"model": info, "train": train_info})
    metrics = report[args.split]
    chance = report["chance"]
    ratio = metrics["mR_t2i"] / chance["mR_t2i"] if chance["mR_t2i"] else float("inf")
    total = time.perf_counter() - t0
    report["demo"] = {"mR_t2i_over_chance": ratio, "beats_chance_5x": bool(ratio >= 5.0), "total_wall_s": total}
    write_json({k: v for k, v in report.items() if k != "files"}, out / "report.json")
    print(f"{args.split} mR_t2i {metrics['mR_t2i']:.2f}% vs chance {chance['mR_t2i']:.2f}% "
          f"(t2i R@k chance = k/N, N = {report[f'num_{args.split}_images']}): {ratio:.1f}x chance; "
          f"total {total / 60:.1f} min")
    print(f"model: {run.model_path} (open_clip: import wfa.model; open_clip.create_model_and_transforms("
          f"{cfg.model.name!r}, pretrained={str(run.model_path)!r}))")
    return 0
