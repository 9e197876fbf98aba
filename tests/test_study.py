"""wfa study: the config (grid, arms, budgets), compute-matched steps, the analysis on hand-made records, reading the
committed version-3 records (the RSICD 880-step table reproduced), and a micro study end to end with resume."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from wfa.errors import StudyError
from wfa.phases import Phases
from wfa.study import analysis
from wfa.study.budget import predicted_flops, step_seconds, steps_for
from wfa.study.config import arm_config, load_study, study_from_dict
from wfa.study.records import read_record, record_identity

REPO = Path(__file__).resolve().parents[1]
MICRO = {"model": {"name": "wfa-vit-micro"}, "data": {"image_size": 32, "val_split": "val", "shuffle": 32},
         "train": {"batch_size": 8, "lr": 1.0e-3, "eval_every": 2}}


# -- the config ----------------------------------------------------------------------------------------------------

def test_grid_and_named_arms_expand_in_order():
    study = study_from_dict({"name": "s", "config": MICRO, "set": {"train.weight_decay": 0.1},
                             "grid": {"method": ["pairs", "multipos"], "train.lr": [1.0e-3, 5.0e-4]},
                             "group_by": ["method"],
                             "arms": [{"name": "multipos-pd50", "set": {"method": "multipos",
                                                                        "model.patch_dropout": 0.5}}],
                             "seeds": 2, "budget": {"steps": 6}})
    names = [a.name for a in study.arms]
    assert names == ["pairs+lr=0.001", "pairs+lr=0.0005", "multipos+lr=0.001", "multipos+lr=0.0005", "multipos-pd50"]
    assert [a.group for a in study.arms] == ["pairs", "pairs", "multipos", "multipos", "multipos-pd50"]
    assert study.seeds == [0, 1] and study.set == ["train.weight_decay=0.1"]
    cfg = arm_config(study, study.arm("multipos+lr=0.0005"), 1, steps=6, run_dir=Path("r"))
    assert (cfg.method, cfg.train.lr, cfg.seed, cfg.train.steps) == ("multipos", 5e-4, 1, 6)
    assert cfg.train.weight_decay == 0.1
    assert cfg.train.checkpoint_every == cfg.train.eval_every == 2 and cfg.train.keep_checkpoints == 0
    pd = arm_config(study, study.arm("multipos-pd50"), 0, steps=6, run_dir=Path("r"))
    assert pd.model.patch_dropout == 0.5 and pd.out == "r"


def test_auto_precision_is_decided_by_the_study_for_every_arm(monkeypatch):
    """A study asked for train.precision=auto gives every arm the one precision this machine resolves it to, so the
    runs' identities and records name bf16 or no, never auto."""
    import wfa.peak

    study = study_from_dict({"name": "s", "config": MICRO, "set": {"train.precision": "auto"},
                             "grid": {"method": ["pairs", "multipos"]}, "budget": {"steps": 4}})
    for fastest in ("bf16", "no"):
        monkeypatch.setattr(wfa.peak, "fastest_precision", lambda device, fastest=fastest: fastest)
        assert {arm_config(study, arm, 0, steps=4, run_dir=Path("r")).train.precision for arm in study.arms} == {
            fastest}


@pytest.mark.parametrize("values, match", [
    ({"grid": {"method": ["pairs", "nope"]}}, "arm nope: method='nope'"),
    ({"grid": {"method": ["pairs"]}, "budget": {"steps": 4, "flops": 1e9}}, "one of steps, flops"),
    ({"grid": {"method": ["pairs"]}, "budget": {"fraction": 0.3}}, "needs budget.reference"),
    ({"grid": {"method": ["pairs"]}, "budget": {"fraction": 0.3, "reference": {"arm": "pairs"}}}, "either steps"),
    ({"grid": {"method": ["pairs"]}, "budget": {"fraction": 0.3, "reference": {"arm": "x", "steps": 9}}}, "no arm 'x'"),
    ({"grid": {"method": ["pairs"]}, "seeds": 0}, "seeds"),
    ({"grid": {"method": ["pairs"]}, "wat": 1}, "unknown study key"),
    ({"arms": [{"name": "../up", "set": {"method": "pairs"}}]}, "file name"),
    ({"arms": [{"name": "a", "set": {"method": "pairs"}}, {"name": "a", "set": {"method": "random"}}]}, "used twice"),
    ({}, "no arms"),
    ({"grid": {"method": ["pairs"]}, "goal": {"metrics": ["accuracy"]}}, "goal.metrics"),
])
def test_bad_study_configs_name_the_key(values, match):
    with pytest.raises(StudyError, match=match):
        study_from_dict({"name": "s", "config": MICRO, **values})


def test_budget_forms():
    base = {"name": "s", "config": MICRO, "grid": {"method": ["pairs"]}}
    assert study_from_dict({**base, "budget": {"flops": "4.4e13"}}).budget.flops == 4.4e13  # YAML 1.1 string
    study = study_from_dict({**base, "budget": {"fraction": 0.25, "reference": {"study": "x", "arm": "pairs"},
                                                "validations": 4, "warmup_fraction": 0.1}})
    assert study.budget.kind == "fraction" and study.budget.reference.study == "x"
    cfg = arm_config(study, study.arms[0], 0, steps=40, run_dir=Path("r"))
    assert cfg.train.warmup_steps == 4
    assert study_from_dict(base).budget.kind == "steps"  # no budget: the base's train.steps


# -- compute-matched steps ---------------------------------------------------------------------------------------

def test_phase_fractions_and_steps_follow_the_loop():
    phases = Phases(64, 32, 0.3, 0.5, 0.2)
    fractions = dict((p.name, f) for p, f in phases.fractions())
    assert fractions == pytest.approx({"32px+pd0.5": 0.3, "64px+pd0.5": 0.5, "64px": 0.2})
    counts = {p.name: n for p, n in phases.steps(10).items()}
    assert counts == {"32px+pd0.5": 3, "64px+pd0.5": 5, "64px": 2}
    assert [(p.name, f) for p, f in Phases(64).fractions()] == [("64px", 1.0)]


def test_steps_for_a_flop_budget_count_each_phase(tmp_path):
    study = study_from_dict({"name": "s", "config": MICRO, "grid": {"method": ["multipos"]},
                             "set": {"model.patch_dropout": 0.5, "train.unmasked_fraction": 0.25}})
    cfg = arm_config(study, study.arms[0], 0, steps=1, run_dir=tmp_path)
    costs = {"phases": [{"phase": "32px+pd0.5", "flops_per_step": 1.0e9, "fraction": 0.75},
                        {"phase": "32px", "flops_per_step": 2.0e9, "fraction": 0.25}], "flops_per_step": 1.25e9}
    assert predicted_flops(cfg, costs, 8) == pytest.approx(6 * 1e9 + 2 * 2e9)
    budget = 50.3e9
    steps = steps_for(cfg, costs, budget)
    assert predicted_flops(cfg, costs, steps) <= budget < predicted_flops(cfg, costs, steps + 1)
    assert steps == 40  # 30 masked x 1 + 10 unmasked x 2 = 50 GFLOP; 41 steps would cost 51


def test_step_seconds_are_the_uncounted_steps():
    records = [{"step": s, "images_seen": 8 * s, "images_per_s": 8 / t}
               for s, t in zip(range(1, 7), (5.0, 1.0, 3.0, 1.2, 3.0, 1.1))]
    assert step_seconds(records, counted_every=2) == pytest.approx([1.0, 1.2, 1.1])


# -- the analysis, on hand-made records ------------------------------------------------------------------------------

def _record(arm: str, seed: int, curve: list[float], final_test: float, i2t: float = 5.0, flops: float = 100.0,
            wall: float = 10.0) -> dict:
    steps = [10 * (i + 1) for i in range(len(curve))]
    points = [{"step": s, "train_wall_s": wall * s / steps[-1], "flops": flops * s / steps[-1], "mR_t2i": v,
               "images_encoded": s, "captions_encoded": s} for s, v in zip(steps, curve)]
    test = {"t2i_r1": final_test, "t2i_r5": final_test, "t2i_r10": final_test, "i2t_r1": i2t, "i2t_r5": i2t,
            "i2t_r10": i2t, "mR": (final_test + i2t) / 2, "mR_t2i": final_test, "num_images": 100,
            "num_captions": 500}
    best = analysis.best_val_point(points)
    curve_k = {"k": [1, 2], "t2i": [1.0, 2.0], "i2t": [1.0, 2.0]}
    return {"arm": arm, "group": arm, "seed": seed, "dataset": "d", "config": {"method": arm, "model": {"name": "m"},
            "data": {"image_size": 64}, "train": {"eval_every": 10}}, "budget": {"steps": steps[-1], "batch_size": 32},
            "val_curve": points, "train_flops": flops, "flops_per_step": flops / steps[-1], "train_wall_s": wall,
            "images_encoded": 1, "captions_encoded": 1,
            "best_val": {"step": best["step"], "val_mR_t2i": best["mR_t2i"], "test": test, "recall_curve": curve_k},
            "final": {"step": steps[-1], "val_mR_t2i": curve[-1], "test": test, "recall_curve": curve_k}}


def test_mean_std_and_derived_metrics():
    assert analysis.mean_std([1.0, 2.0, None, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert analysis.mean_std([4.0]) == {"mean": 4.0, "std": 0.0, "n": 1}
    assert analysis.mean_std([None])["n"] == 0
    assert analysis.metric({"i2t_r1": 1.0, "i2t_r5": 2.0, "i2t_r10": 6.0}, "mR_i2t") == 3.0
    assert analysis.metric({"mR_t2i": 2.0}, "mR_i2t") is None
    assert analysis.best_val_point([{"step": 1, "mR_t2i": 5.0}, {"step": 2, "mR_t2i": 5.0}])["step"] == 1


def test_time_to_quality_and_goal_on_hand_made_records():
    records = [_record("pairs", 0, [1.0, 4.0, 6.0], 6.0), _record("pairs", 1, [2.0, 5.0, 8.0], 8.0),
               _record("fast", 0, [7.0, 8.0, 9.0], 8.0, i2t=4.0, flops=30.0),
               _record("fast", 1, [3.0, 7.5, 9.0], 7.0, i2t=6.0, flops=30.0)]
    ttq = analysis.time_to_quality(records, "pairs", "test")
    assert ttq["threshold_mR_t2i"] == 7.0  # pairs' mean final test
    assert ttq["methods"]["pairs"]["reached"] == "1/2" and ttq["methods"]["fast"]["reached"] == "2/2"
    assert ttq["methods"]["fast"]["step"]["mean"] == 15.0  # seed 0 at step 10, seed 1 at step 20
    goal = analysis.goal_check(records, arm="pairs", fraction=1 / 3, metrics=["mR_t2i", "mR_i2t"], tolerance=0)
    fast = goal["arms"]["fast"]
    assert "pairs" not in goal["arms"] and fast["within_budget"] and fast["run_flops_ratio"] == pytest.approx(0.3)
    assert fast["metrics"]["mR_t2i"]["reached"] and fast["metrics"]["mR_t2i"]["difference"] == pytest.approx(0.5)
    assert fast["metrics"]["mR_i2t"]["difference"] == pytest.approx(0.0) and fast["met"]
    assert fast["flops_ratio_per_seed"] == pytest.approx([0.1, 0.2])  # val reaches 7.0 at 10 and 20 of 30 steps
    strict = analysis.goal_check(records, arm="pairs", fraction=0.25, metrics=["mR_t2i"])
    assert not strict["arms"]["fast"]["within_budget"] and not strict["arms"]["fast"]["met"]
    pooled = strict["arms"]["fast"]["metrics"]["mR_t2i"]["tolerance"]
    assert pooled == pytest.approx(np.sqrt((np.std([8, 7], ddof=1) ** 2 + np.std([6, 8], ddof=1) ** 2) / 2))


def test_selection_on_val_and_the_recommendation_with_its_noise():
    records = [_record("a-lr1", s, [1.0, v], 5.0) for s, v in ((0, 10.0), (1, 10.4))]
    records += [_record("a-lr2", s, [1.0, v], 6.0) for s, v in ((0, 9.0), (1, 9.2))]
    records += [_record("pairs", s, [1.0, v], 4.0) for s, v in ((0, 9.6), (1, 10.4))]
    for r in records[:4]:
        r["group"], r["config"]["method"] = "a", "multipos"  # two learning rates of one method
    summary = analysis.summarize(records, "d", "pairs")
    assert summary["selection"]["a"]["selected"] == "a-lr1"  # best val, not best test
    assert summary["selection"]["a"]["test_mR_t2i"]["mean"] == 5.0
    advice = analysis.recommend(summary, "pairs")
    assert advice["arm"] == "a-lr1" and advice["ranking"] == ["a-lr1", "pairs"]
    (versus,) = advice["comparisons"]
    assert versus["difference"] == pytest.approx(0.2) and versus["pooled_std"] == pytest.approx(np.sqrt(0.2))
    assert versus["within_noise"] and advice["within_noise"]
    records[-1]["best_val"]["val_mR_t2i"] = records[-2]["best_val"]["val_mR_t2i"] = 8.0  # pairs far behind now
    clear = analysis.recommend(analysis.summarize(records, "d", "pairs"), "pairs")
    assert not clear["within_noise"] and clear["comparisons"][0]["difference"] == pytest.approx(2.2)
    text = analysis.markdown_recommendation(summary, advice)
    assert "**a-lr1**" in text and "within seed noise" in text
    md = analysis.markdown_summary(summary)
    assert "| a | a-lr1, a-lr2 | a-lr1 |" in md and "| arm | seeds |" in md


# -- records of version 3 and the committed tables ---------------------------------------------------------------------

def test_version_3_records_are_read_as_the_runs_they_describe():
    record = read_record(REPO / "benchmarks" / "study-rsicd-880" / "runs" / "multipos-s1.json")
    cfg = record["config"]
    assert (record["version"], record["arm"], record["seed"], record["dataset"]) == (3, "multipos", 1, "RSICD")
    assert cfg["train"]["steps"] == 880 and cfg["train"]["eval_every"] == 110 and cfg["data"]["shuffle"] == 8734
    assert cfg["model"]["name"] == "wfa-vit-tiny-shallowtext" and cfg["method_options"]["copy_positives"] is False
    assert record["precision"] == "no" and record["compile"] is False
    study = load_study(REPO / "configs" / "studies" / "rsicd-880.yaml")
    from wfa.study.runner import expected_identity, load_plan

    wanted = expected_identity(study, study.arm("multipos"), 1, load_plan(study))
    assert record_identity(record) == json.loads(json.dumps(wanted))


def test_a_version_3_record_is_filed_under_its_arm_by_its_file_name(tmp_path):
    """The v3 script named records by method; a v3 record of an arm with overrides is filed as <arm>-s<seed>.json
    and read as that arm (a name of another form keeps the method)."""
    source = REPO / "benchmarks" / "study-rsicd-880" / "runs" / "multipos-s1.json"
    (tmp_path / "mp-lr-check-s1.json").write_bytes(source.read_bytes())
    (tmp_path / "renamed.json").write_bytes(source.read_bytes())
    filed = read_record(tmp_path / "mp-lr-check-s1.json")
    assert (filed["arm"], filed["group"], filed["seed"]) == ("mp-lr-check", "mp-lr-check", 1)
    assert read_record(tmp_path / "renamed.json")["arm"] == "multipos"
    assert record_identity(filed) == record_identity(read_record(source))


@pytest.mark.parametrize("name", ["study-rsicd-880", "study-rsicd", "study-ucm"])
def test_the_study_configs_reproduce_the_committed_tables(name, tmp_path, monkeypatch, capsys):
    """`wfa study --config configs/studies/X.yaml --summarize` gives the committed tables from the committed records
    (every table line and the quality-at-a-third lines; the goal table's form changed with its configurable
    metrics)."""
    from wfa.cli import main

    monkeypatch.chdir(REPO)
    shutil.copytree(REPO / "benchmarks" / name / "runs", tmp_path / "runs")
    config = REPO / "configs" / "studies" / f"{name.removeprefix('study-')}.yaml"
    assert main(["study", "--config", str(config), "--summarize", "--out", str(tmp_path)]) == 0
    committed = (REPO / "benchmarks" / name / "summary.md").read_text()
    made = (tmp_path / "summary.md").read_text()
    old_goal = committed[committed.find("| method | seeds | run FLOPs / pairs' run"):]
    old_goal = old_goal[:old_goal.find("\n\n")] if "\n\n" in old_goal else old_goal
    lines = [line for line in committed.splitlines() if (line.startswith("|") or line.startswith("Val mR_t2i"))
             and line not in old_goal]
    assert lines and [line for line in lines if line not in made.splitlines()] == []
    summary = json.loads((tmp_path / "summary.json").read_text())
    old = json.loads((REPO / "benchmarks" / name / "summary.json").read_text())
    assert (tmp_path / "time_to_quality.png").read_bytes()[:4] == b"\x89PNG"
    if "arms" in old:  # a summary written by wfa study itself: the same analysis of the same records
        assert json.loads(json.dumps(summary["arms"])) == old["arms"] and summary.get("goal") == old.get("goal")
        return
    for arm, entry in old["methods"].items():
        assert summary["arms"][arm]["seeds"] == entry["seeds"]
        assert summary["arms"][arm]["best_val"]["mR_t2i"] == pytest.approx(entry["best_val"]["mR_t2i"])
    if name == "study-rsicd-880":  # the goal against the 3,000-step pairs runs of the reference study
        goal = summary["goal"]
        assert goal["targets"]["mR_t2i"]["mean"] == pytest.approx(old["goal"]["threshold_mR_t2i"])
        assert goal["reference_steps"] == [3000] and goal["targets"]["mR_i2t"]["mean"] == pytest.approx(6.54, abs=5e-3)
        for arm, entry in old["goal"]["methods"].items():
            mine = goal["arms"][arm]
            assert mine["run_flops_ratio"] == pytest.approx(entry["run_flops_ratio"])
            assert mine["metrics"]["mR_t2i"]["difference"] == pytest.approx(entry["difference_to_pairs"])
            assert not mine["met"]


def test_hostile_records_get_a_one_line_error(tmp_path, monkeypatch, capsys):
    from hostile import error_line

    from wfa.cli import main

    monkeypatch.chdir(REPO)
    shutil.copytree(REPO / "benchmarks" / "study-rsicd-880" / "runs", tmp_path / "runs")
    config = str(REPO / "configs" / "studies" / "rsicd-880.yaml")
    for content in (b"{not json", b"\xff\xfe", b"[1, 2]", b'{"version": 9}'):
        (tmp_path / "runs" / "pairs-s1.json").write_bytes(content)
        assert main(["study", "--config", config, "--summarize", "--out", str(tmp_path)]) == 1
        assert "pairs-s1.json" in error_line(capsys.readouterr().err, "study")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrid: {method: [pairs]}\nbudget: {steps: -1}\n")
    assert main(["study", "--config", str(bad), "--summarize"]) == 1
    assert "bad.yaml" in error_line(capsys.readouterr().err, "study")


@pytest.mark.parametrize("seeds, expected", [("3", [0, 1, 2]), ("2,", [2]), ("0,2", [0, 2])])
def test_seeds_are_a_count_or_a_list(seeds, expected):
    from wfa.commands.study import _seeds

    assert _seeds(seeds) == expected


def test_a_seed_count_of_zero_says_how_to_ask_for_seed_zero(capsys):
    """`--seeds 0` (meant: seed 0) is a count of none: refused, with the list form that means seed 0 alone."""
    from hostile import error_line

    from wfa.cli import main

    assert main(["study", "--config", str(REPO / "configs" / "studies" / "ucm.yaml"), "--seeds", "0"]) == 2
    assert "--seeds 0," in error_line(capsys.readouterr().err, "study")


# -- a micro study end to end ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """A 2-arm x 2-seed study of 4 steps on synthetic shards; returns (study, summary, root)."""
    import torch

    from wfa.data.synthetic import SyntheticReader
    from wfa.data.writer import write_shards
    from wfa.study.runner import run_study

    previous = torch.get_num_threads()
    root = tmp_path_factory.mktemp("study")
    write_shards(SyntheticReader(num_images=40, seed=0, image_size=32), root / "shards", shard_size=8, progress=False)
    study = study_from_dict({"name": "micro", "dataset": "synthetic", "config": MICRO,
                             "grid": {"method": ["pairs", "attention"]}, "seeds": 2, "budget": {"steps": 4},
                             "shards": str(root / "shards"), "out": str(root / "out"),
                             "runs_dir": str(root / "runs"), "flops_every": 2})
    summary = run_study(study)
    yield study, summary, root
    torch.set_num_threads(previous)


def test_micro_study_records_summary_and_plots(micro):
    study, summary, root = micro
    out = root / "out"
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["attention-s0.json", "attention-s1.json",
                                                                "pairs-s0.json", "pairs-s1.json"]
    for arm in ("pairs", "attention"):
        r = read_record(out / "runs" / f"{arm}-s1.json")
        assert r["version"] == 4 and r["arm"] == arm and r["seed"] == 1 and r["budget"]["steps"] == 4
        assert r["precision"] == "no" and r["compile"] is False and r["overrides"] == [f"method={arm}"]
        assert r["config"]["seed"] == 1 and r["config"]["train"]["steps"] == 4
        assert [p["step"] for p in r["val_curve"]] == [2, 4] and r["train_flops"] > 0
        assert r["best_val"]["step"] in (2, 4) and r["final"]["step"] == 4
        assert len(r["best_val"]["recall_curve"]["t2i"]) == 20
        assert not (Path(r["run_dir"]) / "checkpoints").exists() and (Path(r["run_dir"]) / "model_final.pt").is_file()
    assert "agg_mR_i2t" in read_record(out / "runs" / "attention-s0.json")["best_val"]["test"]
    weights = json.loads((out / "weights" / "attention-s0.json").read_text())
    assert len(weights["learned_weights"]) == len(weights["bleu_weights"]) == weights["text_to_image"].__len__()
    assert list(summary["arms"]) == ["pairs", "attention"] and summary["arms"]["pairs"]["seeds"] == [0, 1]
    md = (out / "summary.md").read_text()
    assert "| pairs | 2 |" in md and "| attention | 2 |" in md and "| chance |" in md
    for name in ("recall_at_k.png", "time_to_quality.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_micro_study_in_two_processes(micro, capsys):
    """--jobs 2: the runs train in worker processes (forkserver or spawn) and write the same records."""
    from dataclasses import replace

    from wfa.study.runner import run_study

    study, _, root = micro
    parallel = replace(study, arms=[study.arm("pairs")], out=str(root / "jobs-out"), runs_dir=str(root / "jobs-runs"))
    summary = run_study(parallel, jobs=2)
    assert capsys.readouterr().out.count("(queued)") == 2
    assert summary["arms"]["pairs"]["seeds"] == [0, 1]
    for seed in (0, 1):
        record = read_record(root / "jobs-out" / "runs" / f"pairs-s{seed}.json")
        assert record["seed"] == seed and record["budget"]["steps"] == 4 and record["torch_threads"] == 1


def test_micro_study_skips_finished_runs_and_refuses_other_settings(micro, capsys):
    from dataclasses import replace

    from wfa.study.runner import run_study

    study, _, root = micro
    before = {p.name: p.stat().st_mtime_ns for p in (root / "out" / "runs").iterdir()}
    run_study(study)
    assert capsys.readouterr().out.count("[skip]") == 4
    assert {p.name: p.stat().st_mtime_ns for p in (root / "out" / "runs").iterdir()} == before
    with pytest.raises(StudyError, match="other settings"):
        run_study(replace(study, set=["train.lr=0.01"]))


def test_an_interrupted_run_continues_exactly_from_its_newest_checkpoint(micro, tmp_path, capsys):
    """A run killed after its step-2 checkpoint (of 4) continues from it and ends where the whole run ended."""
    from dataclasses import replace

    from wfa.study.runner import load_plan, run_one

    study, _, root = micro
    study = replace(study, out=str(tmp_path / "out"), runs_dir=str(tmp_path / "runs"))
    plan = load_plan(study)
    arm = study.arm("pairs")
    whole = run_one(study, arm, 0, plan, keep_checkpoints=True)
    assert whole["resumed"] is False
    run_dir = tmp_path / "runs" / "pairs-s0"
    (run_dir / "checkpoints" / "step_000004.pt").unlink()  # killed between the step-2 and step-4 checkpoints
    (run_dir / "model_final.pt").unlink()
    capsys.readouterr()
    again = run_one(study, arm, 0, plan)
    assert again["resumed"] is True and "resumed from" in capsys.readouterr().out
    assert [p["step"] for p in again["val_curve"]] == [2, 4]  # the killed run's step-4 record is not kept twice
    assert again["final_loss"] == pytest.approx(whole["final_loss"], rel=1e-5)
    for a, b in zip(again["val_curve"], whole["val_curve"]):
        assert a["mR_t2i"] == pytest.approx(b["mR_t2i"], abs=1e-9) and a["flops"] == pytest.approx(b["flops"])
    assert again["final"]["test"]["mR_t2i"] == pytest.approx(whole["final"]["test"]["mR_t2i"], abs=1e-9)
    (run_dir / "study_run.json").write_text("{not json")  # a garbage marker: the folder is started afresh
    assert run_one(study, arm, 0, plan)["resumed"] is False


def test_choose_method_preset_end_to_end(micro, tmp_path, capsys):
    """The preset on tiny shards: compute-matched arms (probed FLOPs per step), 2 seeds, a recommendation."""
    from wfa.cli import main

    from wfa.study.presets import choose_method

    _, _, root = micro
    out = tmp_path / "screen"
    # the preset trains at the machine's fastest precision; this process stays fp32 (one precision per process)
    assert choose_method(root / "shards", budget_flops=3e9).base["train"]["precision"] == "auto"
    assert main(["study", "--preset", "choose-method", "--shards", str(root / "shards"), "--budget-flops", "3e9",
                 "--arms", "pairs,random,multipos", "--set", "model.name=wfa-vit-micro", "--set", "data.image_size=32",
                 "--set", "train.batch_size=8", "--set", "train.precision=no", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Recommendation: **" in printed and "pooled seed std" in printed
    assert (out / "recommendation.md").read_text().startswith("Recommendation:")
    plan = json.loads((out / "plan.json").read_text())
    assert plan["budget_flops"] == 3e9
    steps = {arm: entry["steps"] for arm, entry in plan["arms"].items()}
    assert steps["multipos"] < steps["pairs"]  # multipos costs more per step: fewer steps for the same FLOPs
    for arm, entry in plan["arms"].items():
        assert entry["predicted_flops"] <= 3e9 < entry["predicted_flops"] + entry["probe"]["flops_per_step"] * 1.01
        for seed in (0, 1):
            record = read_record(out / "runs" / f"{arm}-s{seed}.json")
            assert record["budget"]["steps"] == entry["steps"] and record["budget"]["flops"] == 3e9
            assert record["train_flops"] == pytest.approx(entry["predicted_flops"], rel=0.15)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["arms"]) == {"pairs", "random", "multipos"}
    assert all(e["seeds"] == [0, 1] for e in summary["arms"].values())
