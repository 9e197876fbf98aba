"""Run the main job end to end on a fresh machine: synthetic shards, a short bleu training run, evaluation.

Writes into --out (default wfa-demo/): shards/ (unless --data is given), the training run (config.yaml,
metrics.jsonl, tensorboard/, model_final.pt -- open_clip format -- and aggregator.safetensors), report.json,
report.md and the plots. The whole demo keeps to --minutes: writing the shards and the evaluation take what
they take, and training gets the rest as a time budget (``train.max_minutes``: the loop stops at it and the
learning rate decays over it), so a busy machine trains fewer steps instead of running late. --steps trains
a fixed number of steps instead.

  wfa demo --out wfa-demo
  wfa eval --checkpoint wfa-demo/model_final.pt --shards wfa-demo/shards --split test
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

DEMO_MODEL = "wfa-vit-tiny"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``wfa demo`` options."""
    parser.add_argument("--out", default="wfa-demo", help="output directory (default: wfa-demo)")
    parser.add_argument("--data", help="existing shard directory to use instead of writing synthetic shards")
    parser.add_argument("--minutes", type=float, default=5.0,
                        help="time budget of the whole demo in minutes (default: 5); training gets what the shards "
                             "and the evaluation leave")
    parser.add_argument("--steps", type=int, help="train exactly this many steps instead of a time budget")
    parser.add_argument("--num-images", type=int, default=2000, help="synthetic images to write (default: 2000)")
    parser.add_argument("--image-size", type=int, default=64, help="model input size in pixels (default: 64)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--model", default=DEMO_MODEL, help=f"model architecture (default: {DEMO_MODEL})")
    parser.add_argument("--split", default="test", help="split evaluated after training (default: test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep the resumable training state in OUT/checkpoints (removed by default: "
                             "model_final.pt and aggregator.safetensors are all the demo needs)")


def write_synthetic_shards(out: Path, num_images: int, image_size: int, seed: int) -> dict[str, Any]:
    """Write the synthetic dataset to ``out`` (reused when an index of the same source is already there)."""
    from wfa.data.synthetic import SyntheticReader
    from wfa.data.writer import write_shards

    reader = SyntheticReader(num_images=num_images, seed=seed, image_size=image_size)
    index_path = out / "index.json"
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        if index.get("source") == json.loads(json.dumps(reader.source)):
            print(f"reusing synthetic shards in {out} ({index['num_samples']} images)")
            return index
    shard_size = max(50, num_images // 8)
    index = write_shards(reader, out, shard_size=shard_size)
    print(f"wrote {index['written']} synthetic images ({index['rejected']} rejected) to {out}: "
          + ", ".join(f"{s} {v['num_samples']}" for s, v in index["splits"].items()))
    return index


def demo_config(out: Path, shards: Path, args: argparse.Namespace, steps: int | None = None,
                max_minutes: float | None = None):
    """The training configuration of the demo (method ``bleu``, small model, cosine schedule over ``steps`` or
    over the time budget ``max_minutes``)."""
    from wfa.config import Config, DataConfig, ModelConfig, TrainConfig

    return Config(
        method="bleu", seed=args.seed, out=str(out),
        data=DataConfig(shards=str(shards), split="train", image_size=args.image_size, shuffle=500),
        model=ModelConfig(name=args.model),
        train=TrainConfig(batch_size=args.batch_size, steps=steps, max_minutes=max_minutes, lr=args.lr,
                          warmup_steps=min(20, steps // 10) if steps else 20, weight_decay=0.1,
                          log_every=max(1, min(20, steps // 10)) if steps else 20, tensorboard=True),
    ).validate()


def training_minutes(total_minutes: float, elapsed_s: float) -> float:
    """The training budget: what is left of ``total_minutes`` after ``elapsed_s`` and a reserve for the
    evaluation and start-up (a tenth of the total, at least 20 s); never under 0.25 minutes."""
    reserve_s = max(20.0, 6.0 * total_minutes)
    return max(0.25, (total_minutes * 60 - elapsed_s - reserve_s) / 60)


def check_arguments(args: argparse.Namespace) -> None:
    """Everything that can be checked before any work: the numbers, ``--data`` and a writable ``--out``.
    Raises :class:`DemoError` (exit 2)."""
    from wfa.commands.paths import output_folder_problem
    from wfa.errors import DemoError

    problems = []
    if not (math.isfinite(args.minutes) and args.minutes > 0):
        problems.append(f"--minutes {args.minutes} must be a positive number of minutes")
    if args.steps is not None and args.steps < 1:
        problems.append(f"--steps {args.steps} must be >= 1")
    for option, value in (("--image-size", args.image_size), ("--batch-size", args.batch_size)):
        if value < 1:
            problems.append(f"{option} {value} must be >= 1")
    if not args.data:
        n_train = round(0.8 * args.num_images)  # SyntheticReader's 80/10/10 split
        if args.num_images < 10:
            problems.append(f"--num-images {args.num_images} must be >= 10 (80/10/10 train/val/test)")
        elif n_train < args.batch_size:
            problems.append(f"--num-images {args.num_images} gives {n_train} training images, fewer than one "
                            f"batch (--batch-size {args.batch_size})")
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

    from wfa.aggregation import load_aggregator
    from wfa.checkpoint import RUN_FILES
    from wfa.commands.eval import load_eval_model
    from wfa.errors import TrainError
    from wfa.eval import evaluate
    from wfa.eval.report import write_json
    from wfa.trainer import train

    check_arguments(args)
    t0 = time.perf_counter()
    out = Path(args.out)
    held = [name for name in RUN_FILES if (out / name).exists()]
    if held:  # checked before any work: a demo never trains over an earlier one
        raise TrainError(f"--out {out} already holds a demo run ({', '.join(held)}); give another --out or "
                         "remove the folder")
    out.mkdir(parents=True, exist_ok=True)
    shards = Path(args.data) if args.data else out / "shards"
    if not args.data:
        write_synthetic_shards(shards, args.num_images, args.image_size, args.seed)
    if args.steps:
        cfg = demo_config(out, shards, args, steps=args.steps)
    else:
        budget = training_minutes(args.minutes, time.perf_counter() - t0)
        print(f"training for {budget:.2f} min (the rest of the {args.minutes:g} min goes to shards and evaluation)")
        cfg = demo_config(out, shards, args, max_minutes=budget)
    summary = train(cfg)
    steps = summary["steps"]
    if not args.keep_checkpoints:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint = Path(summary["model_final"])
    model, tokenizer, info = load_eval_model(str(checkpoint), None, None, str(shards), args.image_size, device)
    aggregator = load_aggregator(summary["aggregator"], device) if summary.get("aggregator") else None
    info["aggregator"] = summary.get("aggregator")
    train_info = {k: summary.get(k) for k in ("method", "steps", "final_loss", "images_seen", "captions_seen",
                                               "wall_s", "model_final", "aggregator", "config_file")}
    report = evaluate(model, tokenizer, shards, args.split, aggregator, device=device, image_size=args.image_size,
                      label_zeroshot=True, progress=True).write(
        out / "report.json", title=f"wfa demo: {args.model}, method bleu, {steps} steps",
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
    print(f"model: {checkpoint} (open_clip: import wfa.model; open_clip.create_model_and_transforms("
          f"{args.model!r}, pretrained={str(checkpoint)!r}))")
    return 0
