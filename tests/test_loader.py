"""Tests for the streaming shard loader (wfa.data.loader) and the image transforms (wfa.data.transforms).

Shards are written here with webdataset.TarWriter in exactly the writer's format (docs/shard-format.md), so the
loader is tested independently of the writer; one test reads back real UCM shards when they exist.
"""
from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import webdataset as wds
from PIL import Image

from wfa.data.loader import LoaderConfig, build_eval_loader, build_loader, caption_key, read_index
from wfa.data.transforms import build_transform

IMAGE_SIZE = 24
BANDS = ["B02", "B03", "B04", "B08"]


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.get_tokenizer("ViT-B-32")


def _captions(sample_no: int) -> list[str]:
    """1..7 captions, varying per sample, all distinct and nonempty."""
    k = 1 + sample_no % 7
    return [f"image {sample_no} caption {j} with some words" for j in range(k)]


def _weights(k: int) -> list[float]:
    w = np.arange(1, k + 1, dtype=np.float64)
    return list(w / w.sum())


def _band_image(sample_no: int) -> np.ndarray:
    """C x H x W float32 image, constant per band: band c holds 100 * (c + 1) + sample_no."""
    values = 100.0 * np.arange(1, len(BANDS) + 1) + sample_no
    return np.broadcast_to(values[:, None, None], (len(BANDS), IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)


def write_shards(out: Path, shard_sizes: dict[str, list[int]], modality: str = "rgb", with_weights: bool = True) -> dict:
    """Write ``{split}-NNNNNN.tar`` shards + index.json in the wfa shard format; return the index."""
    out.mkdir(parents=True, exist_ok=True)
    splits, sample_no, all_k = {}, 0, []
    for split, sizes in shard_sizes.items():
        entries = []
        for shard_no, size in enumerate(sizes):
            name = f"{split}-{shard_no:06d}.tar"
            shard_captions = 0
            with wds.TarWriter(str(out / name)) as sink:
                for _ in range(size):
                    captions = _captions(sample_no)
                    all_k.append(len(captions))
                    shard_captions += len(captions)
                    meta = {"id": f"{split}-{sample_no}", "captions": captions, "split": split,
                            "labels": [f"class{sample_no % 3}"], "meta": {}}
                    if with_weights:
                        meta["weights"] = {"bleu": _weights(len(captions))}
                    sample = {"__key__": f"{split}_{sample_no:05d}", "json": json.dumps(meta).encode()}
                    buffer = io.BytesIO()
                    if modality == "rgb":
                        rng = np.random.default_rng(sample_no)
                        pixels = rng.integers(0, 256, (IMAGE_SIZE + 8, IMAGE_SIZE + 8, 3), dtype=np.uint8)
                        Image.fromarray(pixels).save(buffer, format="JPEG")
                        sample["jpg"] = buffer.getvalue()
                    else:
                        meta["bands"] = BANDS
                        sample["json"] = json.dumps(meta).encode()
                        np.save(buffer, _band_image(sample_no))
                        sample["npy"] = buffer.getvalue()
                    sink.write(sample)
                    sample_no += 1
            entries.append({"name": name, "num_samples": size, "num_captions": shard_captions})
        splits[split] = {"num_samples": sum(sizes), "shards": entries}
    multispectral = modality == "multispectral"
    index = {
        "format": "wfa-shards", "writer_version": "1.0",  # the npy layout of writer version 1 "source": {"kind": "test"},
        "num_samples": sample_no, "read": sample_no, "written": sample_no, "rejected": 0, "rejected_reasons": {},
        "splits": splits,
        "captions": {"k_min": min(all_k), "k_max": max(all_k), "k_mean": float(np.mean(all_k)),
                     "num_captions": int(sum(all_k))},
        "modality": modality,
        "bands": BANDS if multispectral else None,
        "band_stats": {"mean": [50.0, 100.0, 150.0, 200.0], "std": [10.0, 20.0, 30.0, 40.0]} if multispectral else None,
        "image_size": [IMAGE_SIZE, IMAGE_SIZE] if multispectral else None,
    }
    (out / "index.json").write_text(json.dumps(index))
    return index


@pytest.fixture(scope="module")
def rgb_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rgb")
    write_shards(out, {"train": [6] * 8, "test": [5, 4]})
    return out


@pytest.fixture(scope="module")
def ms_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ms")
    write_shards(out, {"train": [5, 5]}, modality="multispectral")
    return out


def _all_batches(loader) -> list[dict]:
    return list(loader)


def _sample_no(image_id: str) -> int:
    return int(image_id.split("-")[1])


def test_batches_shapes_masks_weights_and_cap(rgb_dir, tokenizer):
    cfg = LoaderConfig(shards=str(rgb_dir), split="train", batch_size=5, max_captions=4, image_size=16)
    loader, steps = build_eval_loader(cfg, tokenizer)
    batches = _all_batches(loader)
    assert len(batches) == steps == len(loader) == 10  # 48 samples, partial last batch
    seen = []
    for batch in batches:
        b = len(batch["image_ids"])
        assert batch["images"].shape == (b, 3, 16, 16) and batch["images"].dtype == torch.float32
        k = batch["tokens"].shape[1]
        assert batch["tokens"].dtype == torch.long and batch["tokens"].shape == (b, k, 77)
        assert batch["caption_mask"].dtype == torch.bool and batch["weights"].dtype == torch.float32
        assert k == max(len(c) for c in batch["captions"]) <= 4
        for row, image_id in enumerate(batch["image_ids"]):
            full = _captions(_sample_no(image_id))
            kept = full[:4]  # the first max_captions in file order
            assert batch["captions"][row] == kept
            n = len(kept)
            assert batch["caption_mask"][row].tolist() == [True] * n + [False] * (k - n)
            expected = np.asarray(_weights(len(full))[:n])
            np.testing.assert_allclose(batch["weights"][row, :n].numpy(), expected / expected.sum(), rtol=1e-6)
            assert batch["weights"][row, n:].abs().sum() == 0
            assert batch["weights"][row].sum().item() == pytest.approx(1.0, abs=1e-6)
            assert torch.equal(batch["tokens"][row, :n], tokenizer(kept))
            assert batch["tokens"][row, n:].abs().sum() == 0
            assert batch["caption_keys"][row].tolist() == [caption_key(c) for c in kept] + [-1] * (k - n)
        seen += batch["image_ids"]
    assert sorted(seen, key=_sample_no) == [f"train-{i}" for i in range(48)]
    assert loader.stats.as_dict()["skipped"] == 0 and loader.stats.as_dict()["samples"] == 48


def test_caption_keys_name_copies_across_images():
    """Copies (equal after white-space collapsing and lower-casing, the BLEU-uniqueness copies) share a key, also
    between images; other texts do not; keys are non-negative 63-bit integers (-1 is padding)."""
    assert caption_key("Many planes  are parked.") == caption_key(" many planes are parked. ")
    assert caption_key("many planes are parked.") != caption_key("many planes are parked")
    assert 0 <= caption_key("a road") < 2**63


def test_train_epochs_full_batches_deterministic_by_seed(rgb_dir, tokenizer):
    cfg = LoaderConfig(shards=str(rgb_dir), split="train", batch_size=5, image_size=16, augment=True,
                       shuffle=20, seed=3)
    loader, steps = build_loader(cfg, tokenizer)
    assert steps == 48 // 5 == len(loader)
    epoch0 = [batch["image_ids"] for batch in loader]
    epoch1 = [batch["image_ids"] for batch in loader]  # the next iteration is the next epoch
    assert len(epoch0) == len(epoch1) == steps and all(len(ids) == 5 for ids in epoch0 + epoch1)
    assert len(set(sum(epoch0, []))) == 45  # no repeats within an epoch: the 3-sample tail is dropped
    assert epoch0 != epoch1
    again, _ = build_loader(cfg, tokenizer)
    assert [batch["image_ids"] for batch in again] == epoch0
    again.set_epoch(1)
    assert [batch["image_ids"] for batch in again] == epoch1
    other, _ = build_loader(LoaderConfig(**{**cfg.__dict__, "seed": 4}), tokenizer)
    assert [batch["image_ids"] for batch in other] != epoch0


def test_multispectral_band_normalisation(ms_dir, tokenizer):
    cfg = LoaderConfig(shards=str(ms_dir), split="train", batch_size=4, image_size=16)
    loader, steps = build_eval_loader(cfg, tokenizer)
    batches = _all_batches(loader)
    assert steps == 3 and sum(len(b["image_ids"]) for b in batches) == 10
    mean, std = np.array([50.0, 100.0, 150.0, 200.0]), np.array([10.0, 20.0, 30.0, 40.0])
    for batch in batches:
        assert batch["images"].shape == (len(batch["image_ids"]), 4, 16, 16)
        for row, image_id in enumerate(batch["image_ids"]):
            raw = _band_image(_sample_no(image_id))[:, 0, 0]
            expected = torch.tensor((raw - mean) / std, dtype=torch.float32).view(4, 1, 1).expand(4, 16, 16)
            torch.testing.assert_close(batch["images"][row], expected)
    train_loader, train_steps = build_loader(LoaderConfig(**{**cfg.__dict__, "augment": True}), tokenizer)
    assert train_steps == 2 and all(b["images"].shape == (4, 4, 16, 16) for b in train_loader)


def test_pairs_view_one_item_per_caption(rgb_dir, tokenizer):
    cfg = LoaderConfig(shards=str(rgb_dir), split="test", batch_size=4, max_captions=5, image_size=16, view="pairs")
    expected = Counter()
    for i in range(48, 57):
        for caption in _captions(i)[:5]:
            expected[(f"test-{i}", caption)] += 1
    loader, steps = build_eval_loader(cfg, tokenizer)
    pairs = Counter()
    for batch in loader:
        b = len(batch["image_ids"])
        assert batch["tokens"].shape == (b, 1, 77) and batch["caption_mask"].all()
        assert torch.equal(batch["weights"], torch.ones(b, 1))
        for image_id, captions in zip(batch["image_ids"], batch["captions"]):
            pairs[(image_id, captions[0])] += 1
    assert pairs == expected
    assert loader.num_samples == sum(expected.values())
    train, train_steps = build_loader(cfg, tokenizer)
    assert train_steps == sum(expected.values()) // 4
    assert sum(1 for _ in train) == train_steps
    # without a cap below k_max the per-shard caption counts come from index.json
    uncapped, _ = build_eval_loader(LoaderConfig(**{**cfg.__dict__, "max_captions": 7}), tokenizer)
    assert uncapped.num_samples == sum(len(_captions(i)) for i in range(48, 57))
    assert sum(len(b["image_ids"]) for b in uncapped) == uncapped.num_samples


def _same_image_pairs_per_batch(cfg: LoaderConfig, tokenizer, epochs: int = 2) -> float:
    """Mean number of same-image pairs within a training batch of the pairs view."""
    loader, steps = build_loader(cfg, tokenizer)
    collisions = 0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            counts = Counter(batch["image_ids"])
            collisions += sum(n * (n - 1) // 2 for n in counts.values())
    return collisions / (epochs * steps)


def test_pairs_view_shuffle_buffer_counts_images(tmp_path, tokenizer):
    """``shuffle`` counts images: the pairs view gets max_captions x the slots, so the captions of an image
    spread over the epoch as with a global shuffle (~0.1 same-image pairs per batch of 8 here) instead of
    staying together in a buffer of as many pairs as images (~0.9 with 50 pairs)."""
    write_shards(tmp_path, {"train": [30] * 8})  # 240 images, 1..5 kept captions each
    cfg = LoaderConfig(shards=str(tmp_path), split="train", batch_size=8, max_captions=5, image_size=16,
                       view="pairs", shuffle=240, seed=1)
    whole_split = _same_image_pairs_per_batch(cfg, tokenizer)
    ten_images = _same_image_pairs_per_batch(LoaderConfig(**{**cfg.__dict__, "shuffle": 10}), tokenizer)
    assert whole_split < 0.25 and ten_images > 3 * whole_split, (whole_split, ten_images)


def test_eval_pass_with_workers_covers_every_sample_once(rgb_dir, tokenizer):
    cfg = LoaderConfig(shards=str(rgb_dir), split="train", batch_size=4, image_size=16, num_workers=2)
    loader, steps = build_eval_loader(cfg, tokenizer)
    batches = _all_batches(loader)
    ids = [i for b in batches for i in b["image_ids"]]
    assert len(batches) == steps
    assert sorted(ids, key=_sample_no) == [f"train-{i}" for i in range(48)]


@pytest.mark.parametrize("train", [True, False])
def test_two_ranks_two_workers_disjoint_and_covering(rgb_dir, tokenizer, train):
    cfg = LoaderConfig(shards=str(rgb_dir), split="train", batch_size=4, image_size=16, num_workers=2, shuffle=10)
    per_rank, steps = [], []
    for rank in range(2):
        loader, n = build_loader(cfg, tokenizer, world_size=2, rank=rank, train=train)
        ids = [batch["image_ids"] for batch in loader]
        assert len(ids) == n
        steps.append(n)
        per_rank.append([i for batch in ids for i in batch])
    assert steps[0] == steps[1] == 48 // (4 * 2)
    assert not set(per_rank[0]) & set(per_rank[1])
    assert len(per_rank[0]) == len(set(per_rank[0])) and len(per_rank[1]) == len(set(per_rank[1]))
    assert sorted(per_rank[0] + per_rank[1], key=_sample_no) == [f"train-{i}" for i in range(48)]


def test_train_uneven_ranks_take_equal_steps(tmp_path, tokenizer):
    write_shards(tmp_path, {"train": [9, 2, 4, 3, 7], "small": [2, 2]})  # uneven shards
    cfg = LoaderConfig(shards=str(tmp_path), split="train", batch_size=3, image_size=16, num_workers=2)
    counts = []
    for rank in range(2):
        loader, steps = build_loader(cfg, tokenizer, world_size=2, rank=rank)
        counts.append((steps, sum(1 for _ in loader)))
    assert counts == [(4, 4), (4, 4)]  # 25 // (3 * 2)
    # each worker holds fewer samples than a batch: batches run across passes instead of vanishing
    small, steps = build_loader(LoaderConfig(**{**cfg.__dict__, "split": "small"}), tokenizer)
    assert steps == 1 and [len(b["image_ids"]) for b in small] == [3]


def test_persistent_workers_follow_the_epoch(rgb_dir, tokenizer):
    cfg = LoaderConfig(shards=str(rgb_dir), split="train", batch_size=4, image_size=16, num_workers=2, shuffle=12)
    loader, steps = build_loader(cfg, tokenizer)
    epochs = [[batch["image_ids"] for batch in loader] for _ in range(2)]
    assert [len(e) for e in epochs] == [steps, steps] == [12, 12]
    assert epochs[0] != epochs[1] and sorted(sum(epochs[0], [])) == sorted(sum(epochs[1], []))
    fresh, _ = build_loader(cfg, tokenizer)
    fresh.set_epoch(1)
    assert [batch["image_ids"] for batch in fresh] == epochs[1]


def test_real_ucm_val_split_read_back(ucm_dir, tmp_path, tokenizer):
    from wfa.data.karpathy import KarpathyReader
    from wfa.data.writer import write_shards as wfa_write_shards

    document = json.loads((ucm_dir / "dataset.json").read_text())
    expected = {Path(e["filename"]).stem: [s["raw"] for s in e["sentences"]]
                for e in document["images"] if e["split"] == "val"}
    reader = KarpathyReader(ucm_dir / "dataset.json", ucm_dir / "images", splits=["val"])
    wfa_write_shards(reader, tmp_path, shard_size=100, progress=False)
    cfg = LoaderConfig(shards=str(tmp_path), split="val", batch_size=64, num_workers=2, image_size=32)
    loader, steps = build_eval_loader(cfg, tokenizer)
    seen = {}
    for batch in loader:
        assert batch["images"].shape[1:] == (3, 32, 32)
        torch.testing.assert_close(batch["weights"].sum(1), torch.ones(len(batch["image_ids"])))
        seen.update(zip(batch["image_ids"], batch["captions"]))
    assert len(seen) == 210 and loader.stats.skipped == 0
    assert {Path(i).stem: c for i, c in seen.items()} == expected


def test_resampled(rgb_dir, tokenizer):
    cfg = LoaderConfig(shards=str(rgb_dir), split="train", batch_size=4, image_size=16, resampled=True,
                       epoch_samples=20, num_workers=1)
    loader, steps = build_loader(cfg, tokenizer)
    assert steps == 5
    batches = _all_batches(loader)
    assert len(batches) == 5 and all(b["images"].shape == (4, 3, 16, 16) for b in batches)


def _corrupt_copy(src: Path, dst: Path) -> None:
    """Copy shards; in train-000001 garble one jpg, one json, drop one json; truncate train-000002."""
    dst.mkdir()
    for path in src.iterdir():
        (dst / path.name).write_bytes(path.read_bytes())
    shard = dst / "train-000001.tar"
    members = []
    with tarfile.open(shard) as tar:
        for member in tar:
            members.append((member, tar.extractfile(member).read()))
    with tarfile.open(shard, "w") as tar:
        for n, (member, data) in enumerate(members):
            if n == 0:  # first sample's jpg
                data = b"not a jpeg at all"
            elif n == 3:  # second sample's json
                data = b"{broken"
            elif n == 5:  # third sample's json is missing
                continue
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    truncated = dst / "train-000002.tar"
    truncated.write_bytes(truncated.read_bytes()[:2000])


def test_corrupt_members_are_skipped_and_counted(rgb_dir, tmp_path, tokenizer, caplog):
    corrupt = tmp_path / "corrupt"
    _corrupt_copy(rgb_dir, corrupt)
    cfg = LoaderConfig(shards=str(corrupt), split="train", batch_size=4, image_size=16)
    loader, _ = build_eval_loader(cfg, tokenizer)
    with caplog.at_level(logging.WARNING, logger="wfa.data.loader"):
        ids = [i for batch in loader for i in batch["image_ids"]]
    stats = loader.stats.as_dict()
    assert stats["decode_error"] == 1 and stats["bad_json"] == 1 and stats["missing_member"] >= 1
    assert stats["tar_error"] >= 1 and stats["skipped"] >= 4
    shard1 = {f"train-{i}" for i in range(6, 12)}
    assert {f"train-{i}" for i in range(9, 12)} <= set(ids)
    assert not {"train-6", "train-7", "train-8"} & set(ids)
    assert len(shard1 & set(ids)) == 3
    assert {f"train-{i}" for i in range(18, 48)} <= set(ids)  # everything after the truncated shard is read
    assert "decode_error" in caplog.text and "bad_json" in caplog.text


def test_missing_weights_are_recomputed(tmp_path, tokenizer):
    from wfa.redundancy import bleu_uniqueness

    write_shards(tmp_path, {"train": [4]}, with_weights=False)
    cfg = LoaderConfig(shards=str(tmp_path), split="train", batch_size=4, max_captions=3, image_size=16)
    loader, _ = build_eval_loader(cfg, tokenizer)
    (batch,) = list(loader)
    for row, image_id in enumerate(batch["image_ids"]):
        full = bleu_uniqueness(_captions(_sample_no(image_id)))[:3]
        np.testing.assert_allclose(batch["weights"][row, : len(full)].numpy(), full / full.sum(), rtol=1e-5)
    assert loader.stats.as_dict()["weights_recomputed"] == 4


def test_bad_configuration_errors(rgb_dir, tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="index.json"):
        read_index(tmp_path)
    with pytest.raises(ValueError, match="split 'nope'.*available"):
        build_loader(LoaderConfig(shards=str(rgb_dir), split="nope", batch_size=4), tokenizer)
    with pytest.raises(ValueError, match="no full global batch"):
        build_loader(LoaderConfig(shards=str(rgb_dir), split="test", batch_size=8), tokenizer, world_size=2, rank=0)
    with pytest.raises(ValueError, match="view"):
        LoaderConfig(shards=str(rgb_dir), split="train", batch_size=4, view="triples")
    with pytest.raises(ValueError, match="rank"):
        build_loader(LoaderConfig(shards=str(rgb_dir), split="train", batch_size=4), tokenizer, world_size=2, rank=2)


def test_transforms():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    for train in (True, False):
        x = build_transform("rgb", 16, train=train)(image)
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    # eval is deterministic; a flat mid-grey image normalises to (0.5 - mean) / std
    grey = Image.new("RGB", (20, 20), (128, 128, 128))
    x = build_transform("rgb", 8, train=False)(grey)
    mean, std = open_clip.constants.OPENAI_DATASET_MEAN, open_clip.constants.OPENAI_DATASET_STD
    expected = torch.tensor([(128 / 255 - m) / s for m, s in zip(mean, std)])
    torch.testing.assert_close(x[:, 4, 4], expected, rtol=1e-4, atol=1e-4)
    stats = {"mean": [1.0, 2.0], "std": [2.0, 4.0]}
    ms = build_transform("multispectral", 8, train=True, band_stats=stats)
    arr = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8)
    y = ms(arr)
    base = (torch.tensor(arr, dtype=torch.float32) - torch.tensor([1.0, 2.0]).view(2, 1, 1)) / torch.tensor([2.0, 4.0]).view(2, 1, 1)
    assert any(torch.equal(y, candidate) for candidate in (base, base.flip(-1), base.flip(-2), base.flip(-1).flip(-2)))
    with pytest.raises(ValueError, match="band_stats"):
        build_transform("multispectral", 8, train=False)
    with pytest.raises(ValueError, match="3 bands|shape"):
        build_transform("multispectral", 8, train=False, band_stats=stats)(np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="modality"):
        build_transform("sar", 8, train=False)
