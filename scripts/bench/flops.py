"""Training FLOPs: the image/caption cost ratio of the study models, and FLOPs per step of every method.

1. **Tower ratio**: forward + backward FLOPs of one image against one caption of ``--caption-tokens`` tokens
   (trimmed text encoding, as training runs it), counted with ``torch.utils.flop_counter.FlopCounterMode``,
   for ``--models`` (default: the two study models and ViT-B-32 at 224 px, the GPU reference).
2. **FLOPs per step**: every registered method (or ``--methods``) trains ``--steps`` steps of ``--batch-size``
   samples on ``--shards`` with ``train.count_flops_every=1``; the mean FLOPs of one optimizer step
   (both towers, forward + backward, and the loss) and the captions encoded per step.

Usage::

    python scripts/bench/flops.py --shards runs/study-shards/rsicd --model wfa-vit-tiny-shallowtext
    python scripts/bench/flops.py --shards runs/study-shards/ucm --model wfa-vit-tiny --out benchmarks/flops-ucm.json

Writes ``--out`` (default ``benchmarks/flops.json``) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/bench is not a package
from common import REPO, write_result  # noqa: E402

TOWER_MODELS = (("wfa-vit-tiny", 64), ("wfa-vit-tiny-shallowtext", 64), ("ViT-B-32", 224))


def tower_flops(model_name: str, image_size: int, caption_tokens: int) -> dict[str, Any]:
    """Forward + backward FLOPs of one image and of one caption of ``caption_tokens`` tokens."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from wfa.model import create_model, encode_text

    model, tokenizer = create_model(model_name, image_size=image_size)
    image = torch.randn(1, 3, image_size, image_size)
    # a caption of exactly caption_tokens tokens with start and end: caption_tokens - 2 words of one token
    tokens = tokenizer(["a " * (caption_tokens - 2)])[:, :caption_tokens]

    def count(fn) -> int:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    image_flops = count(lambda: model.encode_image(image).sum().backward())
    caption_flops = count(lambda: encode_text(model, tokens, trim=True).sum().backward())
    return {"model": model_name, "image_size": image_size, "caption_tokens": caption_tokens,
            "image_gflops": image_flops / 1e9, "caption_gflops": caption_flops / 1e9,
            "image_to_caption": image_flops / caption_flops}


def method_flops(method: str, shards: Path, model: str, image_size: int, batch_size: int, steps: int,
                 workdir: Path) -> dict[str, Any]:
    """Mean FLOPs of one training step of ``method`` (``steps`` steps, every one counted).

    The sample shuffle buffer holds the whole train split, as in the method study: batches in shard order
    would hold an image's pairs side by side and a class's template captions together, and the exact
    de-duplication of repeated captions would make the text side look far cheaper than in training.
    """
    from wfa.config import load_config
    from wfa.data.loader import read_index
    from wfa.trainer import train

    shuffle = read_index(shards)["splits"]["train"]["num_samples"]
    cfg = load_config(None, [f"method={method}", f"data.shards={shards}", f"out={workdir / method}",
                             f"model.name={model}", f"data.image_size={image_size}",
                             f"train.batch_size={batch_size}", f"train.steps={steps}", "train.count_flops_every=1",
                             "train.tensorboard=false", f"data.shuffle={shuffle}"])
    summary = train(cfg)
    return {"method": method, "gflops_per_step": summary["flops_per_step"] / 1e9,
            "captions_per_step": summary["captions_seen"] / summary["steps"],
            "images_per_step": summary["images_seen"] / summary["steps"]}


def markdown(result: dict[str, Any]) -> str:
    """The two tables."""
    lines = ["| model | px | image GFLOP | caption GFLOP (tokens) | image / caption |", "|---|---:|---:|---:|---:|"]
    for t in result["towers"]:
        lines.append(f"| {t['model']} | {t['image_size']} | {t['image_gflops']:.2f} | {t['caption_gflops']:.3f} "
                     f"({t['caption_tokens']}) | {t['image_to_caption']:.1f} |")
    if result["methods"]:
        s = result["settings"]
        pairs = next((m["gflops_per_step"] for m in result["methods"] if m["method"] == "pairs"), None)
        lines += ["", f"{s['model']} at {s['image_size']} px, {s['batch_size']} samples per step, shards "
                  f"{s['shards']}, mean of {s['steps']} counted steps:", "",
                  "| method | GFLOP/step | x pairs | captions/step |", "|---|---:|---:|---:|"]
        for m in result["methods"]:
            ratio = f"{m['gflops_per_step'] / pairs:.2f}" if pairs else "–"
            lines.append(f"| {m['method']} | {m['gflops_per_step']:.1f} | {ratio} | {m['captions_per_step']:.1f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, write the JSON, print the tables."""
    from wfa.methods import list_methods

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shards", type=Path, help="shards for the per-method FLOPs (omit: tower ratios only)")
    p.add_argument("--model", default="wfa-vit-tiny-shallowtext")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=8, help="training steps counted per method (default 8)")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(list_methods())} (default all)")
    p.add_argument("--caption-tokens", type=int, default=20,
                   help="tokens of the reference caption for the tower ratio (default 20: RSICD/UCM captions "
                        "with start and end tokens)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "flops.json")
    args = p.parse_args(argv)
    towers = [tower_flops(name, size, args.caption_tokens) for name, size in TOWER_MODELS]
    methods = []
    if args.shards:
        with tempfile.TemporaryDirectory() as tmp:
            for method in (args.methods.split(",") if args.methods else list_methods()):
                methods.append(method_flops(method, args.shards, args.model, args.image_size, args.batch_size,
                                            args.steps, Path(tmp)))
    result = {"towers": towers, "methods": methods,
              "settings": {"model": args.model, "image_size": args.image_size, "batch_size": args.batch_size,
                           "steps": args.steps, "shards": str(args.shards) if args.shards else None}}
    result = write_result(args.out, result, argv=argv, script=__file__)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
