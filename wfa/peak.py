"""Measured peak FLOP/s of this machine per dtype, for model-FLOPs utilisation (MFU), and the fastest precision
it trains at (``train.precision: auto``, :func:`resolve_precision`).

A datasheet peak says little on a CPU (turbo, AVX-512 vs AMX, thread count, a shared machine); what a run can
reach is what a large matmul reaches. :func:`peak_flops` times ``torch.matmul`` of two square matrices of the
dtype on the device (``1024`` on CPU, ``8192`` on CUDA) for about half a second after a warm-up (on a CPU in CPU
time, see :func:`measure_peak_flops`), once per machine: the result is cached in ``$XDG_CACHE_HOME/wfa/peak_flops.json`` (default ``~/.cache``) under a key of
the device name, torch version, thread count and dtype. MFU = achieved training FLOP/s / this peak.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

DTYPES = {"no": torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cache_file() -> Path:
    """``$XDG_CACHE_HOME/wfa/peak_flops.json`` (``~/.cache/wfa/...`` by default)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "wfa" / "peak_flops.json"


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name from ``/proc/cpuinfo`` (else ``platform.processor()``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpuinfo("model name") or platform.processor() or platform.machine()


def cpuinfo(field: str) -> str | None:
    """The first value of ``field`` in ``/proc/cpuinfo`` (None where there is no such file or field, e.g. macOS)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == field:
                return value.strip()
    except OSError:
        pass
    return None


def cache_key(device: torch.device, dtype: torch.dtype) -> str:
    """What a measured peak depends on: device name, torch version, intra-op threads (CPU) and dtype."""
    threads = f"{torch.get_num_threads()}threads" if device.type == "cpu" else device.type
    return f"v2|{device_name(device)}|torch {torch.__version__}|{threads}|{str(dtype).removeprefix('torch.')}"


def measure_peak_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """FLOP/s of a square ``matmul`` in ``dtype`` on ``device``: ``2 n^3`` per product, timed after a warm-up.

    On a GPU by the wall clock (after synchronising); on a CPU by this process's CPU time divided by its intra-op
    threads, so that other work on a shared machine does not lower the peak (it lowers the MFU of the run instead,
    which is measured by the wall clock)."""
    n = 8192 if device.type == "cuda" else 1024
    generator = torch.Generator(device=device).manual_seed(0)  # never the global RNG: a run's draws stay its own
    a = torch.randn(n, n, device=device, generator=generator).to(dtype)
    b = torch.randn(n, n, device=device, generator=generator).to(dtype)
    if device.type == "cuda":
        sync, clock, threads = torch.cuda.synchronize, time.perf_counter, 1
    else:
        sync, clock, threads = (lambda: None), time.process_time, torch.get_num_threads()
    for _ in range(3):
        torch.matmul(a, b)
    sync()
    count, start = 0, clock()
    while True:
        torch.matmul(a, b)
        count += 1
        if count % 4 == 0:
            sync()
            elapsed = (clock() - start) / threads
            if elapsed >= seconds:
                return 2.0 * n**3 * count / elapsed


def peak_flops(device: torch.device, precision: str = "no", refresh: bool = False) -> float:
    """The cached peak FLOP/s of ``device`` for a run of ``precision`` (``no``/``fp32``, ``bf16``, ``fp16``),
    measured once per machine (:func:`measure_peak_flops`) unless ``refresh``."""
    dtype = DTYPES[precision]
    key = cache_key(device, dtype)
    path = cache_file()
    try:
        cache = json.loads(path.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    value = cache.get(key)
    if refresh or not isinstance(value, (int, float)) or not value > 0:
        value = measure_peak_flops(device, dtype)
        cache[key] = value
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            tmp.write_text(json.dumps(cache, indent=1))
            os.replace(tmp, path)
        except OSError:  # a read-only home: measure again next time
            pass
    return float(value)


BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})  # CPU instructions that make bf16 matmuls beat fp32 ones


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none, e.g. macOS)."""
    return set((cpuinfo("flags") or "").split())


def fastest_precision(device: torch.device) -> str:
    """The fastest precision whose quality matched fp32's in the parity study (BENCHMARKS.md): ``"bf16"`` on a GPU
    with native bf16 (compute capability 8.0 or newer, or ROCm) and on a CPU with AMX or AVX-512 BF16, else ``"no"``
    (fp32: emulated bf16 is slower). Decided from the hardware, not a timing, so the ranks of a run on one kind of
    machine and the arms of a study decide alike."""
    if device.type == "cuda":
        native = torch.version.hip is not None or torch.cuda.get_device_capability(device)[0] >= 8
        return "bf16" if native else "no"
    return "bf16" if cpu_flags() & BF16_CPU_FLAGS else "no"


def resolve_precision(precision: str, device: torch.device | None = None) -> str:
    """``precision`` itself, or for ``"auto"`` the :func:`fastest_precision` of ``device`` (default: the GPU when
    there is one, else the CPU)."""
    if precision != "auto":
        return precision
    return fastest_precision(device or torch.device("cuda" if torch.cuda.is_available() else "cpu"))
