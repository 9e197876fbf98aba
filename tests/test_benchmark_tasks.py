"""Benchmark tasks (wfa.eval.tasks): the registry, folder and csv listings with what they leave out, splits, the
UCM class-folder tree written by scripts/scene_folders.py, RSICD's classes read from labels.csv."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import wfa.eval.tasks as tasks
from wfa.eval.tasks import Item, Task, create_task, list_tasks, readable_name, register_task, stratified_subset

REPO = Path(__file__).resolve().parents[1]


def write_image(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)
    return path


def test_registry_lists_creates_and_extends(monkeypatch, tmp_path):
    assert {"folder", "csv", "karpathy", "ucm", "rsicd", "bigearthnet"} <= set(list_tasks())
    with pytest.raises(ValueError, match="unknown task kind 'aid'; choose one of"):
        create_task("aid")
    with pytest.raises(ValueError, match="needs the argument 'root'"):
        create_task("folder")
    with pytest.raises(ValueError, match="has no argument colour"):
        create_task("folder", root=tmp_path, colour="red")
    with pytest.raises(ValueError, match="test_fraction must be in"):
        create_task("folder", root=tmp_path, test_fraction=0)

    monkeypatch.setattr(tasks, "_TASKS", dict(tasks._TASKS))

    @register_task("two-images")
    class TwoImages(Task):
        """A user's task: two files of fixed classes."""

        def list_items(self):
            return [Item("a", str(write_image(tmp_path / "a.png", 10)), ("sea",)),
                    Item("b", str(write_image(tmp_path / "b.png", 200)), ("land",))]

        def read(self, item):
            return Image.open(item.ref).convert("RGB")

    made = create_task("two-images", test_fraction=1.0)
    assert made.classes == ["land", "sea"] and list(made.targets()) == [1, 0]
    assert list(made.partition().test) == [0, 1]
    with pytest.raises(ValueError, match="already registered"):
        register_task("two-images")(TwoImages)


def test_readable_names():
    assert readable_name("BaseballField") == "baseball field"
    assert readable_name("storage_tanks") == "storage tanks"
    assert readable_name("sea-lake") == "sea lake"
    assert readable_name("RSSCN7Forest") == "rsscn7 forest"
    assert readable_name("playfields") == "playfields"


def test_folder_listing_counts_what_it_leaves_out(tmp_path):
    root = tmp_path / "scenes"
    for c in ("beach", "forest"):
        for i in range(5):
            write_image(root / c / f"{i}.jpg", 40 * i)
    write_image(root / "forest" / "nested" / "deep.png")  # nested files belong to their class folder
    (root / "forest" / "notes.txt").write_text("not an image")
    (root / "forest" / ".DS_Store").write_bytes(b"")
    (root / "loose.jpg").write_bytes(b"")
    outside = write_image(tmp_path / "elsewhere" / "x.jpg")
    os.symlink(outside, root / "beach" / "link.jpg")
    (root / "empty").mkdir()
    task = create_task("folder", root=root)
    assert task.classes == ["beach", "forest"] and len(task.items) == 11
    assert dict(task.skipped) == {"not an image file": 1, "file outside a class folder": 1,
                                  "link out of the folder": 1}
    assert "forest/nested/deep.png" in {item.id for item in task.items}
    part = task.partition()
    assert len(part.test) == 1 + 1 and not set(part.test) & set(part.train)  # 0.2 of 5 and of 6, rounded
    assert np.array_equal(part.test, create_task("folder", root=root).partition().test)
    assert not np.array_equal(part.test, create_task("folder", root=root, split_seed=1).partition().test)
    assert len(create_task("folder", root=root, test_fraction=1.0).partition().test) == 11
    excluded = create_task("folder", root=root, exclude="forest")
    assert excluded.classes == ["beach"] and excluded.skipped["class excluded (forest)"] == 6


def test_folder_with_split_folders(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for c in ("a", "b"):
            for i in range(n):
                write_image(tmp_path / split / c / f"{i}.png")
    task = create_task("folder", root=tmp_path)
    part = task.partition()
    assert len(task.items) == 10 and len(part.test) == 4 and len(part.train) == 6
    assert {task.items[i].split for i in part.test} == {"test"}
    with pytest.raises(ValueError, match="no image has split 'val'"):
        create_task("folder", root=tmp_path, split="val").partition()


def test_csv_listing_is_safe_and_multilabel(tmp_path):
    images = tmp_path / "images"
    for name in ("a.png", "b.png", "c.png", "d.png"):
        write_image(images / name)
    write_image(tmp_path / "secret.png")
    table = tmp_path / "labels.csv"
    table.write_text("filename,label,split\na.png,sea;ship,train\nb.png,land,test\nc.png,sea,train\n"
                     "../secret.png,sea,train\n/etc/hostname,land,test\nmissing.png,land,test\nd.png, land ;sea ,test\n")
    task = create_task("csv", file=table, images=images, separator=";")
    assert task.multilabel and task.classes == ["land", "sea", "ship"]
    assert dict(task.skipped) == {"unsafe path": 2, "missing image": 1}
    assert task.targets().tolist() == [[0, 1, 1], [1, 0, 0], [0, 1, 0], [1, 1, 0]]
    assert [task.items[i].id for i in task.partition().test] == ["b.png", "d.png"]
    single = tmp_path / "single.csv"
    single.write_text("filename,class\na.png,sea\nb.png,land\n")
    assert create_task("csv", file=single, images=images).targets().tolist() == [1, 0]
    single.write_text("filename,class\na.png,sea\na.png,land\n")
    with pytest.raises(ValueError, match="line 3: a.png is listed twice"):
        create_task("csv", file=single, images=images).items
    single.write_text("name,class\na.png,sea\n")
    with pytest.raises(ValueError, match="needs the columns filename and label"):
        create_task("csv", file=single, images=images).items
    single.write_text("filename,class\nx.tif,sea\ny.tif,land\n")
    with pytest.raises(ValueError, match="none of the 2 files .* is in"):
        create_task("csv", file=single, images=images).items


def test_stratified_subset():
    targets = np.repeat([0, 1, 2], [10, 1, 4])
    chosen = stratified_subset(targets, 0.3, seed=0)
    assert [int(np.sum(targets[chosen] == c)) for c in range(3)] == [3, 0, 1]
    assert np.array_equal(chosen, np.sort(chosen))


def test_ucm_class_folder_tree_lists_what_the_ucm_task_lists(ucm_dir, tmp_path):
    out = tmp_path / "ucm-scenes"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "scene_folders.py"), "--root", str(ucm_dir),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "linked 2100" in done.stdout or "copied 2100" in done.stdout
    folder, ucm = create_task("folder", root=out), create_task("ucm", root=ucm_dir)
    assert folder.classes == ucm.classes and len(folder.items) == len(ucm.items) == 2100

    def by_file(task, part):
        return {(Path(task.items[i].ref).name, task.items[i].labels) for i in part}

    assert by_file(folder, folder.partition().test) == by_file(ucm, ucm.partition().test)
    assert by_file(folder, folder.partition().train) == by_file(ucm, ucm.partition().train)
    again = subprocess.run([sys.executable, str(REPO / "scripts" / "scene_folders.py"), "--root", str(ucm_dir),
                            "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "exists" in again.stderr


def test_rsicd_scene_classes_from_labels_csv(rsicd_dir):
    rsicd = create_task("rsicd", root=rsicd_dir)
    assert len(rsicd.classes) == 30 and "playfields" not in rsicd.classes
    assert rsicd.skipped == {"class excluded (playfields)": 661} and len(rsicd.items) == 10921 - 661
    assert len(rsicd.partition().test) == 1027
    # the csv task reads the same labels directly (no splits there: a stratified fifth is evaluated)
    table = create_task("csv", file=rsicd_dir / "labels.csv", images=rsicd_dir / "images", exclude="playfields")
    assert table.classes == rsicd.classes and len(table.items) == len(rsicd.items)
    assert abs(len(table.partition().test) - 0.2 * len(table.items)) < 30


def test_bigearthnet_labels_and_split_from_metadata(ben_v2_dir, tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wfa.data.bigearthnet import BigEarthNetReader

    patch = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_43"
    metadata = tmp_path / "metadata.parquet"
    pq.write_table(pa.table({"patch_id": [patch], "labels": [["Coniferous forest", "Inland waters"]],
                             "split": ["test"]}), metadata)

    def no_band_reads(*args, **kwargs):
        raise AssertionError("the listing read a patch although the metadata names it")

    task = create_task("bigearthnet", root=ben_v2_dir, metadata=metadata, mode="rgb")
    monkeypatch.setattr(BigEarthNetReader, "sample_at", no_band_reads)
    assert [(i.id, i.labels, i.split) for i in task.items] == [(patch, ("Coniferous forest", "Inland waters"),
                                                                "test")]
    assert task.targets().shape == (1, 19) and task.targets().sum() == 2
    monkeypatch.undo()
    image = task.read(task.items[0])
    assert image.mode == "RGB" and image.size == (120, 120)
    with pytest.raises(ValueError, match="no usable labelled image .no labels: 1"):
        create_task("bigearthnet", root=ben_v2_dir, mode="s2").items
