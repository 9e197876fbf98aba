"""Training throughput: wfa (method bleu, K=5, all captions encoded) vs open_clip's own training script.

Same machine, same model config, same batch size, same UCM-Captions training images, one run:

1. ``wfa`` (``python -m wfa.trainer``), method ``bleu``: every step encodes B images and all 5*B captions.
2. ``wfa`` with ``model.text_buckets=1 model.dedup_captions=false``: captions trimmed to the batch's longest
   one, but no length buckets and no sharing of repeated captions
   (``wfa.model.encode_captions`` with ``buckets=1, dedup=False``).
3. ``wfa`` with ``model.trim_text=false model.dedup_captions=false``: every caption at open_clip's full
   77 tokens -- what trimming (and bucketing) contributes.
4. ``wfa`` with ``method=random``: one caption per image per step, what open_clip encodes -- the two
   training loops compared on equal work.
5. ``python -m open_clip_train.main`` (shipped in the open_clip_torch wheel), one caption per sample.
   Its ``--dataset-type webdataset`` path fails with webdataset 1.0.2 (``KeyError: 'fname'``), so it reads
   a CSV exported from the same shards: the shards' JPEG bytes written to files, one row per caption.
   Our JSON model config is registered for it by ``import wfa.model`` in a small wrapper
   (``python -c "import wfa.model; from open_clip_train.main import main; main([...])"``).

Each run is a separate process with the same thread count and one data-loading worker; the five runs
alternate ``--repeats`` times so drifting machine load affects them alike. Throughput is the median over
all log windows after each run's first (warm-up) window: wfa's ``metrics.jsonl`` windows, open_clip's
``Batch (t)`` averages per log line (batch_size / mean batch time). Writes ``benchmarks/throughput.json``
(with the command and machine record of :func:`common.write_result`; each run keeps its own command).

    python scripts/bench/throughput.py                     # UCM from $WFA_SHARED_DATA/ucm-captions
    python scripts/bench/throughput.py --steps 40 --batch-size 32 --model wfa-vit-tiny --image-size 64
    python scripts/bench/throughput.py --precision bf16 --out benchmarks/throughput-bf16.json   # both in bf16
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/bench is not a package
from common import REPO, SHARED_DATA, write_result  # noqa: E402

DEFAULT_UCM = SHARED_DATA / "ucm-captions"


def write_ucm_shards(ucm: Path, out: Path) -> dict:
    """UCM-Captions as wfa shards (reused when ``out`` already holds them, written from the same files)."""
    from wfa.data.karpathy import KarpathyReader
    from wfa.data.writer import write_shards

    reader = KarpathyReader(ucm / "dataset.json", ucm / "images")
    return write_shards(reader, out, shard_size=200, progress=False, reuse=True)


def export_csv(shards: Path, out: Path, rows: int) -> Path:
    """The first ``rows`` (image, caption) pairs of the train split as images + ``train.csv`` for open_clip."""
    from wfa.data.loader import read_index, split_shards

    out.mkdir(parents=True, exist_ok=True)
    table = out / "train.csv"
    written = 0
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "title"])
        for path, _ in split_shards(read_index(shards), shards, "train"):
            members: dict[str, dict[str, bytes]] = {}
            with tarfile.open(path) as tar:
                for member in tar:
                    key, _, ext = member.name.partition(".")
                    members.setdefault(key, {})[ext] = tar.extractfile(member).read()
            for key, sample in members.items():
                ext = next(e for e in ("jpg", "png") if e in sample)
                image = out / f"{key}.{ext}"
                image.write_bytes(sample[ext])
                for caption in json.loads(sample["json"])["captions"]:
                    writer.writerow([str(image), caption])
                    written += 1
                    if written == rows:
                        return table
    return table


def run(cmd: list[str], env: dict[str, str], log: Path) -> float:
    """Run ``cmd``; output to ``log``; returns wall seconds. Raises with the log tail on failure."""
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    return time.perf_counter() - start


def wfa_run(args: argparse.Namespace, shards: Path, work: Path, name: str, env: dict[str, str],
            *extra: str) -> dict:
    """One ``python -m wfa.trainer`` run: images/s and captions/s of each log window after the first."""
    out = work / name
    cmd = [sys.executable, "-m", "wfa.trainer", "method=bleu", f"data.shards={shards}", f"out={out}",
           f"model.name={args.model}", f"data.image_size={args.image_size}", f"train.batch_size={args.batch_size}",
           f"train.steps={args.steps}", f"train.log_every={args.log_every}", "train.tensorboard=false",
           "data.max_captions=5", f"data.num_workers={args.workers}", "data.augment=false", "train.lr=5e-4",
           "train.warmup_steps=0", "train.checkpoint_every=0",
           f"train.precision={'bf16' if args.precision == 'bf16' else 'no'}", *extra]
    wall = run(cmd, env, work / f"{name}.log")
    from wfa.run import Run

    windows = [r for r in Run(out).metrics() if "event" not in r][1:]
    return {"command": " ".join(cmd[1:]), "wall_s": wall, "images_per_s": [r["images_per_s"] for r in windows],
            "captions_per_s": [r["captions_per_s"] for r in windows],
            "captions_per_image": windows[-1]["captions_seen"] / windows[-1]["images_seen"]}


def open_clip_run(args: argparse.Namespace, table: Path, work: Path, name: str, env: dict[str, str]) -> dict:
    """One ``open_clip_train.main`` epoch over the CSV: samples/s of each log line after the first."""
    argv = ["--train-data", str(table), "--dataset-type", "csv", "--csv-img-key", "filepath",
            "--csv-caption-key", "title", "--csv-separator", ",", "--model", args.model,
            "--batch-size", str(args.batch_size), "--epochs", "1", "--workers", str(args.workers), "--lr", "5e-4",
            "--warmup", "0", "--precision", "amp_bf16" if args.precision == "bf16" else "fp32", "--device", "cpu",
            "--log-every-n-steps", str(args.log_every),
            "--logs", str(work / f"{name}_logs"), "--name", "bench", "--save-frequency", "0",
            "--force-image-size", str(args.image_size), "--seed", "0"]
    code = f"import wfa.model; from open_clip_train.main import main; main({argv!r})"
    log = work / f"{name}.log"
    wall = run([sys.executable, "-c", code], env, log)
    # open_clip logs the mean batch time of each window (its "/s" figure is the last batch only)
    times = [float(t) for t in re.findall(r"Batch \(t\): ([0-9.]+)", log.read_text())][1:]
    rates = [args.batch_size / t for t in times]
    if not rates:
        raise RuntimeError(f"no throughput lines in {log}; use more steps than --log-every")
    return {"command": f"python -c \"{code}\"", "wall_s": wall, "images_per_s": rates, "captions_per_s": rates,
            "captions_per_image": 1.0}


def summarise(runs: list[dict]) -> dict:
    """Medians over every window of every repeat of one configuration."""
    images = [x for r in runs for x in r["images_per_s"]]
    captions = [x for r in runs for x in r["captions_per_s"]]
    return {"images_per_s": statistics.median(images), "captions_per_s": statistics.median(captions),
            "captions_per_image": runs[0]["captions_per_image"], "windows": len(images),
            "images_per_s_per_repeat": [statistics.median(r["images_per_s"]) for r in runs],
            "wall_s_per_repeat": [r["wall_s"] for r in runs], "command": runs[0]["command"]}


def main(argv: list[str] | None = None) -> int:
    """Run the five trainings and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ucm", type=Path, default=DEFAULT_UCM, help="UCM-Captions folder (dataset.json, images/)")
    parser.add_argument("--shards", type=Path, default=None, help="UCM shards (written here if missing; "
                        "default: a temporary folder)")
    parser.add_argument("--model", default="wfa-vit-tiny")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--log-every", type=int, default=5, help="steps per throughput window")
    parser.add_argument("--workers", type=int, default=1, help="data-loading worker processes (both tools)")
    parser.add_argument("--threads", type=int, default=2, help="torch/OMP threads per run")
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats of the five runs")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="both tools at this precision: wfa train.precision=bf16, open_clip --precision amp_bf16")
    parser.add_argument("--work", type=Path, default=None, help="keep the runs' logs and outputs here "
                        "(default: a temporary folder, removed)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "throughput.json")
    args = parser.parse_args(argv)
    if not (args.ucm / "dataset.json").is_file():
        print(f"UCM-Captions not found at {args.ucm} (pass --ucm)", file=sys.stderr)
        return 2

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    with tempfile.TemporaryDirectory(prefix="wfa_bench_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        shards = args.shards or work / "ucm_shards"
        t = time.perf_counter()
        index = write_ucm_shards(args.ucm, shards)
        print(f"shards: {shards} ({index['splits']['train']['num_samples']} train images, "
              f"{time.perf_counter() - t:.1f} s)", flush=True)
        table = export_csv(shards, work / "csv", rows=args.steps * args.batch_size)
        runners = {
            "wfa_bleu_k5": lambda tag: wfa_run(args, shards, work, tag, env),
            "wfa_bleu_k5_trim_only": lambda tag: wfa_run(args, shards, work, tag, env, "model.text_buckets=1",
                                                         "model.dedup_captions=false"),
            "wfa_bleu_k5_no_trim": lambda tag: wfa_run(args, shards, work, tag, env, "model.trim_text=false",
                                                       "model.dedup_captions=false"),
            "wfa_random_k1": lambda tag: wfa_run(args, shards, work, tag, env, "method=random"),
            "open_clip_train": lambda tag: open_clip_run(args, table, work, tag, env),
        }
        raw: dict[str, list[dict]] = {name: [] for name in runners}
        # the runs alternate, so a change in machine load hits all of them alike
        for repeat in range(args.repeats):
            for name, runner in runners.items():
                raw[name].append(runner(f"{name}_{repeat}"))
                print(f"[{repeat}] {name}: {statistics.median(raw[name][-1]['images_per_s']):.1f} images/s",
                      flush=True)
        results = {name: summarise(runs) for name, runs in raw.items()}
        for result in results.values():  # a portable record: the work folder as $WORK
            result["command"] = result["command"].replace(str(work), "$WORK")

    wfa, oc = results["wfa_bleu_k5"], results["open_clip_train"]
    trim_only, no_trim = results["wfa_bleu_k5_trim_only"], results["wfa_bleu_k5_no_trim"]
    report = {
        "setup": {"model": args.model, "image_size": args.image_size, "batch_size": args.batch_size,
                  "precision": args.precision,
                  "steps": args.steps, "log_every": args.log_every, "repeats": args.repeats,
                  "workers": args.workers, "threads": args.threads,
                  "data": "UCM-Captions train split (wfa shards; open_clip: CSV of the same JPEGs, "
                          "one row per caption)"},
        "runs": results,
        "ratios": {
            "images_per_s_wfa_over_open_clip": wfa["images_per_s"] / oc["images_per_s"],
            "captions_per_s_wfa_over_open_clip": wfa["captions_per_s"] / oc["captions_per_s"],
            "images_per_s_wfa_over_no_trim": wfa["images_per_s"] / no_trim["images_per_s"],
            "images_per_s_trim_only_over_no_trim": trim_only["images_per_s"] / no_trim["images_per_s"],
            "images_per_s_wfa_over_trim_only": wfa["images_per_s"] / trim_only["images_per_s"],
            "images_per_s_wfa_random_over_open_clip": results["wfa_random_k1"]["images_per_s"] / oc["images_per_s"],
        },
    }
    write_result(args.out, report, argv=argv, script=__file__)
    print(json.dumps(report["ratios"], indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
