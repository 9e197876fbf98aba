"""Compare training configurations under one budget: methods, levers, any key; resumable, with seeds and goals.

  wfa study --config configs/studies/rsicd-880.yaml --jobs 2       # train what is missing, then summarise
  wfa study --config configs/studies/rsicd-880.yaml --summarize    # tables and plots from the records only
  wfa study --preset choose-method --shards shards/mine --minutes 30

A study config is a base run config (the `wfa train --config` format), a grid of overrides or named arms, seeds and
a budget in steps or FLOPs (compute-matched); see docs/studies.md. Finished runs are skipped and an interrupted run
continues from its newest checkpoint when the same command is run again. The choose-method preset screens the
candidate methods on your shards, every arm given the same training FLOPs, and recommends one with its seed noise.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``wfa study`` options."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="study YAML (e.g. configs/studies/rsicd-880.yaml)")
    source.add_argument("--preset", choices=("choose-method",),
                        help="a built-in study on your --shards: choose-method screens the candidate methods")
    parser.add_argument("--shards", help="--preset: your shard folder (train, val and test splits)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="--preset: wall-time budget of the whole screen (default 20)")
    budget.add_argument("--budget-flops", type=float, help="--preset: training FLOPs per run, e.g. 2e13")
    parser.add_argument("--seeds", help="seeds to run: a count N (0..N-1) or a list 0,1,2 (seed 2 alone: 2,) "
                                        "(default: the study's; the preset: 2)")
    parser.add_argument("--arms", help="comma-separated subset of the study's arms to train (default: all)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a run-config override for every arm (repeatable), e.g. --set train.precision=bf16; part "
                             "of every run's settings")
    parser.add_argument("--out", help="records, summary and plots (default: the study's out)")
    parser.add_argument("--runs-dir", help="run folders: checkpoints, metrics.jsonl (default: the study's runs_dir)")
    parser.add_argument("--data-dir", help="the data folder $WFA_SHARED_DATA stands for in the study's shard paths "
                                           "(default: the environment variable)")
    parser.add_argument("--summarize", action="store_true",
                        help="train nothing: summarise the records made with the study's settings")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, one process each (default 1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (default 1: on a shared machine more threads than free cores slow "
                             "every run down)")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep every run's checkpoints")


def _seeds(text: str) -> list[int]:
    from wfa.errors import StudyError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise StudyError(f"--seeds {text}: give a count or a comma-separated list of seeds").with_exit_code(2) from None
    if len(values) == 1 and "," not in text:
        values = list(range(values[0]))
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise StudyError(f"--seeds {text}: give a count >= 1 or distinct seeds >= 0 (one seed alone, e.g. seed 0: "
                         "--seeds 0,)").with_exit_code(2)
    return values


def run(args: argparse.Namespace) -> int:
    """Run ``wfa study``; returns the exit code."""
    import sys
    from dataclasses import replace

    from wfa.errors import StudyError
    from wfa.study.analysis import markdown_recommendation, recommend
    from wfa.study.config import check_study, load_study
    from wfa.study.runner import run_study, summarize_study

    if args.jobs < 1 or args.threads < 1:
        raise StudyError("--jobs and --threads must be >= 1").with_exit_code(2)
    argv = ["study", *sys.argv[2:]] if len(sys.argv) > 1 and sys.argv[1] == "study" else None
    if args.preset:
        from wfa.study.presets import choose_method

        if not args.shards:
            raise StudyError("--preset choose-method needs --shards (your shard folder)").with_exit_code(2)
        study = choose_method(args.shards, minutes=args.minutes, budget_flops=args.budget_flops,
                              seeds=len(_seeds(args.seeds)) if args.seeds else 2,
                              arms=args.arms.split(",") if args.arms else None, out=args.out, overrides=args.set)
        only = None
    else:
        if args.shards or args.minutes is not None or args.budget_flops is not None:
            raise StudyError("--shards, --minutes and --budget-flops belong to --preset; a study config names its "
                             "shards and budget").with_exit_code(2)
        study = load_study(args.config, args.set)
        if args.seeds:
            study = replace(study, seeds=_seeds(args.seeds))
        if args.out or args.runs_dir or args.data_dir:
            study = replace(study, out=args.out or study.out, runs_dir=args.runs_dir or study.runs_dir,
                            data_dir=args.data_dir or study.data_dir)
        check_study(study)
        only = [a.strip() for a in args.arms.split(",")] if args.arms else None
    if args.summarize:
        summary = summarize_study(study, argv=argv)
    else:
        summary = run_study(study, jobs=args.jobs, threads=args.threads, only_arms=only,
                            keep_checkpoints=args.keep_checkpoints, argv=argv)
    if args.preset:
        advice = recommend(summary, study.reference_arm)
        text = markdown_recommendation(summary, advice)
        (Path(study.out) / "recommendation.md").write_text(text + "\n", encoding="utf-8")
        print("\n" + text)
    return 0
