"""Shared pytest fixtures: locating the real data in ../shared/data; the scripts under scripts/ as modules."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

SHARED_DATA = Path(os.environ.get("WFA_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


REPO = Path(__file__).resolve().parents[1]


def load_script(relative: str) -> ModuleType:
    """A script of the repository (e.g. ``scripts/bench/flops.py``) imported as a module by its path: the scripts
    are not a package."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shared_data(relative: str) -> Path:
    """Return ``../shared/data/<relative>``.

    Skips the calling test when the data is absent on a user's machine, but fails it when
    ``WFA_REQUIRE_SHARED_DATA=1`` (set by ``.ci/run``): CI always has the data.
    """
    path = SHARED_DATA / relative
    if not path.exists():
        message = f"shared data not found: {path} (set WFA_SHARED_DATA to the folder holding it)"
        if os.environ.get("WFA_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def ucm_dir() -> Path:
    """The UCM-Captions folder (``dataset.json``, ``images/``, ``labels.csv``)."""
    return shared_data("ucm-captions")


@pytest.fixture(scope="session")
def rsicd_dir() -> Path:
    """The RSICD folder (``dataset_rsicd.json``, ``images/``, ``labels.csv``)."""
    return shared_data("rsicd")


@pytest.fixture(scope="session")
def ben_v1_dir() -> Path:
    """The BigEarthNet v1 tiny folder (``S1/``, ``S2/``)."""
    return shared_data("bigearthnet-v1-tiny")


@pytest.fixture(scope="session")
def ben_v2_dir() -> Path:
    """The BigEarthNet v2 sample folder (``BigEarthNet-S2/``, ``BigEarthNet-S1/``, ``lmdb/``)."""
    return shared_data("bigearthnet-v2-sample")
