"""The phases of a training run: image size and patch dropout as a function of training progress.

Two published levers make image tokens cheaper, and both are schedules over the run:

- **Resolution schedule** (CLIPA, RECLIP): the first ``data.low_res_fraction`` of the run trains at
  ``data.low_res_size`` px, the rest at ``data.image_size``. At the switch the positional embeddings are
  resized by open_clip's own ``resize_pos_embed`` (see :mod:`wfa.trainer`).
- **Patch dropout** (FLIP): ``model.patch_dropout`` of every image's patch tokens are dropped at random in
  training (open_clip's ``PatchDropout``; never at evaluation), except in the last ``train.unmasked_fraction``
  of the run (FLIP's unmasked tuning).

Progress is ``step / total_steps`` (or the fraction of a time budget used). :class:`Phases` is a pure function
of it, so a resumed run is in the same phase as the run it continues; a phase's name keys its FLOPs in the
accounting (each phase costs differently per step).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    """What one step trains with: input size in px and the fraction of patch tokens dropped."""

    image_size: int
    patch_dropout: float

    @property
    def name(self) -> str:
        """``"64px"``, ``"32px+pd0.5"``: the key of this phase's FLOPs."""
        return f"{self.image_size}px" + (f"+pd{self.patch_dropout:g}" if self.patch_dropout else "")


@dataclass(frozen=True)
class Phases:
    """The run's schedule: ``image_size`` (final), optional ``low_res_size`` for the first ``low_res_fraction``,
    ``patch_dropout`` until the last ``unmasked_fraction``."""

    image_size: int
    low_res_size: int | None = None
    low_res_fraction: float = 0.0
    patch_dropout: float = 0.0
    unmasked_fraction: float = 0.0

    def at(self, progress: float) -> Phase:
        """The phase of a step taken at ``progress`` in [0, 1] (the progress before the step)."""
        low = self.low_res_size is not None and progress < self.low_res_fraction
        masked = self.patch_dropout > 0 and progress < 1.0 - self.unmasked_fraction
        return Phase(self.low_res_size if low else self.image_size, self.patch_dropout if masked else 0.0)

    @property
    def scheduled(self) -> bool:
        """Whether any lever is on (otherwise every step is the one phase ``image_size``)."""
        return self.low_res_size is not None or self.patch_dropout > 0
