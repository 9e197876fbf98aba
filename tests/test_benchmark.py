"""`wfa benchmark`: suites, the whole run on small fixtures (tables, files, cache), retrieval equal to `wfa eval`,
what a failed data set leaves, --compare, the shipped suites, the FAISS device message."""
from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import wfa.cli
from wfa.eval.benchmark import SuiteError, load_suite

REPO = Path(__file__).resolve().parents[1]


def scene_tree(root: Path, classes=("beach", "forest", "harbor"), per_class: int = 10, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            base = np.zeros((size, size, 3))
            base[..., c] = 200
            Image.fromarray(np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)).save(
                root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def fixture_data(tmp_path_factory):
    """(data root, run folder): a scene tree, a multi-label csv over it, synthetic shards, a micro model run."""
    import torch

    from wfa.data.synthetic import SyntheticReader
    from wfa.data.writer import write_shards
    from wfa.model import create_model, save_open_clip_checkpoint

    root = tmp_path_factory.mktemp("bench-data")
    scene_tree(root / "scenes")
    rows = ["filename,label"] + [f"{c}/{i}.png,{c};{'water' if c != 'forest' else 'trees'}"
                                 for c in ("beach", "forest", "harbor") for i in range(10)]
    (root / "multi.csv").write_text("\n".join(rows) + "\n")
    write_shards(SyntheticReader(num_images=30, seed=0, image_size=32), root / "shards", shard_size=10,
                 progress=False)
    torch.manual_seed(0)
    model, _ = create_model("wfa-vit-micro")
    run = root / "run"
    save_open_clip_checkpoint(model, run / "model_final.pt")
    (run / "config.yaml").write_text("model: {name: wfa-vit-micro}\ndata: {image_size: 32}\n")
    return root, run


SUITE = """
name: fixture
data_root: {root}
few_shot: {{shots: [1, 2], seeds: [0, 1], full: true}}
classification:
  Scenes: {{task: folder, root: scenes}}
  Multi: {{task: csv, file: multi.csv, images: scenes, separator: ";"}}
retrieval:
  Synthetic: {{shards: shards, split: test}}
"""


def write_suite(path: Path, root: Path, text: str = SUITE) -> Path:
    path.write_text(text.format(root=root))
    return path


def run_cli(*args: str) -> int:
    return wfa.cli.main(["benchmark", *args])


def test_benchmark_end_to_end_tables_files_and_cache(fixture_data, tmp_path, capsys):
    root, run = fixture_data
    suite = write_suite(tmp_path / "suite.yaml", root)
    cache, out = tmp_path / "cache", tmp_path / "out"
    common = ["--suite", str(suite), "--checkpoint", str(run), "--cache", str(cache), "--num-workers", "0",
              "--batch-size", "8", "--no-progress"]
    assert run_cli(*common, "--out", str(out)) == 0
    printed = capsys.readouterr().out
    for title in ("Zero-shot classification", "Linear probe", "k-NN", "Image-text retrieval"):
        assert title in printed
    results = json.loads((out / "benchmark.json").read_text())[0]
    scenes, multi = results["classification"]["Scenes"], results["classification"]["Multi"]
    assert scenes["test_images"] == 6 and scenes["train_images"] == 24 and scenes["task"]["classes"] == 3
    assert 0 <= scenes["zeroshot"]["top1"] <= 100 and scenes["zeroshot"]["chance_top1"] == pytest.approx(100 / 3)
    for protocol in ("linear_probe", "knn"):
        entry = scenes[protocol]
        assert set(entry) == {"full", "1", "2"} and len(entry["1"]["runs"]) == 2
        assert entry["1"]["mean"] == pytest.approx(np.mean([r["main"] for r in entry["1"]["runs"]]))
        assert entry["1"]["std"] == pytest.approx(np.std([r["main"] for r in entry["1"]["runs"]], ddof=1))
        assert all(r["train_images"] == 3 for r in entry["1"]["runs"])
    assert multi["task"]["multilabel"] and "mAP" in multi["zeroshot"] and "mAP" in multi["linear_probe"]["full"]
    assert multi["knn"]["few_shot_skipped"] == "n-shot draws need single-label data"
    assert results["retrieval"]["Synthetic"]["mR"] >= 0 and results["skipped"] == []
    assert results["model"]["name"] == "wfa-vit-micro" and results["model"]["image_size"] == 32

    markdown = (out / "benchmark.md").read_text()
    assert "| model | Scenes | Multi (mAP) | mean |" in markdown and "| data set | 1-shot | 2-shot | full |" in markdown
    assert "i2t R@1" in markdown and "![benchmark](benchmark.png)" in markdown
    assert (out / "benchmark.png").stat().st_size > 10_000
    umask = os.umask(0)
    os.umask(umask)
    assert {(out / f).stat().st_mode & 0o777 for f in ("benchmark.md", "benchmark.json")} == {0o666 & ~umask}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    with (out / "benchmark.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["protocol"] for r in rows} == {"zeroshot", "linear_probe", "knn", "retrieval"}
    probe_1 = next(r for r in rows if r["protocol"] == "linear_probe" and r["dataset"] == "Scenes"
                   and r["setting"] == "1-shot")
    assert float(probe_1["value"]) == pytest.approx(scenes["linear_probe"]["1"]["mean"]) and probe_1["runs"] == "2"

    # a second run computes nothing: same numbers, every feature from the cache
    assert run_cli(*common, "--out", str(tmp_path / "again")) == 0
    again = json.loads((tmp_path / "again" / "benchmark.json").read_text())[0]
    assert again["cache"]["feature_misses"] == 0 and again["cache"]["feature_hits"] == 4
    for key in ("classification", "retrieval"):
        assert again[key] == results[key]
    # one changed image re-encodes only the part of the data set that holds it
    changed = tmp_path / "changed"
    shutil.copytree(root / "scenes", changed / "scenes")
    shutil.copy(root / "multi.csv", changed / "multi.csv")
    shutil.copytree(root / "shards", changed / "shards")
    part = results["classification"]["Scenes"]
    assert part["test_images"] == 6
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(changed / "scenes" / "beach" / "0.png")
    os.utime(changed / "scenes" / "beach" / "0.png", ns=(1, 1))
    assert run_cli(*common, "--data-root", str(changed), "--only", "Scenes", "--out", str(tmp_path / "third")) == 0
    third = json.loads((tmp_path / "third" / "benchmark.json").read_text())[0]
    assert third["cache"]["feature_misses"] == 1 and third["cache"]["feature_hits"] == 1
    assert list(third["classification"]) == ["Scenes"] and third["retrieval"] == {}


def test_benchmark_retrieval_equals_wfa_eval(fixture_data, tmp_path):
    root, run = fixture_data
    suite = write_suite(tmp_path / "suite.yaml", root)
    assert run_cli("--suite", str(suite), "--checkpoint", str(run / "model_final.pt"), "--only", "Synthetic",
                   "--no-cache", "--batch-size", "7", "--num-workers", "0", "--no-progress",
                   "--out", str(tmp_path / "bench")) == 0
    bench = json.loads((tmp_path / "bench" / "benchmark.json").read_text())[0]["retrieval"]["Synthetic"]
    assert wfa.cli.main(["eval", "--checkpoint", str(run / "model_final.pt"), "--shards", str(root / "shards"),
                         "--split", "test", "--batch-size", "7", "--out", str(tmp_path / "eval" / "report.json")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    for key in ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "mR", "mR_t2i"):
        assert bench[key] == report["test"][key], key


def test_a_data_set_that_cannot_run_is_reported_and_the_rest_written(fixture_data, tmp_path, capsys):
    root, run = fixture_data
    text = SUITE + "  Missing: {{shards: no-such-shards}}\n"
    suite = write_suite(tmp_path / "suite.yaml", root, text.replace("Multi: ", "Gone: {{task: folder, root: gone}}\n"
                                                                            "  Multi: "))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "benchmark.md").write_text("an earlier result")
    code = run_cli("--suite", str(suite), "--checkpoint", str(run), "--no-cache", "--only", "Scenes,Gone,Missing",
                   "--num-workers", "0", "--no-progress", "--out", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert code == 1 and "2 data set(s) of the suite not run (Gone, Missing)" in err
    markdown = (tmp_path / "out" / "benchmark.md").read_text()
    assert "## Not run" in markdown and "gone is not a folder" in markdown and "no-such-shards" in markdown
    assert "| Scenes |" in markdown


def test_compare_puts_models_side_by_side(fixture_data, tmp_path):
    root, run = fixture_data
    suite = write_suite(tmp_path / "suite.yaml", root, SUITE.replace("root: scenes}}", "root: scenes, protocols: "
                                                                                       "[zeroshot, knn]}}"))
    outs = []
    for name, extra in (("a", []), ("b", ["--image-size", "48"])):
        out = tmp_path / name
        assert run_cli("--suite", str(suite), "--checkpoint", str(run), "--only", "Scenes", "--cache",
                       str(tmp_path / "cache"), "--num-workers", "0", "--no-progress", "--out", str(out), *extra) == 0
        outs.append(str(out / "benchmark.json"))
    assert run_cli("--compare", *outs, "--out", str(tmp_path / "both")) == 0
    markdown = (tmp_path / "both" / "benchmark.md").read_text()
    assert markdown.count("wfa-vit-micro (") >= 4 and "| model | data set | 1-shot | 2-shot | full |" in markdown
    assert "## k-NN" in markdown and "## Linear probe" not in markdown
    assert run_cli("--compare", str(tmp_path / "suite.yaml"), "--out", str(tmp_path / "x")) == 2


def test_suite_errors_name_the_entry(tmp_path, monkeypatch):
    def load(text: str, **kwargs):
        path = tmp_path / "s.yaml"
        path.write_text(text)
        return load_suite(path, **kwargs)

    cases = {
        "classification: {A: {root: x}}": "classification.A needs task: KIND",
        "classification: {A: {task: aid}}": "unknown task kind 'aid'",
        "classification: {A: {task: folder, root: x, colour: red}}": "unknown key(s) colour",
        "classification: {A: {task: folder, root: x, protocols: [svm]}}": "protocols must be",
        "retrieval: {R: {split: test}}": "needs either shards",
        "retrieval: {R: {captions: c.json}}": "captions needs images",
        "few_shot: {shots: [0]}\nretrieval: {R: {shards: s}}": "few_shot.shots must be integers >= 1",
        "colour: red": "unknown key(s) colour",
        "name: empty": "lists no data set",
        "data_root: $WFA_TEST_UNSET_VARIABLE\nretrieval: {R: {shards: s}}": "unset environment variable",
        "[1, 2": "not valid YAML",
    }
    monkeypatch.delenv("WFA_TEST_UNSET_VARIABLE", raising=False)
    for text, message in cases.items():
        with pytest.raises(SuiteError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load(text)
    suite = load("data_root: base\nclassification: {A: {task: folder, root: x, split: test}}\n"
                 "retrieval: {R: {shards: s}}", data_root=tmp_path / "other")
    assert suite.classification[0].arguments == {"root": tmp_path / "other" / "x", "split": "test"}
    assert suite.retrieval[0].shards == tmp_path / "other" / "s"
    assert load("data_root: base\nretrieval: {R: {shards: /abs/s}}").retrieval[0].shards == Path("/abs/s")


@pytest.mark.parametrize("name", ["shared-data.yaml", "public-scenes.yaml"])
def test_shipped_suites_load(name, monkeypatch, tmp_path):
    monkeypatch.setenv("WFA_SHARED_DATA", str(tmp_path))
    monkeypatch.setenv("WFA_DATA", str(tmp_path))
    suite = load_suite(REPO / "configs" / "benchmarks" / name)
    assert suite.classification and suite.retrieval
    assert all(str(s.arguments.get("root", tmp_path)).startswith(str(tmp_path)) for s in suite.classification)


def test_shared_suite_runs_on_the_shared_data(ucm_dir, rsicd_dir, ben_v1_dir, tmp_path):
    """The shipped suite's zero-shot rows with a micro model: the data sets it names are where it says."""
    import torch

    from wfa.eval.benchmark import RunOptions, run_suite
    from wfa.eval.features import FeatureCache
    from wfa.model import create_model

    torch.manual_seed(0)
    model, tokenizer = create_model("wfa-vit-micro")
    suite = load_suite(REPO / "configs" / "benchmarks" / "shared-data.yaml", data_root=ucm_dir.parent)
    for spec in suite.classification:
        spec.protocols = ("zeroshot",)
    results = run_suite(suite, model, tokenizer, FeatureCache(None),
                        RunOptions(batch_size=128, progress=False, only=["UCM", "BigEarthNet"], log=lambda _: None))
    assert results["classification"]["UCM"]["test_images"] == 210
    assert results["classification"]["BigEarthNet"]["zeroshot"]["num_images"] == 11
    assert results["skipped"] == []


def test_faiss_fallback_reasons(caplog):
    from wfa.eval import faiss_device

    reason = faiss_device.fallback_reason
    assert reason(1, True, {"faiss-gpu": "1.15.1"}, True) is None
    assert "sees no GPU" in reason(0, True, {"faiss-gpu": "1.15.1"}, False)
    assert "pip install --force-reinstall --no-deps faiss-gpu" in reason(0, False, {"faiss-cpu": "1", "faiss-gpu": "1"},
                                                                          False)
    assert "pip install -e '.[gpu]'" in reason(0, False, {"faiss-cpu": "1.15.1"}, True)
    assert reason(0, False, {"faiss-cpu": "1.15.1"}, False) is None  # a CPU machine with the CPU build: nothing to say
    faiss_device.faiss_gpus.cache_clear()
    with caplog.at_level(logging.WARNING, logger="wfa.faiss"):
        first = faiss_device.faiss_gpus()
        faiss_device.faiss_gpus()
    expected = reason(first, faiss_device.gpu_build(), faiss_device.installed_faiss(),
                      __import__("torch").cuda.is_available())
    assert [r.getMessage() for r in caplog.records] == ([expected] if expected else [])
    assert faiss_device.describe()["gpus"] == first


def test_feature_cache_reads_data_only_and_recomputes_what_is_damaged(tmp_path):
    from wfa.eval.features import FeatureCache, Features, cache_key

    cache = FeatureCache(tmp_path / "cache")
    key = cache_key("features", "x")
    stored = Features(np.eye(3, 4, dtype=np.float32), np.array([4, 5, 6]), {"unreadable image": 1})
    cache.save_features(key, stored, {"task": "t"})
    loaded = cache.load_features(key)
    assert loaded.cached and np.array_equal(loaded.features, stored.features) and loaded.skipped == stored.skipped
    path = next((tmp_path / "cache" / "features").rglob("*.safetensors"))
    path.write_bytes(b"\x80\x04 a pickle would never be loaded")
    assert cache.load_features(key) is None and cache.misses == 1
    cache.save_result(key, {"main": 1.0})
    next((tmp_path / "cache" / "results").rglob("*.json")).write_text("[1, 2")
    assert cache.load_result(key) is None
    assert FeatureCache(None).load_features(key) is None
    with pytest.raises(ValueError, match="hex digests"):
        cache.load_result("../../etc/passwd")
