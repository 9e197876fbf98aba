"""Labelled image collections as registered tasks: what zero-shot classification, the linear probe and k-NN
run on.

``create_task(kind, **arguments)`` builds one, ``list_tasks()`` names the kinds, ``register_task(kind)`` adds
your own (a subclass of :class:`Task`). Each kind declares its arguments (:class:`Argument`: keyword, the
``wfa eval`` flag, help, default), so ``wfa eval --zeroshot KIND`` and a benchmark suite build the same
object from the same names. Built-in kinds:

* ``folder``: a class-per-folder tree (torchvision's ImageFolder layout), ``ROOT/<class>/**/<image>``, or
  with splits ``ROOT/<split>/<class>/**/<image>`` (split folders named ``train``, ``val``, ``validation``,
  ``test``). Class names are the folder names.
* ``csv``: a ``filename,label`` csv (the label column may be called ``label`` or ``class``; an optional
  ``split`` column) and an image folder; with ``separator`` the labels are sets (multi-label, scored by mAP).
* ``karpathy``: a Karpathy caption file (its splits) with a ``filename,class`` labels csv and the image
  folder; ``ucm`` and ``rsicd`` are the same for the UCM-Captions and RSICD folders (prompts of their own).
* ``bigearthnet``: BigEarthNet GeoTIFF trees (v1 or v2), 19-class multi-label; RGB models see a true-colour
  composite (B04, B03, B02), multispectral models the bands.

Every kind shares the split arguments: ``split`` names the evaluation part where the data has splits
(``all``: every image, zero-shot only), and data without splits is divided per class by ``test_fraction``
with ``split_seed`` (``test_fraction: 1.0``: every image is evaluated). The training pool (for the probe and
k-NN) is every image outside the evaluation part.

Items that cannot be used are never read silently: a listing skips files that are not images, names
that leave their folder (``..``, absolute paths, links out of the folder), missing files and unlabelled
entries, and counts them by reason in :attr:`Task.skipped`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from wfa.data.karpathy import IMAGE_EXTENSIONS, KarpathyReader, read_csv, read_rgb

#: image files a ``folder`` or ``csv`` task reads (case-insensitive).
FOLDER_IMAGE_EXTENSIONS = (*IMAGE_EXTENSIONS, ".bmp", ".webp")
#: folder names that make a ``folder`` tree a split layout.
SPLIT_FOLDERS = ("train", "val", "validation", "test")
#: Sentinel-2 reflectance (x 10^4) shown as white in the true-colour composite an RGB model sees.
TRUE_COLOUR_MAX = 3000.0

_TASKS: dict[str, type["Task"]] = {}


@dataclass(frozen=True)
class Argument:
    """One argument of a task kind: its ``wfa eval`` flag, help line, default, type, whether it is required,
    and whether it is a path (a suite resolves those against its data root)."""

    flag: str
    help: str
    default: Any = None
    type: Callable[[str], Any] = str
    required: bool = False
    path: bool = False


@dataclass(frozen=True)
class Item:
    """One labelled image: a stable ``id``, what :meth:`Task.read` needs (``ref``), its labels and split."""

    id: str
    ref: str
    labels: tuple[str, ...]
    split: str | None = None


@dataclass(frozen=True)
class Partition:
    """Indices into :attr:`Task.items`: the training pool and the evaluation part, and how they were made."""

    train: np.ndarray
    test: np.ndarray
    how: str


def register_task(kind: str) -> Callable[[type["Task"]], type["Task"]]:
    """Class decorator: make a :class:`Task` subclass available as ``kind`` (``create_task``, suites, ``wfa eval``)."""

    def decorate(cls: type[Task]) -> type[Task]:
        if kind in _TASKS:
            raise ValueError(f"a task kind named {kind!r} is already registered ({_TASKS[kind].__name__})")
        cls.kind = kind
        _TASKS[kind] = cls
        return cls

    return decorate


def list_tasks() -> list[str]:
    """The registered task kinds, sorted."""
    return sorted(_TASKS)


def task_class(kind: str) -> type["Task"]:
    """The class registered as ``kind``; a ``ValueError`` lists the kinds when it is unknown."""
    if kind not in _TASKS:
        raise ValueError(f"unknown task kind {kind!r}; choose one of {', '.join(list_tasks())}")
    return _TASKS[kind]


def create_task(kind: str, **arguments: Any) -> "Task":
    """A task of ``kind`` with ``arguments`` (see each kind's ``ARGUMENTS``); ``ValueError`` for bad ones."""
    return task_class(kind)(**arguments)


def readable_name(raw: str) -> str:
    """A prompt-ready class name from a folder or label name: ``BaseballField`` / ``baseball_field`` ->
    ``baseball field`` (CamelCase split, ``_`` and ``-`` as spaces, lower case)."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", raw)
    return " ".join(spaced.replace("_", " ").replace("-", " ").split()).lower()


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (followed through links) stays under ``root``."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except OSError:
        return False


def _safe_relative(name: str) -> bool:
    """A relative file name that cannot leave its folder: not absolute, no drive, no ``..``, no NUL."""
    relative = PurePosixPath(name)
    return bool(name) and not (relative.is_absolute() or PureWindowsPath(name).drive or ".." in relative.parts
                               or "\0" in name)


def _split_fraction(argument: str) -> Callable[[str], float]:
    def parse(value: Any) -> float:
        fraction = float(value)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"{argument} must be in (0, 1], got {value!r}")
        return fraction

    return parse


class Task:
    """A labelled image collection (see the module docstring). Subclasses list :attr:`items` and :meth:`read`.

    ``prompts`` names the section of the prompt file (``wfa/eval/zeroshot_templates.yaml``) whose
    templates and class names zero-shot uses; ``default`` holds the remote-sensing templates.
    """

    kind: ClassVar[str] = ""
    ARGUMENTS: ClassVar[dict[str, Argument]] = {}
    SPLIT_ARGUMENTS: ClassVar[dict[str, Argument]] = {
        "split": Argument("zeroshot-split", "evaluation split where the data has splits ('all': every image)",
                          "test"),
        "test_fraction": Argument("zeroshot-test-fraction", "share of each class evaluated where the data has no "
                                  "splits (1.0: every image)", 0.2, _split_fraction("test_fraction")),
        "split_seed": Argument("zeroshot-split-seed", "seed of that division", 0, int),
    }
    prompts: str = "default"
    multilabel: bool = False

    def __init__(self, **arguments: Any) -> None:
        declared = {**self.ARGUMENTS, **self.SPLIT_ARGUMENTS}
        unknown = sorted(set(arguments) - set(declared))
        if unknown:
            raise ValueError(f"task {self.kind!r} has no argument {', '.join(unknown)}; "
                             f"its arguments: {', '.join(declared)}")
        self.arguments: dict[str, Any] = {}
        for name, spec in declared.items():
            value = arguments.get(name)
            if value is None:
                if spec.required:
                    raise ValueError(f"task {self.kind!r} needs the argument {name!r} ({spec.help})")
                value = spec.default
            else:
                try:
                    value = spec.type(value)
                except (TypeError, ValueError) as error:
                    raise ValueError(f"task {self.kind!r}: argument {name}={value!r} is not valid ({error})") from None
            self.arguments[name] = value
        self.skipped: Counter[str] = Counter()

    # -- what subclasses provide

    def list_items(self) -> list[Item]:
        """Every usable item, in a stable order; unusable ones are counted in :attr:`skipped`."""
        raise NotImplementedError

    def read(self, item: Item) -> Any:
        """The image of ``item``: an RGB ``PIL.Image`` or a ``C x H x W`` array; raises on an unreadable file."""
        raise NotImplementedError

    @property
    def channels(self) -> int:
        """Input channels of the images :meth:`read` returns (3 for RGB)."""
        return 3

    def stat(self, item: Item) -> tuple:
        """What identifies the content of ``item`` cheaply for the feature cache (file size and mtime)."""
        st = os.stat(item.ref)
        return (st.st_size, st.st_mtime_ns)

    def class_list(self) -> list[str]:
        """The raw class names, sorted (for multi-label kinds with a fixed nomenclature: that list)."""
        return sorted({label for item in self.items for label in item.labels})

    # -- shared behaviour

    @cached_property
    def items(self) -> list[Item]:
        """The usable items (listed once)."""
        items = self.list_items()
        if not items:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in self.skipped.items()) or "nothing found"
            raise ValueError(f"task {self.name}: no usable labelled image ({reasons})")
        return items

    @cached_property
    def classes(self) -> list[str]:
        """The raw class names in the order of the class indices."""
        return self.class_list()

    @property
    def name(self) -> str:
        """A short description for messages: the kind and its main path."""
        paths = [str(v) for k, v in self.arguments.items() if k in ("root", "file", "captions") and v]
        return f"{self.kind}({paths[0]})" if paths else self.kind

    def targets(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """Class indices ``[N]`` (single-label) or a 0/1 matrix ``[N, C]`` (multi-label) of the items."""
        items = self.items if indices is None else [self.items[i] for i in indices]
        position = {c: i for i, c in enumerate(self.classes)}
        if self.multilabel:
            out = np.zeros((len(items), len(self.classes)), dtype=np.int8)
            for row, item in enumerate(items):
                out[row, [position[label] for label in item.labels]] = 1
            return out
        return np.array([position[item.labels[0]] for item in items], dtype=np.int64)

    def partition(self) -> Partition:
        """The training pool and the evaluation part (see the module docstring)."""
        split = self.arguments["split"]
        everything = np.arange(len(self.items))
        if split == "all":
            return Partition(np.zeros(0, dtype=np.int64), everything, "all images evaluated")
        splits = [item.split for item in self.items]
        if any(s is not None for s in splits):
            test = np.array([i for i, s in enumerate(splits) if s == split], dtype=np.int64)
            if not test.size:
                found = sorted({s for s in splits if s is not None})
                raise ValueError(f"task {self.name}: no image has split {split!r} (splits: {', '.join(found)}, or all)")
            train = np.setdiff1d(everything, test)
            return Partition(train, test, f"split {split!r} evaluated, the other splits train")
        fraction, seed = self.arguments["test_fraction"], self.arguments["split_seed"]
        if fraction >= 1.0:
            return Partition(np.zeros(0, dtype=np.int64), everything, "all images evaluated (test_fraction 1.0)")
        test = stratified_subset(self.targets(), fraction, seed, self.multilabel)
        return Partition(np.setdiff1d(everything, test), test,
                         f"{fraction:g} of each class evaluated (seed {seed}), the rest trains")

    def fingerprint(self, indices: Sequence[int]) -> str:
        """A hash of the items at ``indices``: ids, labels, split and file identity (size, mtime)."""
        digest = hashlib.sha256(json.dumps([self.kind, self.classes], default=str).encode())
        for i in indices:
            item = self.items[i]
            digest.update(json.dumps([item.id, item.labels, item.split, self.stat(item)], default=str).encode())
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        """The task's kind, arguments, counts and skips (for reports)."""
        return {"kind": self.kind, "arguments": {k: (str(v) if isinstance(v, Path) else v)
                                                 for k, v in self.arguments.items()},
                "images": len(self.items), "classes": len(self.classes), "multilabel": self.multilabel,
                "skipped": dict(self.skipped)}


def stratified_subset(targets: np.ndarray, fraction: float, seed: int, multilabel: bool = False) -> np.ndarray:
    """Sorted indices of a seeded ``fraction`` of each class (rounded, at least one of a class with two or
    more images); multi-label targets are divided as one group."""
    rng = np.random.default_rng(seed)
    if multilabel:
        order = rng.permutation(len(targets))
        return np.sort(order[:max(1, int(round(fraction * len(targets))))])
    chosen = []
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        count = int(round(fraction * len(members)))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        chosen.append(rng.permutation(members)[:count])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def _existing_folder(value: Any) -> Path:
    path = Path(value)
    if not path.is_dir():
        raise ValueError(f"{path} is not a folder")
    return path


def _existing_file(value: Any) -> Path:
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    return path


def _class_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(str(v) for v in value)


class RGBFileTask(Task):
    """A task whose items are image files read as RGB (``ref`` is the path)."""

    def read(self, item: Item) -> Any:
        """The RGB image of ``item`` (PIL, 8 bit)."""
        return read_rgb(Path(item.ref))

    def keep(self, labels: Sequence[str]) -> bool:
        """Whether an item with ``labels`` stays (the ``exclude`` argument drops classes)."""
        excluded = set(self.arguments.get("exclude") or ())
        if excluded and any(label in excluded for label in labels):
            self.skipped[f"class excluded ({', '.join(sorted(set(labels) & excluded))})"] += 1
            return False
        return True


_EXCLUDE = Argument("exclude-classes", "classes to leave out (comma-separated)", (), _class_list)


@register_task("folder")
class FolderTask(RGBFileTask):
    """A class-per-folder tree (ImageFolder layout), with or without split folders (module docstring)."""

    ARGUMENTS = {"root": Argument("folder-root", "class-per-folder image tree", None, _existing_folder,
                                  required=True, path=True),
                 "exclude": _EXCLUDE}

    def list_items(self) -> list[Item]:
        root = self.arguments["root"]
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        split_layout = bool(children) and all(p.name in SPLIT_FOLDERS for p in children)
        items: list[Item] = []
        for split_dir in children if split_layout else [root]:
            split = split_dir.name if split_layout else None
            for path in sorted(split_dir.iterdir()):
                if not path.is_dir():
                    self.skipped["file outside a class folder"] += 1
                    continue
                if path.name.startswith("."):
                    continue
                for file in self._images(path, root):
                    if self.keep([path.name]):
                        items.append(Item(file.relative_to(root).as_posix(), str(file), (path.name,), split))
        return items

    def _images(self, folder: Path, root: Path) -> list[Path]:
        found = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if name.startswith("."):
                    continue
                if path.suffix.lower() not in FOLDER_IMAGE_EXTENSIONS:
                    self.skipped["not an image file"] += 1
                elif not _inside(path, root):
                    self.skipped["link out of the folder"] += 1
                else:
                    found.append(path)
        return found


@register_task("csv")
class CsvTask(RGBFileTask):
    """A ``filename,label`` csv with an image folder; multi-label with ``separator`` (module docstring)."""

    ARGUMENTS = {
        "file": Argument("csv-file", "csv with a header: filename, label (or class)[, split]", None,
                         _existing_file, required=True, path=True),
        "images": Argument("csv-images", "image folder the file names are relative to (default: the csv's)",
                           None, _existing_folder, path=True),
        "label_column": Argument("csv-label-column", "label column (default: label, else class)"),
        "separator": Argument("csv-separator", "separator of several labels in one cell (multi-label data)"),
        "exclude": _EXCLUDE,
    }

    def __init__(self, **arguments: Any) -> None:
        super().__init__(**arguments)
        self.multilabel = bool(self.arguments["separator"])

    def list_items(self) -> list[Item]:
        path: Path = self.arguments["file"]
        images = self.arguments["images"] or path.parent
        rows, fields = read_csv(path)
        column = self.arguments["label_column"] or next((c for c in ("label", "class") if c in fields), None)
        if "filename" not in fields or column not in fields:
            raise ValueError(f"{path} needs the columns filename and label (or class); it has {', '.join(fields)}")
        separator, items, seen = self.arguments["separator"], [], set()
        for line, row in enumerate(rows, start=2):
            name, cell = (row.get("filename") or "").strip(), (row.get(column) or "").strip()
            labels = tuple(sorted({v.strip() for v in cell.split(separator) if v.strip()})) if separator else (
                (cell,) if cell else ())
            if not name or not labels:
                raise ValueError(f"{path} line {line}: a row needs a filename and a label (got {name!r}, {cell!r})")
            if name in seen:
                raise ValueError(f"{path} line {line}: {name} is listed twice")
            seen.add(name)
            file = images / name
            if not _safe_relative(name) or (file.exists() and not _inside(file, images)):
                self.skipped["unsafe path"] += 1
            elif not file.is_file():
                self.skipped["missing image"] += 1
            elif self.keep(labels):
                split = (row.get("split") or "").strip() or None
                items.append(Item(PurePosixPath(name).as_posix(), str(file), labels, split))
        if rows and not items and self.skipped.get("missing image") == len(rows):
            raise ValueError(f"none of the {len(rows)} files {path} names is in {images} (e.g. {rows[0]['filename']}); "
                             "check the image folder (csv-images)")
        return items


@register_task("karpathy")
class KarpathyTask(RGBFileTask):
    """The images of a Karpathy caption file with their classes from a ``filename,class`` csv and the file's
    splits (``train``/``val``/``test``)."""

    ARGUMENTS = {
        "captions": Argument("karpathy-captions", "Karpathy caption file (its splits are used)", None,
                             _existing_file, required=True, path=True),
        "images": Argument("karpathy-images", "image folder", None, _existing_folder, required=True, path=True),
        "labels": Argument("karpathy-labels", "filename,class csv", None, _existing_file, required=True, path=True),
        "exclude": _EXCLUDE,
    }

    def list_items(self) -> list[Item]:
        reader = KarpathyReader(self.arguments["captions"], self.arguments["images"], labels=self.arguments["labels"])
        items, seen = [], set()
        for entry in reader.entries:
            label = reader.labels.get(entry.id)
            if entry.id in seen:
                self.skipped["duplicate id"] += 1
                continue
            seen.add(entry.id)
            if label is None:
                self.skipped["no class in the labels file"] += 1
                continue
            try:
                path = reader.resolve(entry.filename)
            except ValueError:
                self.skipped["unsafe path"] += 1
                continue
            if path is None:
                self.skipped["missing image"] += 1
            elif self.keep([label]):
                items.append(Item(entry.id, str(path), (label,), entry.split))
        return items


class _KarpathyFolder(KarpathyTask):
    """A data set folder holding a Karpathy caption file (``CAPTIONS``), ``images/`` and ``labels.csv``."""

    CAPTIONS = "dataset.json"

    def __init__(self, **arguments: Any) -> None:
        Task.__init__(self, **arguments)
        root = self.arguments["root"]
        files = {"captions": root / self.CAPTIONS, "images": root / "images", "labels": root / "labels.csv"}
        for name, path in files.items():
            if not path.exists():
                raise ValueError(f"task {self.kind!r}: {root} has no {path.name} (the {name})")
        self.arguments.update(files)


@register_task("ucm")
class UCMTask(_KarpathyFolder):
    """UCM-Captions: ``dataset.json`` (splits 1,680 / 210 / 210), ``images/``, ``labels.csv`` (21 classes)."""

    ARGUMENTS = {"root": Argument("ucm-dir", "UCM-Captions folder (dataset.json, images/, labels.csv)", None,
                                  _existing_folder, required=True, path=True),
                 "exclude": _EXCLUDE}
    SPLIT_ARGUMENTS = {**Task.SPLIT_ARGUMENTS,
                       "split": Argument("ucm-split", "UCM split evaluated: train, val, test or all", "test")}
    prompts = "ucm"


@register_task("rsicd")
class RSICDTask(_KarpathyFolder):
    """RSICD: ``dataset_rsicd.json`` (splits 8,734 / 1,094 / 1,093), ``images/``, ``labels.csv``. The 30
    published scene classes: the csv's ``playfields`` rows (numbered images outside those classes) are
    excluded unless ``exclude`` says otherwise."""

    CAPTIONS = "dataset_rsicd.json"
    ARGUMENTS = {"root": Argument("rsicd-dir", "RSICD folder (dataset_rsicd.json, images/, labels.csv)", None,
                                  _existing_folder, required=True, path=True),
                 "exclude": Argument("rsicd-exclude", "classes to leave out", ("playfields",), _class_list)}
    SPLIT_ARGUMENTS = {**Task.SPLIT_ARGUMENTS,
                       "split": Argument("rsicd-split", "RSICD split evaluated: train, val, test or all", "test")}
    prompts = "rsicd"


def _band_stats(value: Any) -> dict[str, list[float]]:
    """``band_stats`` of a shard folder's ``index.json`` (or of that file)."""
    path = Path(value)
    path = path / "index.json" if path.is_dir() else path
    try:
        stats = json.loads(path.read_text(encoding="utf-8")).get("band_stats")
    except (OSError, ValueError, AttributeError) as error:
        raise ValueError(f"{path}: not a readable shard index.json ({error})") from None
    if not isinstance(stats, dict) or not isinstance(stats.get("mean"), list) or not isinstance(stats.get("std"), list):
        raise ValueError(f"{path} has no band_stats with mean and std lists")
    return {"mean": [float(v) for v in stats["mean"]], "std": [float(v) for v in stats["std"]]}


@register_task("bigearthnet")
class BigEarthNetTask(Task):
    """BigEarthNet 19-class multi-label patches (``wfa.data.bigearthnet.BigEarthNetReader``).

    ``mode``: ``rgb`` (a true-colour composite of B04, B03, B02, reflectance 0-``TRUE_COLOUR_MAX`` to
    0-255: for RGB models), ``s2`` (12 bands), ``s1`` (2), ``s1s2`` (14), or ``auto``: chosen by the model's
    input channels (:meth:`for_channels`). Bands are normalised with ``band_stats`` (a shard folder's index),
    else with statistics of the patches themselves. Splits come from the v2 ``metadata.parquet`` (found in
    ``root``, or given); without one every patch is evaluated (``test_fraction`` defaults to 1.0 here).
    """

    ARGUMENTS = {
        "root": Argument("ben-dir", "BigEarthNet folder (S2/S1 or BigEarthNet-S2/-S1)", None, _existing_folder,
                         required=True, path=True),
        "mode": Argument("ben-mode", "bands: auto (from the model), rgb, s2, s1 or s1s2", "auto"),
        "metadata": Argument("ben-metadata", "v2 metadata.parquet (labels, splits, S1 partners)", None,
                             _existing_file, path=True),
        "band_stats": Argument("ben-band-stats", "shard folder whose index.json band_stats normalise the bands",
                               None, _band_stats, path=True),
    }
    SPLIT_ARGUMENTS = {**Task.SPLIT_ARGUMENTS, "test_fraction": Argument(
        "zeroshot-test-fraction", Task.SPLIT_ARGUMENTS["test_fraction"].help, 1.0, _split_fraction("test_fraction"))}
    MODES = {"rgb": 3, "s2": 12, "s1": 2, "s1s2": 14}
    prompts = "bigearthnet"
    multilabel = True

    def __init__(self, **arguments: Any) -> None:
        super().__init__(**arguments)
        mode = self.arguments["mode"]
        if mode != "auto" and mode not in self.MODES:
            raise ValueError(f"task 'bigearthnet': mode must be auto, {', '.join(self.MODES)}; got {mode!r}")

    def for_channels(self, channels: int) -> "BigEarthNetTask":
        """Fix ``mode: auto`` for a model with ``channels`` inputs; a ``ValueError`` when no mode gives them."""
        mode = self.arguments["mode"]
        if mode == "auto":
            found = [m for m, c in self.MODES.items() if c == channels]
            if not found:
                raise ValueError(f"the model takes {channels} input channels; BigEarthNet gives 3 (rgb), 12 (s2), "
                                 "2 (s1) or 14 (s1s2)")
            self.arguments["mode"] = found[0]
            self.__dict__.pop("reader", None)
        return self

    @cached_property
    def reader(self) -> Any:
        """The BigEarthNet reader of the mode (``rgb`` reads the S2 bands)."""
        from wfa.data.bigearthnet import BigEarthNetReader

        mode = self.arguments["mode"]
        if mode == "auto":
            raise ValueError("task 'bigearthnet' with mode auto: call for_channels(model channels) first")
        return BigEarthNetReader(root=self.arguments["root"], mode="s2" if mode == "rgb" else mode,
                                 metadata=self.arguments["metadata"], default_split="")

    @property
    def channels(self) -> int:
        """3 for ``rgb``, else the number of bands of the mode."""
        return self.MODES.get(self.arguments["mode"], 3)

    def class_list(self) -> list[str]:
        """The 19-class nomenclature, in its order."""
        from wfa.data.label_captions import V2_LABELS

        return list(V2_LABELS)

    def list_items(self) -> list[Item]:
        """Labels and splits from the metadata table where it names the patch (no band is read), else from
        the patch's own files (v1 json: the reader reads the patch once)."""
        from wfa.data.label_captions import to_v2_labels
        from wfa.data.sample import Rejected

        items, annotations = [], self.reader.annotations
        for index, patch_id in enumerate(self.reader.ids()):
            given = annotations.labels_for(patch_id)
            if given is None:
                sample = self.reader.sample_at(index)
                if isinstance(sample, Rejected):
                    self.skipped[sample.reason] += 1
                else:
                    items.append(Item(sample.id, sample.id, tuple(sample.labels or ()), sample.split or None))
                continue
            try:
                labels = tuple(to_v2_labels(given))
            except ValueError:
                self.skipped["unknown label"] += 1
                continue
            if labels:
                items.append(Item(patch_id, patch_id, labels, annotations.split_for(patch_id) or None))
            else:
                self.skipped["no labels"] += 1
        return items

    def stat(self, item: Item) -> tuple:
        """The patch's band files are not listed here; the reader's folder and mode identify it."""
        return (str(self.reader.root_s2 or self.reader.root_s1), self.arguments["mode"])

    def read(self, item: Item) -> Any:
        """``C x 120 x 120`` float32 bands, or for ``rgb`` an 8-bit true-colour PIL image."""
        bands = self.reader.load(item.ref)
        if self.arguments["mode"] != "rgb":
            return bands
        from PIL import Image

        order = [self.reader.bands.index(b) for b in ("B04", "B03", "B02")]
        rgb = np.clip(bands[order] / TRUE_COLOUR_MAX * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(np.moveaxis(rgb, 0, -1), mode="RGB")
