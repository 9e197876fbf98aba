"""Studies a user can run on their own shards without writing a config.

``choose-method``: a small compute-matched screen of the candidate training methods, every arm given the same
training FLOPs, at least two seeds so that the seed noise is measured, a small model by default. The candidates
(:data:`CANDIDATES`) span the choices the measurements so far leave open; fixed fusion (``mean``, ``bleu``,
``attention``) is left out because it trails the others by several points wherever it was measured
(BENCHMARKS.md), and ``wmultipos`` / ``hybrid`` because they did not separate from ``multipos`` there.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from wfa.errors import StudyError
from wfa.study.config import Arm, Budget, ShardSource, StudyConfig, check_study

#: the arms of ``choose-method`` and why each is there
CANDIDATES = {
    "pairs": "the classic expansion, one sample per caption: the reference every arm is compared with",
    "random": "one caption drawn per image and visit (open_clip's practice): the cheapest text side",
    "pairs-dedup": "pairs with an image's copies of a caption counted once: do repeated captions cost quality?",
    "multipos": "every caption of an image as a positive: the most text signal per image encoded",
    "bleu-subset": "BLEU-weighted fusion of a random subset of captions per visit: weighted aggregation without "
                   "fixed fusion's overfitting",
}
PRESETS = ("choose-method",)
DEFAULT_MINUTES = 20.0


def choose_method(shards: str | Path, *, minutes: float | None = None, budget_flops: float | None = None,
                  seeds: int = 2, arms: Sequence[str] | None = None, out: str | Path | None = None,
                  overrides: Sequence[str] = ()) -> StudyConfig:
    """The ``choose-method`` study of the shards in ``shards`` (train, val and test splits): the :data:`CANDIDATES`
    (or ``arms``) x ``seeds`` seeds, compute-matched within ``minutes`` of wall time for the whole screen or
    ``budget_flops`` training FLOPs per run, ``wfa-vit-tiny`` at 64 px, batch 32, four validations per run;
    ``overrides`` (``key=value``) change any run-config key for every arm (e.g. ``model.name=ViT-B-32``)."""
    from wfa.data.loader import read_index

    shards = Path(shards)
    try:
        index = read_index(shards)
    except (OSError, ValueError) as error:
        raise StudyError(f"--shards {shards}: {error}") from None
    splits = index.get("splits", {})
    missing = [s for s in ("train", "val", "test") if not splits.get(s, {}).get("num_samples")]
    if missing:
        raise StudyError(f"--shards {shards} has no {', '.join(missing)} split: the screen trains on train, selects "
                         "on val and reports on test")
    if seeds < 2:
        raise StudyError(f"--seeds {seeds}: the screen needs at least 2 seeds to measure the seed noise")
    if minutes is not None and budget_flops is not None:
        raise StudyError("give --minutes or --budget-flops, not both")
    chosen = list(arms or CANDIDATES)
    unknown = [a for a in chosen if a not in CANDIDATES]
    if unknown:
        raise StudyError(f"--arms {','.join(unknown)}: the choose-method arms are {', '.join(CANDIDATES)}")
    n_train = splits["train"]["num_samples"]
    base = {"data": {"shards": str(shards), "split": "train", "val_split": "val", "image_size": 64, "augment": True,
                     "shuffle": min(n_train, 10_000), "max_captions": 5, "num_workers": 0},
            "model": {"name": "wfa-vit-tiny", "pretrained": None},
            "train": {"batch_size": min(32, n_train), "lr": 5e-4, "weight_decay": 0.2, "grad_clip": 1.0,
                      "precision": "auto"}}
    budget = (Budget(flops=budget_flops) if budget_flops is not None
              else Budget(minutes=minutes if minutes is not None else DEFAULT_MINUTES))
    budget.validations, budget.warmup_fraction = 4, 0.1
    out = Path(out) if out is not None else Path(f"choose-method-{shards.name}")
    study = StudyConfig(name="choose-method", dataset=f"{shards.name} (your shards)", base=base, set=list(overrides),
                        arms=[Arm(name, [f"method={name}"], name) for name in chosen], seeds=list(range(seeds)),
                        budget=budget, shards=ShardSource(path=str(shards)), out=str(out),
                        runs_dir=str(out / "run-folders"), reference_arm="pairs" if "pairs" in chosen else chosen[0])
    check_study(study)
    return study
