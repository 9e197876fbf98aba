"""Training speed of the study model on one thread: the fast path (bf16, compile) against fp32 and an earlier commit.

The study protocol's run (``configs/rsicd.yaml``: ``wfa-vit-tiny-shallowtext``, 64 px, batch 32, RSICD shards,
method ``--method``, 1 torch thread, 1 loader worker, FLOPs counted every 10 steps) trained for ``--steps`` steps by
``python -m wfa.trainer`` in separate processes, one per path:

- ``baseline``: fp32 at ``--baseline`` (a commit; checked out into a temporary git worktree), "today's" speed;
- ``fp32``, ``bf16``, ``bf16+compile`` (``train.compile=true``, inductor): this checkout.

The paths alternate ``--repeats`` times so that a change in machine load hits all of them alike. Images/s is the
median over all log windows after each run's first (warm-up; with compile, the compiling step); the achieved
GFLOP/s and MFU come from the same windows (``metrics.jsonl``), the compile time from the ``compile`` record. On a
shared machine the wall-clock rates move with the load; ``images per CPU-s`` (the training process's own CPU time,
without its loader worker) is what it would reach with its core to itself.
Writes ``benchmarks/train_speed.json`` and prints a Markdown table.

    python scripts/bench/train_speed.py --baseline a940cf3
    python scripts/bench/train_speed.py --baseline a940cf3 --paths baseline,fp32,bf16 --repeats 3 --steps 60
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/bench is not a package
from common import REPO, SHARED_DATA, write_result  # noqa: E402

PATHS = {"baseline": [], "fp32": [], "bf16": ["train.precision=bf16"],
         "bf16+compile": ["train.precision=bf16", "train.compile=true"]}


def write_rsicd_shards(data: Path, out: Path) -> dict[str, Any]:
    """RSICD as wfa shards (reused when ``out`` already holds them, written from the same files)."""
    from wfa.data.karpathy import KarpathyReader
    from wfa.data.writer import write_shards

    reader = KarpathyReader(data / "dataset_rsicd.json", data / "images", labels=data / "labels.csv")
    return write_shards(reader, out, shard_size=500, progress=False, reuse=True)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (its own threads, not its children); None when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(tree: Path, shards: Path, out: Path, method: str, steps: int, extra: Sequence[str]) -> dict[str, Any]:
    """Train in a fresh process from ``tree``; the log windows after the first (and after the compile step).

    While it runs, the trainer process's CPU time is read each time a log record appears (polled every 20 ms),
    so each window also has its images per CPU-second, for every commit (also those before the trainer logged
    it itself)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "wfa.trainer", "--config", str(REPO / "configs" / "rsicd.yaml"), f"method={method}",
           f"data.shards={shards}", f"out={out}", "data.num_workers=1", "data.val_split=null", f"train.steps={steps}",
           "train.log_every=5", "train.count_flops_every=10", "train.checkpoint_every=0", "train.eval_every=0",
           "train.tensorboard=false", *extra]
    metrics = out / "metrics.jsonl"
    cpu_at: dict[int, float] = {}  # step of a log record -> trainer CPU seconds when it appeared
    # cwd: ``python -m`` puts the working directory first on sys.path, so the tree's own wfa is imported
    with subprocess.Popen(cmd, env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True) as proc:
        seen = 0
        while proc.poll() is None:
            time.sleep(0.02)
            lines = metrics.read_text().splitlines() if metrics.is_file() else []
            if len(lines) > seen:
                now = cpu_seconds(proc.pid)
                for line in lines[seen:]:
                    record = json.loads(line)
                    if "event" not in record and now is not None:
                        cpu_at[record["step"]] = now
                seen = len(lines)
        stderr = proc.stderr.read()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    compiled = [r for r in records if r.get("event") == "compile"]
    logged = [r for r in records if "event" not in r]
    per_cpu = {r["step"]: (r["images_seen"] - p["images_seen"]) / (cpu_at[r["step"]] - cpu_at[p["step"]])
               for p, r in zip(logged, logged[1:]) if r["step"] in cpu_at and p["step"] in cpu_at
               and cpu_at[r["step"]] > cpu_at[p["step"]]}
    windows = logged[1:]
    if compiled:  # drop the window holding the compiling step
        windows = [r for r in windows if r["step"] - 5 > compiled[0]["step"]]
    end = next(r for r in records if r.get("event") == "end")
    return {"images_per_s": [r["images_per_s"] for r in windows],
            "images_per_cpu_s": [per_cpu[r["step"]] for r in windows if r["step"] in per_cpu],
            "gflops_per_s": [r["gflops_per_s"] for r in windows if "gflops_per_s" in r],
            "mfu": [r["mfu"] for r in windows if "mfu" in r],
            "compile_s": compiled[0]["first_step_s"] if compiled else None,
            "flops_per_step": end.get("flops_per_step"), "peak_flops": end.get("peak_flops"),
            "command": " ".join(cmd[1:])}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over every window of every repeat of one path."""
    def median(key: str) -> float | None:
        values = [x for r in runs for x in r[key]]
        return statistics.median(values) if values else None

    return {"images_per_s": median("images_per_s"), "images_per_cpu_s": median("images_per_cpu_s"),
            "gflops_per_s": median("gflops_per_s"), "mfu": median("mfu"),
            "images_per_s_per_repeat": [statistics.median(r["images_per_s"]) for r in runs],
            "compile_s": [r["compile_s"] for r in runs if r["compile_s"] is not None] or None,
            "flops_per_step": runs[-1]["flops_per_step"], "peak_flops": runs[-1]["peak_flops"],
            "command": runs[0]["command"]}


def markdown(results: dict[str, dict[str, Any]], reference: str) -> str:
    """The table: images/s, ratio to the reference path, achieved GFLOP/s, MFU, compile time."""
    lines = ["| path | images/s | per repeat | vs " + reference + " | images per CPU-s | GFLOP/s | MFU | compile (s) |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    base = results[reference]["images_per_s"]
    for name, r in results.items():
        gflops = f"{r['gflops_per_s']:.0f}" if r["gflops_per_s"] else "–"
        mfu = f"{100 * r['mfu']:.0f} %" if r["mfu"] else "–"
        compile_s = ", ".join(f"{s:.0f}" for s in r["compile_s"]) if r["compile_s"] else "–"
        repeats = ", ".join(f"{x:.1f}" for x in r["images_per_s_per_repeat"])
        cpu = f"{r['images_per_cpu_s']:.1f}" if r["images_per_cpu_s"] else "–"
        lines.append(f"| {name} | {r['images_per_s']:.1f} | {repeats} | {r['images_per_s'] / base:.2f}x | {cpu} | "
                     f"{gflops} | {mfu} | {compile_s} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every path ``--repeats`` times, alternating, and write the report."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", default=None, help="commit of the baseline path (fp32 before the fast path)")
    p.add_argument("--paths", default="baseline,fp32,bf16,bf16+compile", help="comma-separated of "
                   f"{','.join(PATHS)} (default %(default)s)")
    p.add_argument("--method", default="multipos", help="training method (default %(default)s)")
    p.add_argument("--steps", type=int, default=40, help="steps per run (default %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="alternating repeats (default %(default)s)")
    p.add_argument("--shards", type=Path, default=REPO / "runs" / "study-shards" / "rsicd",
                   help="RSICD shards (written from $WFA_SHARED_DATA/rsicd when missing)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "train_speed.json")
    args = p.parse_args(argv)
    paths = args.paths.split(",")
    if "baseline" in paths and not args.baseline:
        p.error("the baseline path needs --baseline COMMIT")
    write_rsicd_shards(SHARED_DATA / "rsicd", args.shards)
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
    with tempfile.TemporaryDirectory(prefix="wfa_speed_") as tmp:
        work = Path(tmp)
        baseline_tree = work / "baseline"
        if "baseline" in paths:
            subprocess.run(["git", "worktree", "add", "--detach", str(baseline_tree), args.baseline], cwd=REPO,
                           check=True, capture_output=True)
        try:
            for repeat in range(args.repeats):
                for name in paths:
                    tree = baseline_tree if name == "baseline" else REPO
                    run = one_run(tree, args.shards, work / f"{name}-{repeat}", args.method, args.steps, PATHS[name])
                    raw[name].append(run)
                    print(f"[{repeat}] {name}: {statistics.median(run['images_per_s']):.1f} images/s", flush=True)
        finally:
            if "baseline" in paths:
                subprocess.run(["git", "worktree", "remove", "--force", str(baseline_tree)], cwd=REPO,
                               capture_output=True)
    results = {name: summarise(runs) for name, runs in raw.items()}
    reference = "baseline" if "baseline" in results else paths[0]
    table = markdown(results, reference)
    write_result(args.out, {"setup": {"method": args.method, "steps": args.steps, "repeats": args.repeats,
                                      "baseline": args.baseline, "threads": 1, "workers": 1,
                                      "config": "configs/rsicd.yaml"},
                            "runs": results, "table": table}, argv=argv, script=__file__)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
