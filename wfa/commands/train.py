"""Train a CLIP model on wfa shards with one of the registered methods (one process).

    wfa train --config configs/ucm.yaml method=bleu-subset [--resume latest] [key=value ...]

Overrides are dotted config keys, e.g. ``method=mean train.lr=1e-3 train.steps=200 out=runs/x``.
This runs ONE process (CPU or one GPU). For several processes or GPUs use the same arguments with
accelerate:

    accelerate launch --num_processes 4 -m wfa.trainer --config configs/ucm.yaml method=pairs ...

(on CPU-only machines: ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2
--num_machines 1 --mixed_precision no --dynamo_backend no -m wfa.trainer ...``, or ``torchrun
--nproc_per_node 2 -m wfa.trainer ...``; ``accelerate launch --cpu --num_processes 2`` runs only one).
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--resume`` and ``key=value`` overrides (shared with ``python -m wfa.trainer``)."""
    from wfa.config import add_config_arguments

    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Train; print where the outputs are. Returns 2 on a configuration error."""
    from wfa.trainer import run_from_args

    return run_from_args(args, prog="wfa train")
