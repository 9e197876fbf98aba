"""One-command GPU check: training of every method (bf16, images/s, MFU), CPU/GPU loss parity,
FAISS GPU/CPU retrieval parity at 100k x 500k, and ``accelerate launch`` with a resume.

    python scripts/gpu_check.py [--out gpu_check.json] [--peak-tflops 989] [--data $WFA_SHARED_DATA]

On a machine with CUDA (target: <= 8 minutes on one GPU) it runs

(a) ``train``: every method of ``wfa.methods.list_methods()`` for ``--steps`` (20) steps with bf16 autocast,
    ``ViT-B-32`` at 224 px on real UCM-Captions shards (written first, 256 px images); images/s is
    that of the last logging window (steps 11-20: no start-up), the model FLOPs of one step are
    counted with ``torch.utils.flop_counter.FlopCounterMode`` (forward + backward, one extra step),
    and MFU = FLOPs/step x steps/s / peak bf16 FLOP/s (looked up from the device name, or
    ``--peak-tflops``);
(b) ``loss_parity``: the first-step loss of the same fp32 run (TF32 off) on the CPU (a child process
    with ``CUDA_VISIBLE_DEVICES=""``) and on the GPU, equal within ``LOSS_RTOL``;
(c) ``retrieval_parity``: ``wfa.eval.retrieval_metrics`` on 100,000 images x 500,000
    captions (512-d, seeded) with FAISS on the GPU and FAISS on the CPU (child process without
    CUDA), both times, and whether the metrics are identical. Without an importable ``faiss`` it
    compares the torch reference on GPU and CPU instead, and says so (``faiss_path``);
(d) ``accelerate``: ``python -m accelerate.commands.launch -m wfa.trainer`` for 10 steps with a
    checkpoint at step 5, then again with ``resume=latest`` to step 20;
(e) ``fast_path``: ``multipos`` with ViT-B-32 at 224 px in bf16, eager and with ``train.compile=true``
    (inductor), 30 steps each in a child process: images/s of the last window, the trainer's own MFU
    against the peak it measures (``wfa.peak``), and the compile time (the ``compile`` record).

Without CUDA it runs the CPU parts in CI-sized time instead -- (a) with ``wfa-vit-micro`` at 32 px on
synthetic shards, one step per method, FLOPs counted (no MFU: no peak), and (c) at 2,000 x 10,000
with faiss-cpu against the torch reference -- and lists what it skipped and why. One JSON is
written (``--out``) and its summary printed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from wfa.config import config_from_dict  # noqa: E402
from wfa.methods import list_methods  # noqa: E402
from wfa.run import Run  # noqa: E402

# Dense bf16 peak FLOP/s by device-name substring (vendor data sheets, SXM parts where there are two).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "L40S": 362.0,
                    "L40": 181.0, "L4": 121.0, "A10": 125.0, "RTX 4090": 165.0}
LOSS_RTOL = 1e-3  # first-step loss, CPU fp32 vs GPU fp32 with TF32 off: summation order only
GPU_RUN = {"model": "ViT-B-32", "image_size": 224, "batch_size": 128, "steps": 20}
CPU_RUN = {"model": "wfa-vit-micro", "image_size": 32, "batch_size": 8, "steps": 1}
GPU_RETRIEVAL = (100_000, 500_000, 512)
CPU_RETRIEVAL = (2_000, 10_000, 64)


def peak_tflops(device_name: str, given: float | None) -> float | None:
    """The peak bf16 TFLOP/s: ``given``, else the first table entry whose key is in the device name."""
    if given is not None:
        return given
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


def _config(shards: str, out: Path, method: str, run: dict, precision: str, steps: int, **train: Any) -> Any:
    return config_from_dict({
        "method": method, "seed": 0, "out": str(out),
        "data": {"shards": shards, "image_size": run["image_size"], "num_workers": min(8, os.cpu_count() or 1)
                 if torch.cuda.is_available() else 0},
        "model": {"name": run["model"]},
        "train": {"batch_size": run["batch_size"], "steps": steps, "precision": precision, "log_every": 10,
                  "tensorboard": False, "lr": 1e-4, **train},
    })


def _last_window(out: Path) -> dict[str, Any]:
    return [r for r in Run(out).metrics() if "images_per_s" in r][-1]


def train_methods(shards: str, work: Path, run: dict, precision: str, peak: float | None) -> dict[str, Any]:
    """(a): per method, FLOPs of one step (FlopCounterMode) and, on a GPU, images/s and MFU of ``steps``."""
    from torch.utils.flop_counter import FlopCounterMode

    from wfa.trainer import train

    results = {}
    for method in list_methods():
        counter = FlopCounterMode(display=False)
        with counter:
            train(_config(shards, work / f"{method}-flops", method, run, precision, 1))
        flops = counter.get_total_flops()
        entry: dict[str, Any] = {"flops_per_step": flops, "gflops_per_image": round(flops / run["batch_size"] / 1e9, 2)}
        if run["steps"] > 1:
            summary = train(_config(shards, work / method, method, run, precision, run["steps"]))
            window = _last_window(work / method)
            steps_per_s = window["images_per_s"] / run["batch_size"]
            entry.update({"steps": summary["steps"], "final_loss": summary["final_loss"],
                          "images_per_s": round(window["images_per_s"], 1),
                          "achieved_tflops": round(flops * steps_per_s / 1e12, 1)})
            if peak:
                entry["mfu"] = round(flops * steps_per_s / (peak * 1e12), 4)
        results[method] = entry
        print(f"  train {method}: {entry}", flush=True)
    return results


def first_loss(shards: str, work: Path, device: str) -> float:
    """The first-step fp32 loss of ``ViT-B-32`` (TF32 off) on this process's device."""
    from wfa.trainer import train

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    run = {**GPU_RUN, "batch_size": 32}
    cfg = _config(shards, work / f"loss-{device}", "bleu", run, "no", 1, log_every=1)
    cfg.data.num_workers = 0  # the same sample order in both processes
    return float(train(cfg)["final_loss"])


def _embeddings(n_images: int, n_captions: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded image and caption embeddings; each caption is its image's embedding plus noise."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((n_images, dim), dtype=np.float32)
    owner = np.arange(n_captions) % n_images
    captions = images[owner] + 1.5 * rng.standard_normal((n_captions, dim), dtype=np.float32)
    return images, captions, owner


def faiss_path() -> str:
    """"faiss-gpu", "faiss-cpu", or "none" (not importable): which FAISS this process would use."""
    try:
        import faiss
    except ImportError:
        return "none"
    return "faiss-gpu" if faiss.get_num_gpus() > 0 else "faiss-cpu"


def retrieval(sizes: tuple[int, int, int], backend: str) -> dict[str, Any]:
    """``retrieval_metrics`` on seeded embeddings with ``backend``; metrics and seconds."""
    from wfa.eval import retrieval_metrics

    images, captions, owner = _embeddings(*sizes)
    start = time.perf_counter()
    metrics = retrieval_metrics(images, captions, owner, backend=backend)
    return {"metrics": metrics, "seconds": round(time.perf_counter() - start, 2),
            "path": faiss_path() if backend == "faiss" else f"torch-{'cuda' if torch.cuda.is_available() else 'cpu'}"}


def _child(part: str, *args: str, cuda: bool = False) -> Any:
    """Run ``--part`` of this script in a child process (without CUDA unless ``cuda``); its JSON result.

    A child also gets a fresh accelerate state: a process keeps the mixed precision of its first run."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **({} if cuda else {"CUDA_VISIBLE_DEVICES": ""})}
    done = subprocess.run([sys.executable, __file__, "--part", part, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"child part {part} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def retrieval_parity(sizes: tuple[int, int, int], gpu: bool) -> dict[str, Any]:
    """(c): FAISS on GPU vs FAISS on CPU (or, lacking FAISS or a GPU, the torch reference) on the same data."""
    backend = "faiss" if faiss_path() != "none" else "torch"
    if gpu:
        here = retrieval(sizes, backend)
        other = _child("retrieval", backend, *map(str, sizes))
    else:  # CPU only: FAISS (when importable) against the torch reference
        here = retrieval(sizes, backend)
        other = retrieval(sizes, "torch")
    note = None if backend == "faiss" else "faiss is not importable: compared the torch reference retrieval instead"
    return {"images": sizes[0], "captions": sizes[1], "dim": sizes[2], "paths": [here["path"], other["path"]],
            "seconds": [here["seconds"], other["seconds"]], "identical": here["metrics"] == other["metrics"],
            "metrics": here["metrics"], **({"note": note} if note else {})}


def accelerate_resume(shards: str, work: Path) -> dict[str, Any]:
    """(d): ``accelerate launch`` 10 steps (checkpoint at 5), then resume to 20; steps seen by each launch."""
    out = work / "accelerate"
    base = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--mixed_precision", "bf16",
            "-m", "wfa.trainer", f"data.shards={shards}", f"out={out}", "model.name=ViT-B-32", "data.image_size=224",
            "train.batch_size=64", "train.precision=bf16", "train.checkpoint_every=5", "train.tensorboard=false"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.run([*base, "train.steps=10"], env=env, capture_output=True, text=True)
    second = subprocess.run([*base, "train.steps=20", "resume=latest"], env=env, capture_output=True, text=True)
    for done in (first, second):
        if done.returncode != 0:
            return {"ok": False, "error": done.stderr[-2000:]}
    run = Run(out)
    checkpoints = [p.name for p in run.checkpoints.values()]
    steps = [record.get("step") for record in run.metrics()]
    return {"ok": list(run.checkpoints)[-1:] == [20] and 20 in steps, "checkpoints": checkpoints,
            "logged_steps": [s for s in steps if s is not None]}


def fast_run(shards: str, work: Path, compiled: bool) -> dict[str, Any]:
    """A child's part of (e): ``multipos`` in bf16, eager or compiled; images/s, MFU and compile time."""
    from wfa.trainer import train

    name = "compiled" if compiled else "eager"
    run = {**GPU_RUN, "steps": 30}
    summary = train(_config(shards, work / f"fast-{name}", "multipos", run, "bf16", run["steps"],
                            compile=compiled, count_flops_every=10))
    records = [json.loads(line) for line in (work / f"fast-{name}" / "metrics.jsonl").read_text().splitlines()]
    window = [r for r in records if "images_per_s" in r][-1]
    compile_s = [r["first_step_s"] for r in records if r.get("event") == "compile"]
    return {"images_per_s": round(window["images_per_s"], 1), "mfu": window.get("mfu"),
            "peak_tflops_measured": summary["peak_flops"] / 1e12 if summary["peak_flops"] else None,
            "compile_s": compile_s[0] if compile_s else None}


def write_ucm_shards(data: Path | None, out: Path) -> str:
    """UCM-Captions shards (real images, 256 px) for the GPU runs."""
    from wfa.data.karpathy import KarpathyReader
    from wfa.data.writer import write_shards

    if data is None:
        raise SystemExit("gpu_check: the GPU runs train on UCM-Captions: pass --data (the folder holding "
                         "ucm-captions/) or set WFA_SHARED_DATA")
    ucm = Path(data) / "ucm-captions"
    reader = KarpathyReader(ucm / "dataset.json", ucm / "images")
    write_shards(reader, out, shard_size=128, workers=min(8, os.cpu_count() or 1), progress=False)
    return str(out)


def write_synthetic_shards(out: Path) -> str:
    """A few synthetic shards for the CPU-only run."""
    from wfa.data.synthetic import SyntheticReader
    from wfa.data.writer import write_shards

    write_shards(SyntheticReader(num_images=48, image_size=32), out, shard_size=16, progress=False)
    return str(out)


def run_part(part: str, args: list[str]) -> Any:
    """A child's part: ``retrieval BACKEND N T D`` or ``loss SHARDS WORK DEVICE``."""
    if part == "retrieval":
        return retrieval(tuple(int(a) for a in args[1:4]), args[0])
    if part == "loss":
        return first_loss(args[0], Path(args[1]), args[2])
    if part == "fast":
        return fast_run(args[0], Path(args[1]), args[2] == "compiled")
    raise ValueError(f"unknown part {part!r}")


def main(argv: list[str] | None = None) -> int:
    """Run the check for this machine; write and summarise the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON written")
    parser.add_argument("--peak-tflops", type=float, help="peak bf16 TFLOP/s of the GPU (default: from its name)")
    parser.add_argument("--data", type=Path, default=os.environ.get("WFA_SHARED_DATA"),
                        help="the shared data folder holding ucm-captions/ (default: $WFA_SHARED_DATA; GPU mode only)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.part:
        print(json.dumps(run_part(args.part, rest)))
        return 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    start = time.perf_counter()
    gpu = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if gpu else platform.processor() or platform.machine()
    report: dict[str, Any] = {"mode": "gpu" if gpu else "cpu", "device": name, "torch": torch.__version__,
                              "cuda": torch.version.cuda, "python": platform.python_version(),
                              "faiss_path": faiss_path(), "methods": list_methods(), "skipped": []}
    with tempfile.TemporaryDirectory(prefix="wfa-gpu-check-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if gpu:
            peak = peak_tflops(name, args.peak_tflops)
            report["peak_bf16_tflops"] = peak
            if peak is None:
                report["skipped"].append(f"MFU: no peak bf16 FLOP/s known for {name!r}; pass --peak-tflops")
            shards = write_ucm_shards(args.data, work / "ucm-shards")
            report["train"] = {"run": GPU_RUN, "precision": "bf16",
                               "methods": train_methods(shards, work, GPU_RUN, "bf16", peak)}
            cpu_loss = _child("loss", shards, str(work), "cpu")
            gpu_loss = _child("loss", shards, str(work), "cuda", cuda=True)  # fp32: not this process's bf16
            report["loss_parity"] = {"cpu": cpu_loss, "gpu": gpu_loss, "rtol": LOSS_RTOL,
                                     "ok": abs(cpu_loss - gpu_loss) <= LOSS_RTOL * abs(cpu_loss)}
            report["retrieval_parity"] = retrieval_parity(GPU_RETRIEVAL, gpu=True)
            report["accelerate"] = accelerate_resume(shards, work)
            report["fast_path"] = {name: _child("fast", shards, str(work), name, cuda=True)
                                   for name in ("eager", "compiled")}
        else:
            shards = write_synthetic_shards(work / "synthetic-shards")
            report["train"] = {"run": CPU_RUN, "precision": "no",
                               "methods": train_methods(shards, work, CPU_RUN, "no", None)}
            report["retrieval_parity"] = retrieval_parity(CPU_RETRIEVAL, gpu=False)
            report["skipped"] += [
                "train: bf16 autocast, ViT-B-32 at 224 px on UCM, images/s and MFU (no CUDA device; ran "
                "wfa-vit-micro at 32 px, one fp32 step per method, FLOPs counted)",
                "loss_parity: CPU fp32 vs GPU fp32 first-step loss (no CUDA device)",
                f"retrieval_parity at {GPU_RETRIEVAL[0]:,} x {GPU_RETRIEVAL[1]:,} on faiss-gpu (no CUDA device; ran "
                f"{CPU_RETRIEVAL[0]:,} x {CPU_RETRIEVAL[1]:,}, {report['faiss_path']} against the torch reference)",
                "accelerate: accelerate launch on the GPU with a resume (no CUDA device)",
                "fast_path: bf16 eager vs torch.compile of ViT-B-32 (no CUDA device; the CPU fast path is "
                "scripts/bench/train_speed.py)",
            ]
    report["seconds"] = round(time.perf_counter() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu_check ({report['mode']}, {name}) in {report['seconds']} s -> {args.out}")
    parity = report["retrieval_parity"]
    print(f"  retrieval parity {parity['paths']}: identical={parity['identical']}, seconds {parity['seconds']}")
    for line in report["skipped"]:
        print(f"  skipped: {line}")
    failed = not parity["identical"] or not report.get("loss_parity", {}).get("ok", True) \
        or not report.get("accelerate", {}).get("ok", True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
