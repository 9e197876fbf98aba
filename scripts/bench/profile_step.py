"""Where a training step's time goes: ``torch.profiler`` over real ``wfa`` training steps, per method and path.

For each (method, path) the script builds the trainer of the study protocol (``--config``, default
``configs/studies/rsicd-880.yaml``'s base run: ``wfa-vit-tiny-shallowtext``, 64 px, batch 32, RSICD shards),
trains ``--warmup`` steps, then profiles ``--steps`` steps and splits each step's wall time into the
ranges the code marks with ``torch.profiler.record_function``:

- ``wfa.loader_wait``: waiting for the next batch (decoding runs in the loader's worker process);
- ``wfa.select``: the method's caption selection and the move to the device;
- ``wfa.image_tower``, ``wfa.text_tower`` (trimming, length buckets, dedup), ``wfa.aggregation``: forward;
- ``wfa.loss``, ``wfa.backward`` (both towers), ``wfa.optimizer`` (clipping, finiteness check, AdamW);
- ``other``: the rest of the loop (scheduler, counters, progress bar, logging).

FLOP counting (``train.count_flops_every``) is measured apart: the same steps once with every step counted,
the difference per counted step is its cost. A path is ``fp32`` (``train.precision=no``), ``bf16``
(autocast through accelerate), with ``+compile`` (``train.compile=true``). Writes
``benchmarks/profile.json`` and prints a Markdown table (milliseconds per step, share of the step).

    python scripts/bench/profile_step.py                                  # multipos, fp32 and bf16
    python scripts/bench/profile_step.py --methods pairs,multipos,bleu --paths fp32,bf16,bf16+compile
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/bench is not a package
from common import REPO, write_result  # noqa: E402

RANGES = ("wfa.loader_wait", "wfa.select", "wfa.image_tower", "wfa.text_tower", "wfa.aggregation", "wfa.loss",
          "wfa.backward", "wfa.optimizer")
PATHS = {"fp32": {"train.precision": "no", "train.compile": False},
         "bf16": {"train.precision": "bf16", "train.compile": False},
         "fp32+compile": {"train.precision": "no", "train.compile": True},
         "bf16+compile": {"train.precision": "bf16", "train.compile": True}}


def build_trainer(config: Path, method: str, path: str, out: Path, overrides: Sequence[str]):
    """A :class:`wfa.trainer.Trainer` of ``config`` for ``method`` on ``path`` (no validation, no checkpoints)."""
    from wfa.config import load_config
    from wfa.trainer import Trainer

    settings = [f"{key}={str(value).lower() if isinstance(value, bool) else value}"
                for key, value in PATHS[path].items()]
    cfg = load_config(config, [f"method={method}", f"out={out}", "data.val_split=null", "train.eval_every=0",
                               "train.checkpoint_every=0", "train.count_flops_every=0", "train.tensorboard=false",
                               "train.steps=100000", *settings, *overrides])
    return Trainer(cfg.validate())


def profile_steps(trainer, steps: int) -> dict[str, Any]:
    """Profile ``steps`` training steps; milliseconds per step in each range, the step total and images/s."""
    from torch.profiler import ProfilerActivity, profile

    batches = trainer._batches()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        images = sum(trainer.train_step(batches)["images"] for _ in range(steps))
    wall = time.perf_counter() - start
    totals = {event.key: event.cpu_time_total / 1e3 for event in prof.key_averages() if event.key in RANGES}
    per_step = {name: totals.get(name, 0.0) / steps for name in RANGES}
    step_ms = wall * 1e3 / steps
    per_step["other"] = step_ms - sum(per_step.values())
    return {"ms": per_step, "step_ms": step_ms, "images_per_s": images / wall}


def timed_steps(trainer, steps: int, count_flops: bool) -> float:
    """Mean wall milliseconds of ``steps`` steps, every one of them FLOP-counted when ``count_flops``."""
    trainer.cfg.train.count_flops_every = 1 if count_flops else 0
    batches = trainer._batches()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(batches)
    trainer.cfg.train.count_flops_every = 0
    return (time.perf_counter() - start) * 1e3 / steps


def measure(config: Path, method: str, path: str, warmup: int, steps: int, overrides: Sequence[str]) -> dict[str, Any]:
    """Profile one (method, path): the range table, plus the cost of one FLOP-counted step."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(config, method, path, Path(tmp) / "run", overrides)
        batches = trainer._batches()
        started = time.perf_counter()
        for _ in range(warmup):
            trainer.train_step(batches)
        warmup_s = time.perf_counter() - started
        result = profile_steps(trainer, steps)
        plain = timed_steps(trainer, steps, count_flops=False)
        counted = timed_steps(trainer, steps, count_flops=True)
    result.update({"method": method, "path": path, "warmup_s": warmup_s, "flop_count_ms_per_counted_step":
                   counted - plain, "plain_step_ms": plain})
    return result


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The profile as a Markdown table: ms per step and share of the step for every range."""
    names = [*RANGES, "other"]
    head = "| method | path | step ms | images/s | " + " | ".join(n.removeprefix("wfa.") for n in names) + \
           " | FLOP count (ms per counted step) |"
    lines = [head, "|" + "---|" * 2 + "---:|" * (len(names) + 3)]
    for r in rows:
        cells = [f"{r['ms'][n]:.0f} ({100 * r['ms'][n] / r['step_ms']:.0f}%)" for n in names]
        lines.append(f"| {r['method']} | {r['path']} | {r['step_ms']:.0f} | {r['images_per_s']:.1f} | "
                     + " | ".join(cells) + f" | {r['flop_count_ms_per_counted_step']:.0f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Profile every requested (method, path), each in its own process (accelerate keeps one precision per
    process), paths alternating within a method so machine load hits them alike."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=REPO / "configs" / "rsicd.yaml",
                   help="base run config (default %(default)s)")
    p.add_argument("--methods", default="multipos", help="comma-separated methods (default %(default)s)")
    p.add_argument("--paths", default="fp32,bf16", help=f"comma-separated of {','.join(PATHS)} (default %(default)s)")
    p.add_argument("--warmup", type=int, default=8, help="steps before profiling (compile happens here)")
    p.add_argument("--steps", type=int, default=12, help="profiled steps (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "profile.json")
    p.add_argument("--one", nargs=2, metavar=("METHOD", "PATH"), help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="extra key=value config overrides (e.g. data.shards=...)")
    args = p.parse_args(argv)
    if args.one:  # the child: one (method, path), its row as JSON on the last line of stdout
        import torch

        torch.set_num_threads(args.threads)
        row = measure(args.config, *args.one, args.warmup, args.steps, args.overrides)
        print(json.dumps(row))
        return 0
    rows = []
    for method in args.methods.split(","):
        for path in args.paths.split(","):
            print(f"[profile] {method} {path}", flush=True)
            command = [sys.executable, __file__, "--one", method, path, "--config", str(args.config),
                       "--warmup", str(args.warmup), "--steps", str(args.steps), "--threads", str(args.threads),
                       *args.overrides]
            done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    table = markdown(rows)
    write_result(args.out, {"rows": rows, "table": table, "threads": args.threads}, argv=argv, script=__file__)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
