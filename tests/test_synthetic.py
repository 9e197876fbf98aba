"""The synthetic data set: determinism, distinct classes, redundant captions, multispectral bands."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from wfa.data.sample import Sample
from wfa.data.synthetic import CLASSES, S2_BANDS, SyntheticReader
from wfa.redundancy import normalize_caption


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return list(SyntheticReader(num_images=200, seed=0))


def test_same_seed_same_data_and_images_drawn_independently(samples: list[Sample]) -> None:
    again = SyntheticReader(num_images=200, seed=0)
    for index in (0, 7, 133, 199):
        one = again.sample_at(index)  # drawn on its own, without drawing the images before it
        assert np.array_equal(np.asarray(one.image), np.asarray(samples[index].image))
        assert one.captions == samples[index].captions
        assert (one.split, one.labels, one.meta) == (samples[index].split, samples[index].labels, samples[index].meta)
    other = SyntheticReader(num_images=200, seed=1).sample_at(7)
    assert not np.array_equal(np.asarray(other.image), np.asarray(samples[7].image))


def test_samples_are_well_formed(samples: list[Sample]) -> None:
    assert [s.id for s in samples] == [f"synthetic-{i:06d}" for i in range(200)]
    for s in samples:
        assert isinstance(s.image, Image.Image) and s.image.mode == "RGB" and s.image.size == (64, 64)
        assert len(s.captions) == 5 and all(c.strip() for c in s.captions)
        assert s.labels == [s.meta["scene"]] and s.labels[0] in CLASSES
        assert s.bands is None
    assert {s.labels[0] for s in samples} == set(CLASSES)


def test_splits_follow_the_fractions() -> None:
    reader = SyntheticReader(num_images=1000, seed=3)
    counts = {split: int(np.sum(reader._split == i)) for i, split in enumerate(("train", "val", "test"))}
    assert counts == {"train": 800, "val": 100, "test": 100}
    small = [s.split for s in SyntheticReader(num_images=20, splits=(0.5, 0.25, 0.25))]
    assert (small.count("train"), small.count("val"), small.count("test")) == (10, 5, 5)


def test_classes_have_distinct_mean_colours(samples: list[Sample]) -> None:
    means = {c: np.mean([np.asarray(s.image, np.float32).mean((0, 1)) for s in samples if s.labels[0] == c], axis=0)
             for c in CLASSES}
    for a, b in itertools.combinations(CLASSES, 2):
        assert np.linalg.norm(means[a] - means[b]) > 10, (a, b, means[a], means[b])
    # nearest class-mean colour already separates most images; the layouts separate the rest
    centroids = np.stack([means[c] for c in CLASSES])
    colours = np.stack([np.asarray(s.image, np.float32).mean((0, 1)) for s in samples])
    predicted = np.argmin(np.linalg.norm(colours[:, None] - centroids[None], axis=-1), axis=1)
    truth = np.array([CLASSES.index(s.labels[0]) for s in samples])
    assert np.mean(predicted == truth) > 0.6


def test_captions_are_redundant_like_ucm(samples: list[Sample]) -> None:
    exact = sum(len(set(s.captions)) < len(s.captions) for s in samples)
    variants = sum(len({normalize_caption(c).lower().rstrip(" .") for c in s.captions}) < len(set(s.captions))
                   for s in samples)
    assert exact >= 20, "some images repeat a caption exactly"
    assert variants >= 5, "some images hold case/space variants of a caption"
    assert any(len(set(s.captions)) == len(s.captions) for s in samples), "others have no repeat"


def test_captions_name_instance_attributes(samples: list[Sample]) -> None:
    """Water location and building density are in the captions, never contradicted."""
    mentioned = 0
    sided = [s for s in samples if s.labels[0] in ("beach", "lake") and s.meta["attributes"]["water"] in
             ("north", "south", "east", "west")]
    for s in sided:
        side = s.meta["attributes"]["water"]
        text = " ".join(s.captions).lower()
        mentioned += side in text
        assert not any(other in text for other in ("north", "south", "east", "west") if other != side)
    assert mentioned >= 0.6 * len(sided)
    residential = [s for s in samples if s.labels[0] == "residential"]
    for s in residential:
        text = " ".join(s.captions).lower()
        dense_words = ("many houses", "densely packed", "lots of buildings")
        sparse_words = ("a few houses", "sparse houses", "scattered buildings")
        assert not any(w in text for w in (sparse_words if s.meta["attributes"]["dense"] else dense_words))


def test_captions_per_image_is_configurable() -> None:
    reader = SyntheticReader(num_images=10, captions_per_image=8)
    assert all(len(s.captions) == 8 for s in reader)


def test_multispectral_bands_follow_materials() -> None:
    reader = SyntheticReader(num_images=20, image_size=48, multispectral=True)
    assert reader.bands == S2_BANDS and len(S2_BANDS) == 12
    rgb = SyntheticReader(num_images=20, image_size=48)
    for index in range(20):
        s = reader.sample_at(index)
        assert isinstance(s.image, np.ndarray) and s.image.shape == (12, 48, 48) and s.image.dtype == np.float32
        assert np.isfinite(s.image).all() and s.image.min() >= 0 and s.bands == S2_BANDS
        assert s.captions == rgb.sample_at(index).captions  # same scene, other sensor
        red, nir = s.image[S2_BANDS.index("B04")].mean(), s.image[S2_BANDS.index("B08")].mean()
        ndvi = (nir - red) / (nir + red)
        if s.labels[0] == "forest":
            assert ndvi > 0.5
        if s.labels[0] == "desert":
            assert ndvi < 0.25


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        SyntheticReader(num_images=0)
    with pytest.raises(ValueError):
        SyntheticReader(splits=(0.5, 0.5, 0.5))
    with pytest.raises(IndexError):
        SyntheticReader(num_images=3).sample_at(3)
