"""Studies: compare run configurations (methods, levers, any key) under one budget, resumably, and read off what
the records say.

A study is a base run config plus a grid of overrides (the arms), seeds and a budget in steps or FLOPs
(compute-matched: each arm trains the steps its measured FLOPs per step allow). ``wfa study --config FILE`` runs
one; ``wfa study --preset choose-method --shards DIR`` screens the candidate methods on your own data. Modules,
each with one job: :mod:`~wfa.study.config` (the YAML, the arms), :mod:`~wfa.study.budget` (probes and each arm's
steps), :mod:`~wfa.study.runner` (runs, resume, records, summary), :mod:`~wfa.study.records` (the run-record format,
old versions included), :mod:`~wfa.study.analysis` (mean ± std, time-to-quality, goal, selection, recommendation,
tables; numpy only), :mod:`~wfa.study.plots`, :mod:`~wfa.study.presets`, :mod:`~wfa.study.weights` (learned against
BLEU caption weights). docs/studies.md describes the format and the protocol.
"""
from __future__ import annotations

from wfa._lazy import lazy_names

_DOORS = {
    "StudyConfig": "wfa.study.config",
    "load_study": "wfa.study.config",
    "study_from_dict": "wfa.study.config",
    "run_study": "wfa.study.runner",
    "summarize_study": "wfa.study.runner",
    "study_summary": "wfa.study.runner",
    "read_record": "wfa.study.records",
    "summarize": "wfa.study.analysis",
    "recommend": "wfa.study.analysis",
    "markdown_summary": "wfa.study.analysis",
    "plot_quality": "wfa.study.plots",
    "choose_method": "wfa.study.presets",
    "attention_vs_bleu": "wfa.study.weights",
}

__all__ = sorted(_DOORS)

__getattr__, __dir__ = lazy_names(__name__, globals(), _DOORS)
