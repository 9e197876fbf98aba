"""notebooks/redundancy_and_weights.ipynb runs top to bottom (quick mode) and shows its figures and tables."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from wfa.methods import list_methods

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "redundancy_and_weights.ipynb"


STUDY_DIR = REPO / "benchmarks" / "study"


@pytest.fixture(scope="module", params=["no-study", "committed-study"])
def executed(request, ucm_dir, rsicd_dir, tmp_path_factory) -> nbformat.NotebookNode:
    """The notebook executed in quick mode: with an empty study dir (so the fallback training runs) and with
    the study results committed under benchmarks/study (what a reader of the repository sees)."""
    study_dir = tmp_path_factory.mktemp("no-study") if request.param == "no-study" else STUDY_DIR
    if request.param == "committed-study":
        assert (STUDY_DIR / "summary.json").is_file() and list((STUDY_DIR / "weights").glob("attention-s*.json"))
    env = {"WFA_NOTEBOOK_QUICK": "1", "WFA_STUDY_DIR": str(study_dir), "WFA_SHARED_DATA": str(ucm_dir.parent),
           "OMP_NUM_THREADS": "1"}
    previous = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        nb = nbformat.read(NOTEBOOK, as_version=4)
        NotebookClient(nb, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    nb.metadata["wfa_study"] = request.param
    return nb


def _outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def _markdown(nb: nbformat.NotebookNode) -> str:
    return "\n".join(out["data"]["text/markdown"] for out in _outputs(nb) if "text/markdown" in out.get("data", {}))


def test_runs_without_errors(executed):
    assert not [out for out in _outputs(executed) if out.get("output_type") == "error"]
    assert all(cell.get("execution_count") for cell in executed.cells if cell.cell_type == "code")


def test_figures_and_tables(executed):
    outputs = _outputs(executed)
    # redundancy plot, BLEU weights per image, attention scatter, recall curves
    assert sum("image/png" in out.get("data", {}) for out in outputs) >= 4
    markdown = _markdown(executed)
    assert "| image | caption | BLEU weight | uniform |" in markdown
    assert "| image | caption | BLEU weight | attention weight |" in markdown
    assert ".jpg" in markdown or ".tif" in markdown  # the table names the images shown


def test_printed_figures_come_from_the_real_data(executed):
    text = "".join(out.get("text", "") for out in _outputs(executed) if out.get("output_type") == "stream")
    assert "2100 images" in text and "10500 captions" in text
    assert "attention vs BLEU: Pearson per image" in text
    # section 5: every registered method on two real RSICD training images
    assert "an epoch of pairs is 43670 samples, of pairs-dedup 17813" in text
    assert all(f"| {method} |" in _markdown(executed) for method in list_methods())
    if executed.metadata["wfa_study"] == "no-study":
        assert "NO STUDY RESULTS" in text and "NOT the study" in text  # the fallback is labelled as such
    else:
        assert "NO STUDY RESULTS" not in text and "NOT the study" not in text
        summary = json.loads((STUDY_DIR / "summary.json").read_text())
        markdown = _markdown(executed)
        assert all(f"| {method} |" in markdown for method in summary["methods"])  # the study's table is shown
        assert "Time to quality" in markdown
