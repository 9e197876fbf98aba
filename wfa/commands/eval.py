"""Evaluate a model: image-text retrieval on a shard split (+ zero-shot), with tables, JSON and plots.

Examples:
  wfa eval --checkpoint runs/x/model_final.pt --shards shards/ucm --split test --out eval/report.json
  wfa eval --model ViT-B-32 --pretrained openai --shards shards/ucm --zeroshot ucm --ucm-dir data/ucm-captions
  wfa eval --checkpoint runs/x/model_final.pt --shards shards/ucm --zeroshot folder --folder-root data/AID

With --checkpoint (an open_clip-format file written by ``wfa train``), the architecture and image size
come from the run's ``config.yaml`` beside it unless --model / --image-size are given, and the run's
``aggregator.safetensors`` (when present) adds the aggregated-gallery metrics (--aggregator picks another file,
--no-aggregator skips it). A model whose input channels differ from the shards' bands (an RGB checkpoint on
12-band shards) is refused unless --adapt-bands asks to rebuild its first layer for the bands.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from wfa.errors import EvalError, WfaError


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
    parser.add_argument("--aggregator", help="aggregator file (aggregator.safetensors of a run) for the aggregated gallery")
    parser.add_argument("--no-aggregator", action="store_true", help="ignore the run's aggregator.safetensors")
    parser.add_argument("--adapt-bands", action="store_true",
                        help="evaluate an RGB model on multispectral shards by rebuilding its first layer for their "
                             "bands (RGB kernels on B04/B03/B02, see wfa.model.inflate_rgb_kernel); without it a "
                             "band-count mismatch between model and shards is an error")
    from wfa.eval.tasks import list_tasks

    parser.add_argument("--zeroshot", action="append", choices=list_tasks(), default=[], metavar="KIND",
                        help=f"also run zero-shot classification of a registered task ({', '.join(list_tasks())}; "
                             "repeatable); its options are listed below")
    parser.add_argument("--templates", help="zero-shot prompt YAML (default: the packaged one)")
    parser.add_argument("--image-size", type=int, help="input size (default: the run's data.image_size or the model's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--backend", default="faiss", choices=("faiss", "torch"), help="retrieval search backend")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    add_task_arguments(parser.add_argument_group("zero-shot task options (--zeroshot KIND)"))


def _task_flags() -> dict[str, tuple[Any, list[str]]]:
    """``{flag: (its Argument, the task kinds that declare it)}`` over every registered task kind."""
    from wfa.eval.tasks import list_tasks, task_class

    flags: dict[str, tuple[Any, list[str]]] = {}
    for kind in list_tasks():
        cls = task_class(kind)
        for spec in {**cls.ARGUMENTS, **cls.SPLIT_ARGUMENTS}.values():
            flags.setdefault(spec.flag, (spec, []))[1].append(kind)
    return flags


def add_task_arguments(group: Any) -> None:
    """One option per argument the task kinds declare (``--ucm-dir``, ``--ben-dir``, ``--folder-root``, ...)."""
    for flag, (spec, kinds) in _task_flags().items():
        shown = ",".join(spec.default) if isinstance(spec.default, tuple) else spec.default
        default = f"; default {shown}" if shown not in (None, "") else ""
        group.add_argument(f"--{flag}", dest=f"task_{flag.replace('-', '_')}", default=None,
                           metavar=flag.split("-")[-1].upper(), help=f"{spec.help} [{', '.join(kinds)}{default}]")


def task_from_arguments(kind: str, args: argparse.Namespace) -> Any:
    """The task ``--zeroshot kind`` names, built from its options; a missing or bad one is an exit-2 error."""
    from wfa.eval.tasks import task_class

    cls = task_class(kind)
    given = {name: getattr(args, f"task_{spec.flag.replace('-', '_')}", None)
             for name, spec in {**cls.ARGUMENTS, **cls.SPLIT_ARGUMENTS}.items()}
    missing = [f"--{cls.ARGUMENTS[n].flag}" for n, v in given.items()
               if v is None and n in cls.ARGUMENTS and cls.ARGUMENTS[n].required]
    if missing:
        raise EvalError(f"--zeroshot {kind} needs {' and '.join(missing)}").with_exit_code(2)
    try:
        return cls(**{name: value for name, value in given.items() if value is not None})
    except ValueError as error:
        raise EvalError(f"--zeroshot {kind}: {error}").with_exit_code(2) from None


def load_eval_model(checkpoint: str | None, model: str | None, pretrained: str | None, shards: str | None,
                    image_size: int | None, device: Any, adapt_bands: bool = False) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, info) for evaluation: a model file (a run's ``model_final.pt``, read through its
    :class:`wfa.run.Run` when the run's ``config.yaml`` is beside it), or any open_clip model by name.

    A model whose input channels differ from the shards' bands is refused (:class:`EvalError`, exit 2) unless
    ``adapt_bands`` asks to rebuild an RGB model's first layer for the shards' bands."""
    from wfa.data.loader import read_index
    from wfa.model import create_model
    from wfa.run import Run, check_model_file, load_model_file

    checkpoint_chans = check_model_file(checkpoint) if checkpoint else None
    run = Run.holding(checkpoint) if checkpoint else None
    run_cfg = run.config if run is not None else None
    name = model or (run_cfg.model.name if run_cfg else None)
    if not name:
        raise EvalError(f"no model name: pass --model, or keep the run's config.yaml beside {checkpoint}")
    size = image_size or (run_cfg.data.image_size if run_cfg else None)
    bands = run_cfg.model.bands if run_cfg else None
    shard_bands = read_index(shards).get("bands") if shards else None
    # the model's input channels: the checkpoint's, or 3 for open_clip's pretrained (RGB) weights; a model with
    # random weights is built for the shards
    if checkpoint:
        model_chans = checkpoint_chans or (len(bands) if bands else 3)
    else:
        model_chans = 3 if pretrained else None
    shard_chans = len(shard_bands) if shard_bands else 3
    if model_chans is not None and model_chans != shard_chans and shards:
        what = f"checkpoint {checkpoint}" if checkpoint else f"--pretrained {pretrained}"
        if not (adapt_bands and model_chans == 3):
            hint = ("pass --adapt-bands to rebuild its first layer for the shards' bands" if model_chans == 3
                    else "evaluate it on shards with its bands")
            raise EvalError(f"{what} takes {model_chans} input channels, the shards {shards} have {shard_chans} "
                            f"({', '.join(shard_bands) if shard_bands else 'RGB'}); {hint}").with_exit_code(2)
        bands = shard_bands
    if bands is None and shards:
        bands = shard_bands
    if checkpoint:
        net, tokenizer = load_model_file(checkpoint, name, bands=bands, image_size=size, device=device)
    else:
        try:
            net, tokenizer = create_model(name, pretrained=pretrained, bands=bands, image_size=size, device=device)
        except (RuntimeError, ValueError, KeyError, AssertionError) as error:  # open_clip asserts on some mismatches
            detail = str(error).strip().split("\n")[0][:300]
            raise EvalError(f"--pretrained {pretrained} does not fit the model {name!r} ({detail}); pass the --model "
                            "it belongs to") from None
    info = {"name": name, "checkpoint": checkpoint, "pretrained": None if checkpoint else pretrained,
            "image_size": size, "bands": bands, "adapted_bands": bool(adapt_bands and model_chans == 3
                                                                      and shard_chans != 3)}
    return net.eval(), tokenizer, info


def zeroshot_tasks(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """Zero-shot callables ``(model, tokenizer) -> scores`` for the ``--zeroshot`` kinds (their options are
    checked here, before a model is built)."""
    from wfa.eval.zeroshot import load_templates, run_zeroshot

    try:
        templates = load_templates(args.templates)
    except ValueError as error:
        raise EvalError(f"--templates: {error}").with_exit_code(2) from None
    tasks: dict[str, Any] = {}
    for kind in dict.fromkeys(args.zeroshot):
        task = task_from_arguments(kind, args)

        def score(m: Any, t: Any, task: Any = task) -> dict[str, Any]:
            try:
                return run_zeroshot(task, m, t, device=device, templates=templates, batch_size=args.batch_size,
                                    num_workers=args.num_workers, image_size=args.image_size)
            except ValueError as error:
                raise EvalError(f"--zeroshot {task.kind}: {error}") from None

        tasks[kind] = score
    return tasks


def check_arguments(args: argparse.Namespace) -> None:
    """Everything that can be checked before a model is built: a model source, readable shards holding
    the split, an ``--out`` that is a file path in a folder that can be written, usable batch options."""
    from wfa.commands.paths import output_file_problem
    from wfa.data.audit import check_probes
    from wfa.data.loader import probe_split, read_index, split_shards

    if not args.checkpoint and not args.model:
        raise EvalError("pass --checkpoint (a wfa run's model file) or --model (any open_clip model by name)"
                        ).with_exit_code(2)
    if args.batch_size < 1 or args.num_workers < 0:
        raise EvalError("--batch-size must be >= 1 and --num-workers >= 0").with_exit_code(2)
    try:
        split_shards(read_index(args.shards), args.shards, args.split)
        reason = check_probes(probe_split(args.shards, args.split, args.image_size or 64), args.split)
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise EvalError(f"--shards {args.shards}: {error}").with_exit_code(2) from None
    if reason is not None:
        raise EvalError(f"--shards {args.shards}: {reason}")
    problem = output_file_problem(args.out, "--out")
    if problem is not None:
        raise EvalError(problem).with_exit_code(2)


def run(args: argparse.Namespace) -> int:
    """Run ``wfa eval``; returns the exit code (errors are :class:`wfa.errors.EvalError`)."""
    import torch

    from wfa.aggregation import load_aggregator
    from wfa.eval import evaluate
    from wfa.run import Run

    check_arguments(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    zeroshot = zeroshot_tasks(args, device)
    model, tokenizer, info = load_eval_model(args.checkpoint, args.model, args.pretrained, args.shards,
                                             args.image_size, device, adapt_bands=args.adapt_bands)
    aggregator = None
    agg_path = args.aggregator
    if agg_path is None and args.checkpoint and not args.no_aggregator:  # the run folder's aggregator, if any
        beside = Run(Path(args.checkpoint).resolve().parent).aggregator_path
        agg_path = str(beside) if beside.is_file() else None
    if agg_path and not args.no_aggregator:
        aggregator = load_aggregator(agg_path, device)
        proj = getattr(model, "text_projection", None)
        text_dim = int(proj.shape[1]) if isinstance(proj, torch.Tensor) else getattr(proj, "out_features", None)
        if text_dim is not None and aggregator.dim != text_dim:
            raise EvalError(f"aggregator {agg_path} is for {aggregator.dim}-dimensional text features, the model "
                            f"gives {text_dim}; pass the run's own aggregator, or --no-aggregator")
        print(f"aggregator: {agg_path}")
    info["aggregator"] = agg_path if aggregator is not None else None
    report = evaluate(model, tokenizer, args.shards, args.split, aggregator, device=device,
                      image_size=info["image_size"], batch_size=args.batch_size, num_workers=args.num_workers,
                      backend=args.backend, label_zeroshot=True, zeroshot=zeroshot,
                      progress=True)
    report.write(args.out, title=f"wfa eval: {info['name']} on {args.split}", extra={"model": info})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``scripts/eval_retrieval.py``): same options as ``wfa eval``."""
    parser = argparse.ArgumentParser(prog="eval_retrieval.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except WfaError as error:
        print(f"eval_retrieval.py: error: {error}", file=sys.stderr)
        return error.exit_code
