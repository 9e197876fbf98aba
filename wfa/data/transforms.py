"""Image transforms for the loader: RGB (torchvision v2) and multispectral (C x H x W tensors).

RGB images arrive as PIL images and leave as float32 ``[3, S, S]`` tensors normalised with open_clip's
OpenAI mean/std, so features match what open_clip's own preprocessing gives. Multispectral arrays
(``C x H x W``, any numeric dtype) are normalised per band with the shard index's ``band_stats`` and
resized to ``S x S``; open_clip's preprocessing is PIL/3-channel only, hence these tensor ops of our own.

Training augmentation: random resized crop (RGB) and random horizontal and vertical flips (both
modalities) — aerial images have no canonical orientation. Evaluation: resize the short side, center crop.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torchvision.transforms import v2

MODALITIES = ("rgb", "multispectral")
# Fraction of the image area a training crop keeps; wider than open_clip's (0.9, 1.0) because the RS
# caption sets are small (UCM: 1,680 training images) and benefit from stronger augmentation.
DEFAULT_CROP_SCALE = (0.5, 1.0)
_MIN_STD = 1e-6

Transform = Callable[[object], torch.Tensor]


def rgb_transform(image_size: int, train: bool, crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE) -> Transform:
    """PIL RGB image -> normalised float32 ``[3, image_size, image_size]`` tensor (torchvision v2)."""
    if train:
        geometry = [
            v2.RandomResizedCrop(image_size, scale=crop_scale, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
        ]
    else:
        geometry = [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    # Geometry runs on the uint8 tensor (cheaper than on float), then scale to [0, 1] and normalise.
    return v2.Compose(
        [
            v2.ToImage(),
            *geometry,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(OPENAI_DATASET_MEAN), std=list(OPENAI_DATASET_STD)),
        ]
    )


class MultispectralTransform:
    """``C x H x W`` array -> per-band normalised float32 ``[C, image_size, image_size]`` tensor.

    A bilinear (antialiased) resize to ``image_size x image_size``, then per band ``c``:
    ``(x - mean[c]) / std[c]``; in training, random horizontal and vertical flips.
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], train: bool) -> None:
        if len(mean) != len(std):
            raise ValueError(f"band_stats mean has {len(mean)} bands but std has {len(std)}")
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).clamp_min(_MIN_STD).view(-1, 1, 1)
        self.train = train

    def __call__(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Normalise, resize and (in training) flip one ``C x H x W`` array."""
        x = torch.as_tensor(np.asarray(array), dtype=torch.float32)
        if x.ndim != 3 or x.shape[0] != self.mean.shape[0]:
            raise ValueError(
                f"multispectral image has shape {tuple(x.shape)}; expected C x H x W with C = "
                f"{self.mean.shape[0]} bands as in the index's band_stats"
            )
        if x.shape[1:] != (self.image_size, self.image_size):
            x = F.interpolate(
                x[None], size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
            )[0]
        # after the resize (its weights sum to 1, so it commutes with the affine normalisation up to
        # rounding): fewer pixels to normalise when the model's size is below the grid's
        x = (x - self.mean) / self.std
        if self.train:
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
            if torch.rand(()) < 0.5:
                x = x.flip(-2)
        return x.contiguous()


def build_transform(
    modality: str,
    image_size: int,
    train: bool,
    band_stats: dict | None = None,
    crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE,
) -> Transform:
    """Return the image transform for ``modality`` ("rgb" or "multispectral").

    ``train=True`` adds augmentation (RGB: random resized crop with ``crop_scale`` + H/V flips;
    multispectral: H/V flips); ``train=False`` is deterministic (RGB: resize + center crop;
    multispectral: resize). ``band_stats`` (``{"mean": [...], "std": [...]}``, one value per band, as
    stored in the shard ``index.json``) is required for multispectral input.
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if modality == "rgb":
        return rgb_transform(image_size, train, crop_scale)
    if modality == "multispectral":
        if not band_stats or "mean" not in band_stats or "std" not in band_stats:
            raise ValueError(
                "multispectral transform needs band_stats {'mean': [...], 'std': [...]} (the shard index.json "
                "stores them; rewrite the shards with `wfa shards` if they are missing)"
            )
        return MultispectralTransform(image_size, band_stats["mean"], band_stats["std"], train)
    raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
