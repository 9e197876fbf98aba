"""Evaluate a model: image-text retrieval on a shard split (+ zero-shot), with tables, JSON and plots.

Examples:
  wfa eval --checkpoint runs/x/model_final.pt --shards shards/ucm --split test --out eval/report.json
  wfa eval --model ViT-B-32 --pretrained openai --shards shards/ucm --zeroshot ucm --ucm-dir data/ucm-captions

With --checkpoint (an open_clip-format file written by ``wfa train``), the architecture and image size
come from the run's ``config.yaml`` beside it unless --model / --image-size are given, and the run's
``aggregator.pt`` (when present) adds the aggregated-gallery metrics (--aggregator picks another file,
--no-aggregator skips it).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``wfa eval`` options."""
    parser.add_argument("--checkpoint", help="open_clip-format model file (e.g. runs/x/model_final.pt)")
    parser.add_argument("--model", help="architecture: open_clip name, wfa config or JSON config "
                                        "(default: from config.yaml beside --checkpoint)")
    parser.add_argument("--pretrained", help="open_clip pretrained tag or file, for --model without --checkpoint")
    parser.add_argument("--shards", required=True, help="shard directory with index.json")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--out", default="report.json",
                        help="report JSON path; report.md and plots are written beside it (default: report.json)")
    parser.add_argument("--aggregator", help="aggregator file (aggregator.pt of a run) for the aggregated gallery")
    parser.add_argument("--no-aggregator", action="store_true", help="ignore the run's aggregator.pt")
    parser.add_argument("--zeroshot", action="append", choices=("ucm", "bigearthnet"), default=[],
                        help="also run zero-shot classification (repeatable)")
    parser.add_argument("--ucm-dir", help="UCM-Captions folder (labels.csv, dataset.json, images/) for --zeroshot ucm")
    parser.add_argument("--ucm-split", default="test", help="UCM split for zero-shot: train, val, test or all")
    parser.add_argument("--ben-dir", help="BigEarthNet folder (S2/S1 or BigEarthNet-S2/-S1) for --zeroshot bigearthnet")
    parser.add_argument("--ben-mode", default=None, choices=("s2", "s1", "s1s2"),
                        help="BigEarthNet bands (default: from the model's input channels: 12 -> s2, 2 -> s1, 14 -> s1s2)")
    parser.add_argument("--templates", help="zero-shot prompt YAML (default: the packaged one)")
    parser.add_argument("--image-size", type=int, help="input size (default: the run's data.image_size or the model's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--backend", default="faiss", choices=("faiss", "torch"), help="retrieval search backend")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")


def read_run_config(checkpoint: str | Path) -> dict[str, Any]:
    """The resolved ``config.yaml`` of the run that wrote ``checkpoint`` (``{}`` when absent)."""
    import yaml

    path = Path(checkpoint).resolve().parent / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def load_aggregator(path: str | Path, device: Any = "cpu"):
    """Rebuild the aggregator saved by training (``{"name", "dim", "kwargs", "state_dict"}``)."""
    import torch

    from wfa.aggregation import create_aggregator

    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or not {"name", "dim", "state_dict"} <= set(state):
        raise ValueError(f"{path} is not an aggregator file written by wfa train (needs name, dim, state_dict)")
    aggregator = create_aggregator(state["name"], int(state["dim"]), **(state.get("kwargs") or {}))
    aggregator.load_state_dict(state["state_dict"])
    return aggregator.to(device).eval()


def load_eval_model(checkpoint: str | None, model: str | None, pretrained: str | None, shards: str | None,
                    image_size: int | None, device: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, info) for evaluation: a wfa checkpoint, or any open_clip model by name."""
    from wfa.data.loader import read_index
    from wfa.model import create_model

    run = read_run_config(checkpoint) if checkpoint else {}
    name = model or run.get("model", {}).get("name")
    if not name:
        raise SystemExit(f"no model name: pass --model, or keep the run's config.yaml beside {checkpoint}")
    size = image_size or run.get("data", {}).get("image_size")
    bands = run.get("model", {}).get("bands")
    if bands is None and shards:
        bands = read_index(shards).get("bands")
    if checkpoint and not Path(checkpoint).is_file():
        raise SystemExit(f"checkpoint {checkpoint} not found")
    net, tokenizer = create_model(name, pretrained=checkpoint or pretrained, bands=bands, image_size=size,
                                  device=device)
    info = {"name": name, "checkpoint": checkpoint, "pretrained": None if checkpoint else pretrained,
            "image_size": size, "bands": bands}
    return net.eval(), tokenizer, info


def zeroshot_tasks(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """Zero-shot callables for the ``--zeroshot`` choices (checks their data options)."""
    from wfa.eval.zeroshot import load_templates, zeroshot_bigearthnet, zeroshot_ucm

    templates = load_templates(args.templates)
    tasks: dict[str, Any] = {}
    if "ucm" in args.zeroshot:
        if not args.ucm_dir:
            raise SystemExit("--zeroshot ucm needs --ucm-dir (the UCM-Captions folder with labels.csv)")
        tasks["ucm"] = lambda m, t: zeroshot_ucm(m, t, args.ucm_dir, args.ucm_split, device, templates,
                                                 args.batch_size)
    if "bigearthnet" in args.zeroshot:
        if not args.ben_dir:
            raise SystemExit("--zeroshot bigearthnet needs --ben-dir (a BigEarthNet S2/S1 folder)")

        def ben(m, t):
            from wfa.data.bigearthnet import BigEarthNetReader

            chans = getattr(m.visual, "in_chans", 3)
            mode = args.ben_mode or {12: "s2", 2: "s1", 14: "s1s2"}.get(chans)
            if mode is None:
                raise SystemExit(f"the model has {chans} input channels; BigEarthNet zero-shot needs 2, 12 or 14")
            return zeroshot_bigearthnet(m, t, BigEarthNetReader(root=args.ben_dir, mode=mode), device, templates,
                                        batch_size=args.batch_size)

        tasks["bigearthnet"] = ben
    return tasks


def run(args: argparse.Namespace) -> int:
    """Run ``wfa eval``; returns the exit code."""
    import torch

    from wfa.eval import evaluate

    if not args.checkpoint and not args.model:
        raise SystemExit("pass --checkpoint (a wfa run's model file) or --model (any open_clip model by name)")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, tokenizer, info = load_eval_model(args.checkpoint, args.model, args.pretrained, args.shards,
                                             args.image_size, device)
    aggregator = None
    agg_path = args.aggregator
    if agg_path is None and args.checkpoint and not args.no_aggregator:
        beside = Path(args.checkpoint).resolve().parent / "aggregator.pt"
        agg_path = str(beside) if beside.is_file() else None
    if agg_path and not args.no_aggregator:
        aggregator = load_aggregator(agg_path, device)
        print(f"aggregator: {agg_path}")
    info["aggregator"] = agg_path if aggregator is not None else None
    report = evaluate(model, tokenizer, args.shards, args.split, aggregator, device=device,
                      image_size=info["image_size"], batch_size=args.batch_size, num_workers=args.num_workers,
                      backend=args.backend, label_zeroshot=True, zeroshot=zeroshot_tasks(args, device),
                      progress=True)
    report.write(args.out, title=f"wfa eval: {info['name']} on {args.split}", extra={"model": info})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``scripts/eval_retrieval.py``): same options as ``wfa eval``."""
    parser = argparse.ArgumentParser(prog="eval_retrieval.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))
