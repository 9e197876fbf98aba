"""The method study (scripts/bench/method_study.py) end to end in --quick form on real UCM-Captions data."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
METHODS = ("pairs", "bleu", "attention")
STEPS, BATCH, LIMIT = 4, 8, 16  # the --quick preset


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def study(ucm_dir, tmp_path_factory):
    """One --quick study of three methods; returns (module, argv, out dir, printed output)."""
    previous = torch.get_num_threads()
    module = _load_script("method_study")
    base = tmp_path_factory.mktemp("study")
    argv = ["--quick", "--methods", ",".join(METHODS), "--data-dir", str(ucm_dir), "--out", str(base / "out"),
            "--runs-dir", str(base / "runs"), "--shards-dir", str(base / "shards"), "--threads", "1"]
    assert module.main(argv) == 0
    yield module, argv, base / "out", base
    torch.set_num_threads(previous)


def test_every_method_ran_with_the_result_schema(study):
    _, _, out, base = study
    index = json.loads((base / "shards" / "index.json").read_text())
    assert {s: i["num_samples"] for s, i in index["splits"].items()} == {"train": LIMIT, "val": LIMIT, "test": LIMIT}
    for method in METHODS:
        r = json.loads((out / "runs" / f"{method}-s0.json").read_text())
        assert r["method"] == method and r["seed"] == 0 and r["budget"]["steps"] == STEPS
        assert [p["step"] for p in r["val_curve"]] == [2, 4]
        walls = [p["train_wall_s"] for p in r["val_curve"]]
        assert 0 < walls[0] <= walls[1] == pytest.approx(r["train_wall_s"])
        assert r["best_val"]["step"] in (2, 4) and r["final"]["step"] == 4
        best = max(r["val_curve"], key=lambda p: (p["mR_t2i"], -p["step"]))
        assert r["best_val"]["val_mR_t2i"] == best["mR_t2i"]
        for selection in ("best_val", "final"):
            test = r[selection]["test"]
            assert test["num_images"] == LIMIT and test["num_captions"] == 5 * LIMIT
            assert all(0.0 <= test[c] <= 100.0 for c in ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "mR", "mR_t2i"))
            assert test["mR_t2i"] == pytest.approx((test["t2i_r1"] + test["t2i_r5"] + test["t2i_r10"]) / 3)
            assert len(r[selection]["recall_curve"]["t2i"]) == 20
        # checkpoints are removed once the test evaluation is done; the final model stays
        assert not (Path(r["run_dir"]) / "checkpoints").exists()
        assert (Path(r["run_dir"]) / "model_final.pt").is_file()


def test_images_and_captions_encoded_match_the_method(study):
    _, _, out, base = study
    index = json.loads((base / "shards" / "index.json").read_text())
    assert index["captions"]["k_min"] == index["captions"]["k_max"] == 5
    for method in METHODS:
        r = json.loads((out / "runs" / f"{method}-s0.json").read_text())
        assert r["images_encoded"] == STEPS * BATCH  # the same budget of samples for every method
        expected = STEPS * BATCH if method == "pairs" else 5 * STEPS * BATCH  # pairs: one caption per sample
        assert r["captions_encoded"] == expected
        assert r["val_curve"][-1]["captions_encoded"] == expected


def test_attention_weights_are_dumped_beside_the_bleu_weights(study):
    _, _, out, _ = study
    w = json.loads((out / "weights" / "attention-s0.json").read_text())
    n = 5 * LIMIT
    assert len(w["captions"]) == len(w["bleu_weights"]) == len(w["learned_weights"]) == len(w["text_to_image"]) == n
    for key in ("bleu_weights", "learned_weights"):
        per_image = torch.zeros(LIMIT, dtype=torch.float64).index_add_(
            0, torch.tensor(w["text_to_image"]), torch.tensor(w[key], dtype=torch.float64))
        assert torch.allclose(per_image, torch.ones(LIMIT, dtype=torch.float64), atol=1e-5)


def test_summary_chance_and_time_to_quality(study):
    _, _, out, _ = study
    s = json.loads((out / "summary.json").read_text())
    assert list(s["methods"]) == list(METHODS)
    assert s["chance"]["t2i_r1"] == pytest.approx(100 / LIMIT) and s["chance"]["t2i_r10"] == pytest.approx(1000 / LIMIT)
    for method, e in s["methods"].items():
        assert e["seeds"] == [0] and e["best_val"]["mR_t2i"]["n"] == 1
    pairs = json.loads((out / "runs" / "pairs-s0.json").read_text())
    ttq = s["time_to_quality"]
    assert ttq["test"]["threshold_mR_t2i"] == pytest.approx(pairs["final"]["test"]["mR_t2i"])
    assert ttq["val"]["threshold_mR_t2i"] == pytest.approx(pairs["final"]["val_mR_t2i"])
    assert ttq["val"]["methods"]["pairs"]["reached"] == "1/1"  # one seed: pairs reaches its own final val value
    for reference, t in ttq.items():
        assert t["pairs_run_train_wall_s"] == pytest.approx(pairs["train_wall_s"])
        for method in METHODS:
            run = json.loads((out / "runs" / f"{method}-s0.json").read_text())
            hit = next((p for p in run["val_curve"] if p["mR_t2i"] >= t["threshold_mR_t2i"]), None)
            e = t["methods"][method]
            assert e["reached"] == ("1/1" if hit else "0/1")
            if hit:
                assert e["step"]["mean"] == hit["step"]
                assert e["ratio_to_pairs_run"] == pytest.approx(hit["train_wall_s"] / pairs["train_wall_s"])
    md = (out / "summary.md").read_text()
    assert all(f"| {m} |" in md for m in METHODS) and "| chance |" in md
    assert md.count("Time to quality, threshold") == 2
    for key, cost, total in (("quality_at_third", "train_wall_s", "train_wall_s"),
                             ("quality_at_third_flops", "flops", "train_flops")):
        third = s[key]
        assert third["cost"] == cost and third["budget"] == pytest.approx(pairs[total] / 3)
        for method in METHODS:
            run = json.loads((out / "runs" / f"{method}-s0.json").read_text())
            early = [p for p in run["val_curve"] if p[cost] <= third["budget"]]
            assert third["methods"][method]["step"] == [early[-1]["step"] if early else None]
            assert third["methods"][method]["mR_t2i"]["n"] == (1 if early else 0)
    assert "a third of pairs' training wall time" in md and "a third of pairs' FLOPs" in md


def test_flops_are_counted_and_grow_with_the_captions_encoded(study):
    _, _, out, _ = study
    runs = {m: json.loads((out / "runs" / f"{m}-s0.json").read_text()) for m in METHODS}
    for method, r in runs.items():
        assert r["flops_per_step"] > 0 and r["train_flops"] == pytest.approx(STEPS * r["flops_per_step"])
        assert [p["flops"] for p in r["val_curve"]] == pytest.approx([p["step"] * r["flops_per_step"]
                                                                      for p in r["val_curve"]])
    # same images per step; bleu and attention encode 5 captions per image, pairs one
    assert runs["bleu"]["flops_per_step"] > runs["pairs"]["flops_per_step"]
    # the aggregated gallery (one fused text per image) is evaluated for the methods with an aggregator
    assert "agg_mR_i2t" in runs["bleu"]["best_val"]["test"] and "agg_mR_i2t" not in runs["pairs"]["best_val"]["test"]
    assert "GFLOP/step" in (out / "summary.md").read_text()


def test_every_method_sees_a_global_shuffle(study, tmp_path):
    """The shuffle buffer holds the whole train split of the index (in images; the loader scales it for pairs)."""
    from wfa.methods import list_methods

    module, argv, _, base = study
    index = json.loads((base / "shards" / "index.json").read_text())
    settings = module.settings_from_args(module.resolve_args(module.build_parser().parse_args(argv)), index)
    shuffles = {m: module.run_config(settings, m, 0, base / "shards", tmp_path).data.shuffle for m in list_methods()}
    assert set(shuffles.values()) == {index["splits"]["train"]["num_samples"]} == {LIMIT}


def test_resume_skips_finished_runs_and_refuses_other_settings(study, capsys):
    module, argv, out, _ = study
    before = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert module.main(argv) == 0
    assert capsys.readouterr().out.count("[skip]") == len(METHODS)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == before
    with pytest.raises(SystemExit, match="other settings"):
        module.main(argv + ["--budget-steps", "6"])
    with pytest.raises(SystemExit, match="--first-seed 1 must be in 0..0"):
        module.main(argv + ["--first-seed", "1"])


def test_summarize_reads_every_matching_record_and_checks_the_goal(study, tmp_path, capsys):
    """--summarize trains nothing, takes every record made with the same settings (any seeds per method) and
    applies the goal: pairs' final test mR_t2i reached within a third of its FLOPs, final quality within the
    pooled std."""
    import shutil

    module, argv, out, _ = study
    runs = tmp_path / "out" / "runs"
    shutil.copytree(out / "runs", runs)
    pairs = json.loads((runs / "pairs-s0.json").read_text())
    threshold = pairs["final"]["test"]["mR_t2i"]
    # a second bleu seed that reaches the threshold at its first validation (step 2 of 4: half of pairs' FLOPs)
    bleu = json.loads((runs / "bleu-s0.json").read_text())
    bleu["seed"] = 1
    bleu["val_curve"][0]["mR_t2i"] = threshold + 1.0
    bleu["final"]["test"]["mR_t2i"] = threshold + 2.0
    (runs / "bleu-s1.json").write_text(json.dumps(bleu))
    stale = {**bleu, "seed": 2, "settings": {**bleu["settings"], "budget_steps": 99}}
    (runs / "bleu-s2.json").write_text(json.dumps(stale))
    before = sorted(p.name for p in runs.iterdir())
    out_args = list(argv)
    out_args[out_args.index("--out") + 1] = str(tmp_path / "out")
    assert module.main(out_args + ["--summarize"]) == 0
    captured = capsys.readouterr()
    assert "[run]" not in captured.out and sorted(p.name for p in runs.iterdir()) == before  # nothing trained
    assert "1 run record(s) made with other settings left out: bleu-s2" in captured.err
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(s["methods"])[0] == "pairs" and s["methods"]["bleu"]["seeds"] == [0, 1]
    goal = s["goal"]
    assert goal["threshold_mR_t2i"] == pytest.approx(threshold) and goal["pairs_seeds"] == 1
    e = goal["methods"]["bleu"]
    seed0 = json.loads((runs / "bleu-s0.json").read_text())
    hit = next((p for p in seed0["val_curve"] if p["mR_t2i"] >= threshold), None)
    expected0 = hit["flops"] / pairs["train_flops"] if hit else None
    assert e["flops_ratio_per_seed"][0] == (pytest.approx(expected0) if hit else None)
    assert e["flops_ratio_per_seed"][1] == pytest.approx(bleu["val_curve"][0]["flops"] / pairs["train_flops"])
    assert e["fast_enough"] is False  # seed 1 needs half of pairs' FLOPs, more than a third
    finals = [seed0["final"]["test"]["mR_t2i"], threshold + 2.0]
    assert e["final_mR_t2i"]["mean"] == pytest.approx(sum(finals) / 2)
    pooled = (float(torch.tensor(finals, dtype=torch.float64).std()) ** 2 / 2) ** 0.5  # pairs: one seed, std 0
    assert e["pooled_std"] == pytest.approx(pooled)
    assert e["good_enough"] == (e["final_mR_t2i"]["mean"] >= threshold - pooled) and e["met"] is False
    assert "| bleu | 2 |" in (tmp_path / "out" / "summary.md").read_text()
    # the target from another study's pairs runs (a longer budget): this study's pairs runs are judged too
    reference = tmp_path / "reference" / "runs"
    reference.mkdir(parents=True)
    (reference / "pairs-s0.json").write_text(json.dumps({
        **pairs, "settings": {**pairs["settings"], "budget_steps": 12},
        "final": {**pairs["final"], "test": {**pairs["final"]["test"], "mR_t2i": 100.0}}}))
    assert module.main(out_args + ["--summarize", "--goal-reference", str(tmp_path / "reference")]) == 0
    goal = json.loads((tmp_path / "out" / "summary.json").read_text())["goal"]
    assert goal["reference"] == {"budget_steps": 12, "seeds": [0]} and goal["threshold_mR_t2i"] == 100.0
    assert goal["methods"]["pairs"]["flops_ratio_per_seed"] == [None] and not goal["methods"]["pairs"]["met"]
    (reference / "pairs-s0.json").write_text(json.dumps({**pairs, "settings": {**pairs["settings"], "lr": 9.0}}))
    with pytest.raises(SystemExit, match=r"differ in \['lr'\]"):
        module.main(out_args + ["--summarize", "--goal-reference", str(tmp_path / "reference")])


def test_an_interrupted_run_continues_exactly_from_its_newest_checkpoint(study, tmp_path, capsys):
    """A run killed after its step-2 checkpoint (of 4) continues from it when the study starts again, and ends
    where the uninterrupted run ended; a run folder of other settings is started afresh."""
    module, argv, _, base = study
    index = json.loads((base / "shards" / "index.json").read_text())
    settings = module.settings_from_args(module.resolve_args(module.build_parser().parse_args(argv)), index)
    runs, out = tmp_path / "runs", tmp_path / "out"
    whole = module.run_one("pairs", 0, settings, base / "shards", runs, out, keep_checkpoints=True)
    assert whole["resumed"] is False
    run_dir = runs / "pairs-s0"
    (run_dir / "checkpoints" / "step_000004.pt").unlink()  # killed between the step-2 and step-4 checkpoints
    (run_dir / "model_final.pt").unlink()
    capsys.readouterr()
    again = module.run_one("pairs", 0, settings, base / "shards", runs, out)
    assert again["resumed"] is True and "resumed from" in capsys.readouterr().out
    assert [p["step"] for p in again["val_curve"]] == [2, 4]  # the killed run's step-4 record is not kept twice
    assert again["final_loss"] == pytest.approx(whole["final_loss"], rel=1e-5)
    for a, b in zip(again["val_curve"], whole["val_curve"]):
        assert a["mR_t2i"] == pytest.approx(b["mR_t2i"], abs=1e-9)
        assert a["flops"] == pytest.approx(b["flops"])
    assert again["final"]["test"]["mR_t2i"] == pytest.approx(whole["final"]["test"]["mR_t2i"], abs=1e-9)
    # a folder left by a study with other settings is not resumed
    (run_dir / "study_settings.json").write_text(json.dumps({**settings, "lr": 1.0}))
    assert module.run_one("pairs", 0, settings, base / "shards", runs, out)["resumed"] is False


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b"[1, 2]"])
def test_hostile_study_records_get_a_one_line_error(study, tmp_path, content):
    """A corrupt run record, in --out/runs or in --goal-reference, and a corrupt resume marker."""
    import shutil

    module, argv, out, base = study
    runs = tmp_path / "out" / "runs"
    shutil.copytree(out / "runs", runs)
    (runs / "bleu-s0.json").write_bytes(content)
    args = list(argv)
    args[args.index("--out") + 1] = str(tmp_path / "out")
    with pytest.raises(SystemExit, match=r"bleu-s0.json: not a (readable )?run record"):
        module.main(args + ["--summarize"])
    with pytest.raises(SystemExit, match=r"bleu-s0.json: not a (readable )?run record"):
        module.main(args)  # the resume check reads it too
    reference = tmp_path / "reference" / "runs"
    reference.mkdir(parents=True)
    (reference / "pairs-s0.json").write_bytes(content)
    shutil.copy(out / "runs" / "bleu-s0.json", runs / "bleu-s0.json")
    with pytest.raises(SystemExit, match=r"pairs-s0.json: not a (readable )?run record"):
        module.main(args + ["--summarize", "--goal-reference", str(tmp_path / "reference")])
    # a run folder whose resume marker is garbage starts afresh instead of failing
    index = json.loads((base / "shards" / "index.json").read_text())
    settings = module.settings_from_args(module.resolve_args(module.build_parser().parse_args(argv)), index)
    run_dir = tmp_path / "runs" / "pairs-s0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_000002.pt").write_bytes(b"junk")
    (run_dir / "study_settings.json").write_bytes(content)
    assert module.run_one("pairs", 0, settings, base / "shards", tmp_path / "runs", tmp_path / "out")["resumed"] is False


# ------------------------------------------------------------------------------ ablations.py helpers


@pytest.fixture(scope="module")
def ablations():
    return _load_script("ablations")


def test_no_collapse_variant_matches_the_library_without_copies_and_differs_with_them(ablations):
    from wfa.redundancy import bleu_uniqueness

    distinct = ["a large parking lot with many cars", "many cars are parked in the lot", "some trees beside a road"]
    assert ablations.uniqueness_without_collapsing(distinct) == pytest.approx(bleu_uniqueness(distinct), abs=1e-12)
    copies = distinct + ["Some trees  beside a road"]  # an exact copy after normalisation and lower-casing
    collapsed, separate = bleu_uniqueness(copies), ablations.uniqueness_without_collapsing(copies)
    assert collapsed[2] == pytest.approx(collapsed[3]) and separate[2] == pytest.approx(separate[3])
    assert separate.sum() == pytest.approx(1.0) and not separate == pytest.approx(collapsed)
    # each copy now scores BLEU 100 against its twin, so the pair loses uniqueness: less weight per copy
    assert separate[3] < collapsed[3] * 2 and ablations.copy_groups(copies) == [1, 1, 2, 2]


def test_rank_correlations(ablations):
    a, b = [1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 45.0]
    assert ablations.spearman(a, b) == pytest.approx(1.0) and ablations.pearson(a, b) < 1.0
    assert ablations.spearman(a, b[::-1]) == pytest.approx(-1.0)
    assert list(ablations.rankdata([3.0, 1.0, 3.0, 2.0])) == [3.5, 1.0, 3.5, 2.0]
    assert ablations.pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None  # constant: undefined, not 0


def test_variant_shards_change_only_the_weights(ablations, study, tmp_path):
    import tarfile

    _, _, _, base = study
    src, dst = base / "shards", tmp_path / "variant"
    uniform = lambda captions: [1.0 / len(captions)] * len(captions)
    index = ablations.write_variant_shards(src, dst, uniform, "uniform")
    assert index["weights_variant"] == "uniform" and index["weights_variant_rewritten"] == 3 * LIMIT
    name = index["splits"]["train"]["shards"][0]["name"]
    with tarfile.open(src / name) as a, tarfile.open(dst / name) as b:
        assert a.getnames() == b.getnames()
        for member in a.getmembers():
            old, new = a.extractfile(member).read(), b.extractfile(member.name).read()
            if member.name.endswith(".json"):
                old, new = json.loads(old), json.loads(new)
                assert new["weights"]["bleu"] == [0.2] * 5 and old["weights"]["bleu"] != new["weights"]["bleu"]
                assert {k: v for k, v in old.items() if k != "weights"} == {k: v for k, v in new.items() if k != "weights"}
            else:
                assert old == new


def test_attention_vs_bleu_on_the_study_weights(ablations, study):
    _, _, out, _ = study
    record = json.loads((out / "weights" / "attention-s0.json").read_text())
    result = ablations.attention_vs_bleu(record)
    assert result["num_images"] == LIMIT and result["num_captions"] == 5 * LIMIT
    assert 0.0 <= result["learned_distance_from_uniform"] < 0.8 and 0.0 < result["learned_normalised_entropy"] <= 1.0 + 1e-6
    for key in ("pearson_pooled", "spearman_pooled"):
        assert result[key] is None or -1.0 <= result[key] <= 1.0


def test_ablations_end_to_end_reuse_the_study(ablations, study, ucm_dir):
    _, _, out, base = study
    argv = ["--quick", "--budget-steps", str(STEPS), "--seeds", "1", "--limit-images", str(LIMIT),
            "--retrieval-variants", "no_collapse", "--taus", "0.1,1", "--ucm-dir", str(ucm_dir),
            "--study-dir", str(out), "--shards-dir", str(base / "shards"), "--runs-dir", str(base / "runs"),
            "--out", str(base / "ablations.json")]
    assert ablations.main(argv) == 0
    report = json.loads((base / "ablations.json").read_text())
    assert report["weights"]["num_images"] == LIMIT and report["weights"]["num_captions"] == 5 * LIMIT
    assert set(report["weights"]["variants"]) == {"linear", "softmax_tau0.1", "softmax_tau1", "no_collapse"}
    v = report["weights"]["variants"]
    assert v["softmax_tau0.1"]["normalised_entropy"] < v["softmax_tau1"]["normalised_entropy"]  # lower tau: peakier
    assert [r["seed"] for r in report["attention_vs_bleu"]] == [0]  # read from the study's weights/
    assert list(report["retrieval"]["variants"]) == ["bleu[linear (study's bleu runs)]", "bleu[no_collapse]"]
    run = json.loads((out / "ablation_runs" / "bleu-no_collapse-s0.json").read_text())
    assert run["weights_variant"] == "no_collapse" and run["captions_encoded"] == 5 * STEPS * BATCH


def test_plots_of_the_study(study):
    _, _, out, _ = study
    plot_study = _load_script("plot_study")
    assert plot_study.main(["--study-dir", str(out)]) == 0
    for name in ("recall_at_k.png", "time_to_quality.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
