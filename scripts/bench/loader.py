"""Benchmark the streaming shard loader: samples/s with 0, 1, 2 workers at several image sizes.

Each measurement is one training epoch (augmentation and shuffling on, batch 32 by default) from a
freshly built loader, worker start-up included, on the given shards (default: the UCM train split,
written first with ``wfa.data.writer`` from $WFA_SHARED_DATA/ucm-captions, else synthetic shards).
Configurations are interleaved over ``--repeats`` rounds so that load from other processes hits them
alike; the median is reported. Writes ``benchmarks/loader.json``.

    python scripts/bench/loader.py --shards /tmp/ucm_shards --sizes 64 224 --workers 0 1 2

``--multispectral`` compares the two multispectral shard formats instead, on 14-band (S2 + S1) samples
made of the real BigEarthNet patches in $WFA_SHARED_DATA (the v2 LMDB pair and the v1 pairs, repeated
under distinct ids): writer version 2 (native bands in zstd-compressed safetensors, resampled on load) against writer
version 1 (float32 120 x 120 ``npy``, written here exactly as version 1 wrote it). It also reports
each format's bytes per sample and the source's bytes per patch. Writes
``benchmarks/loader_multispectral.json``.

    python scripts/bench/loader.py --multispectral --sizes 120 64 --workers 0 --samples 512
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import open_clip
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/bench is not a package
from common import REPO, SHARED_DATA, write_result  # noqa: E402

from wfa.data.loader import LoaderConfig, build_loader  # noqa: E402
from wfa.data.shard_format import NativeBands  # noqa: E402

UCM = SHARED_DATA / "ucm-captions"
# Images/s that training consumes on this machine's 2 cores (batch 32, 2 threads; early notes): tiny ViT
# (width 256, 4+4 layers) ~47 at 64 px and ~30 at 128 px; ViT-B-32 ~3 at 224 px.
TRAINING_IMAGES_PER_S = {64: 47.0, 128: 30.0, 224: 3.0}


def _training_rate(size: int) -> float | None:
    """Images/s training consumes at ``size`` px: the measured figure, or the next larger size's (a
    lower rate, so the ratio errs low) -- 120 px uses 128 px's."""
    larger = [s for s in TRAINING_IMAGES_PER_S if s >= size]
    return TRAINING_IMAGES_PER_S[min(larger)] if larger else None


def write_bench_shards(out: Path) -> str:
    """Write UCM shards (or synthetic ones when UCM is absent) into ``out``; return what was written."""
    from wfa.data.writer import write_shards

    if (UCM / "dataset.json").is_file():
        from wfa.data.karpathy import KarpathyReader

        reader = KarpathyReader(UCM / "dataset.json", UCM / "images")
        source = f"UCM-Captions ({UCM})"
    else:
        from wfa.data.synthetic import SyntheticReader

        reader = SyntheticReader(num_images=2100, image_size=256)
        source = "synthetic (2100 images, 256 px)"
    write_shards(reader, out, shard_size=256, workers=2, progress=False)
    return source


def real_patches() -> list[tuple[str, NativeBands, int]]:
    """(id, native bands, source bytes on disk) of every real S1+S2 pair in $WFA_SHARED_DATA."""
    from wfa.data.bigearthnet import BigEarthNetReader

    patches = []
    v2 = SHARED_DATA / "bigearthnet-v2-sample"
    tree = BigEarthNetReader(root=v2, mode="s1s2", native=True)
    v1 = BigEarthNetReader(root=SHARED_DATA / "bigearthnet-v1-tiny", mode="s1s2", native=True)
    for reader in (tree, v1):
        for patch_id in reader.ids():
            s1_name = reader.s1_for(patch_id)
            if s1_name is None:
                continue
            folders = [reader._s2[patch_id], reader._s1[s1_name]]  # noqa: SLF001 - the source files' sizes
            size = sum(p.stat().st_size for folder in folders for p in folder.glob("*.tif"))
            patches.append((patch_id, reader.load_native(patch_id), size))
    return patches


def write_multispectral_shards(out: Path, samples: int) -> dict:
    """Version 2 (``out/v2``) and version 1 (``out/v1``) shards of the same repeated real patches."""
    import io
    import json

    import numpy as np
    import webdataset as wds

    from wfa.data.sample import Sample
    from wfa.data.writer import write_shards

    patches = real_patches()
    captions = ["a patch of fields and forest.", "farmland next to a forest.", "fields, forest and a road."]
    items = [Sample(f"{patches[i % len(patches)][0]}-{i}", patches[i % len(patches)][1], captions, "train")
             for i in range(samples)]
    index = write_shards(items, out / "v2", shard_size=128, progress=False)
    (out / "v1").mkdir()
    entries = []
    for start in range(0, samples, 128):
        name = f"train-{start // 128:06d}.tar"
        with wds.TarWriter(str(out / "v1" / name)) as sink:
            for item in items[start:start + 128]:
                buffer = io.BytesIO()
                np.save(buffer, item.image.to_grid(), allow_pickle=False)
                record = {"id": item.id, "captions": captions, "split": "train", "bands": item.image.bands,
                          "weights": {"bleu": [1 / 3] * 3}, "labels": None, "meta": {}}
                sink.write({"__key__": item.id.replace(".", "_"), "npy": buffer.getvalue(),
                            "json": json.dumps(record).encode()})
        entries.append({"name": name, "num_samples": len(items[start:start + 128])})
    version_1 = {**index, "writer_version": "1.0", "image_format": "npy", "band_layout": None, "resample": None,
                 "bands_bytes": None,
                 "splits": {"train": {"num_samples": samples, "shards": entries}}}
    (out / "v1" / "index.json").write_text(json.dumps(version_1))
    size = {name: sum(p.stat().st_size for p in (out / name).glob("*.tar")) / samples for name in ("v1", "v2")}
    return {"patches": [p[0] for p in patches], "samples": samples,
            "source_bytes_per_patch": round(sum(p[2] for p in patches) / len(patches)),
            "source_values_bytes_per_patch": sum(a.nbytes for a in patches[0][1].arrays.values()),
            "v1_bytes_per_sample": round(size["v1"]), "v2_bytes_per_sample": round(size["v2"])}


def measure(cfg: LoaderConfig, tokenizer) -> dict:
    """Iterate one epoch of a fresh loader; return samples, seconds, samples/s and skip count."""
    start = time.perf_counter()
    loader, steps = build_loader(cfg, tokenizer)
    samples = 0
    for batch in loader:
        samples += len(batch["image_ids"])
    seconds = time.perf_counter() - start
    return {"samples": samples, "steps": steps, "seconds": round(seconds, 3),
            "samples_per_s": round(samples / seconds, 1), "skipped": loader.stats.skipped}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", help="shard dir with index.json (default: write UCM/synthetic shards)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--view", default="images", choices=["images", "pairs"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the main process (as training)")
    parser.add_argument("--multispectral", action="store_true",
                        help="compare writer version 2 and 1 multispectral shards of real BigEarthNet patches")
    parser.add_argument("--samples", type=int, default=512, help="--multispectral: samples per format")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = REPO / "benchmarks" / ("loader_multispectral.json" if args.multispectral else "loader.json")
    torch.set_num_threads(args.threads)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")

    with tempfile.TemporaryDirectory(prefix="wfa-bench-loader-") as tmp:
        formats: dict[str, str] = {}
        sizes: dict = {}
        if args.multispectral:
            print("writing multispectral shards (writer versions 2 and 1) ...", flush=True)
            sizes = write_multispectral_shards(Path(tmp), args.samples)
            formats = {"v2": str(Path(tmp) / "v2"), "v1": str(Path(tmp) / "v1")}
            source = f"real BigEarthNet S1+S2 pairs {sizes['patches']}, repeated to {args.samples} samples"
        elif args.shards:
            formats, source = {"given": args.shards}, f"given ({args.shards})"
        else:
            shards = str(Path(tmp) / "shards")
            print("writing benchmark shards ...", flush=True)
            source = write_bench_shards(Path(shards))
            formats = {"given": shards}
        runs: dict[tuple[str, int, int], list[dict]] = {}
        for round_no in range(args.repeats):
            for name, shards in formats.items():
                for size in args.sizes:
                    for workers in args.workers:
                        cfg = LoaderConfig(shards=shards, split=args.split, batch_size=args.batch_size,
                                           num_workers=workers, image_size=size, augment=True, view=args.view,
                                           seed=round_no)
                        result = measure(cfg, tokenizer)
                        runs.setdefault((name, size, workers), []).append(result)
                        print(f"round {round_no} {name} size {size} workers {workers}: {result['samples_per_s']} "
                              "samples/s", flush=True)

    results = []
    for (name, size, workers), measured in runs.items():
        median = statistics.median(r["samples_per_s"] for r in measured)
        entry = {"format": name, "image_size": size, "num_workers": workers, "samples_per_s_median": median,
                 "runs": measured}
        training = _training_rate(size)
        if training is not None:
            entry["x_training"] = round(median / training, 1)
        results.append(entry)
    report = {
        "what": f"one augmented, shuffled training epoch of split {args.split!r} (view {args.view!r}) from a fresh "
                "loader, worker start-up included; median over rounds",
        "source": source,
        "batch_size": args.batch_size,
        "main_threads": args.threads,
        "note": "2 cores shared with other jobs: absolute figures move with their load (machine.load_average, "
                "taken at the end)",
        "training_images_per_s": {str(k): v for k, v in TRAINING_IMAGES_PER_S.items()},
        "results": results,
        **({"bytes": sizes} if sizes else {}),
    }
    write_result(args.out, report, argv=argv, script=__file__)
    print(f"\n{'format':>7} {'size':>5} {'workers':>7} {'samples/s':>10} {'x training':>10}")
    for entry in results:
        print(f"{entry['format']:>7} {entry['image_size']:>5} {entry['num_workers']:>7} "
              f"{entry['samples_per_s_median']:>10} {entry.get('x_training', '-'):>10}")
    if sizes:
        print(json.dumps({k: v for k, v in sizes.items() if k != "patches"}))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
