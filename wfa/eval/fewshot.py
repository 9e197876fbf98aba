"""Which training images a linear probe or k-NN sees: the full pool or n per class, and the held-out part
that picks its hyper-parameter (numpy only).

Every protocol run is a :class:`Draw` of indices into the training pool: ``fit`` (trained on while choosing
the hyper-parameter), ``val`` (scores each candidate) and ``final`` (trained on with the chosen value).

* full: ``val`` is a stratified ``VAL_FRACTION`` of the pool (seeded), ``fit`` the rest, ``final`` the
  whole pool (the held-out part is given back once the choice is made, as in CLIP's linear probes);
* n-shot: ``final`` = ``fit`` = n images per class drawn with the seed, ``val`` = ``min(n, 4)`` other images
  per class from the rest of the pool (CoOp's few-shot validation size), so the chosen value never
  sees the test images. A class with fewer images than asked gives what it has (counted in
  ``short_classes``). n-shot draws need single-label data.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wfa.eval.tasks import stratified_subset

VAL_FRACTION = 0.2
MAX_VAL_SHOTS = 4


@dataclass(frozen=True)
class Draw:
    """Indices into the training pool for one protocol run (see the module docstring)."""

    shots: int | None
    seed: int
    fit: np.ndarray
    val: np.ndarray
    final: np.ndarray
    short_classes: int = 0


def per_class(targets: np.ndarray, n: int, seed: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """(sorted indices of ``n`` seeded images of every class outside ``exclude``, classes that had fewer)."""
    rng = np.random.default_rng(seed)
    available = np.ones(len(targets), dtype=bool)
    if exclude is not None and len(exclude):
        available[exclude] = False
    chosen, short = [], 0
    for label in np.unique(targets):
        members = np.flatnonzero((targets == label) & available)
        short += int(len(members) < n)
        chosen.append(rng.permutation(members)[:n])
    return (np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)), short


def draw(targets: np.ndarray, shots: int | None, seed: int, multilabel: bool = False) -> Draw:
    """The indices of one protocol run: ``shots=None`` for the full pool, else n per class."""
    everything = np.arange(len(targets))
    if shots is None:
        val = stratified_subset(targets, VAL_FRACTION, seed, multilabel)
        return Draw(None, seed, np.setdiff1d(everything, val), val, everything)
    if multilabel:
        raise ValueError("n-shot draws need single-label data (n images per class)")
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    train, short = per_class(targets, shots, seed)
    # a second stream of the same seed: the validation images never overlap the training ones
    val, _ = per_class(targets, min(shots, MAX_VAL_SHOTS), seed + 1_000_003, exclude=train)
    return Draw(shots, seed, train, val, train, short)
