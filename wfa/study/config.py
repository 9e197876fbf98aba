"""A study's config: a base run config, a grid of overrides (the arms), seeds, a budget, shards, a goal.

A study is written as YAML (docs/studies.md has every key)::

    name: rsicd-880
    dataset: RSICD                       # the name tables show
    base: configs/rsicd.yaml             # a run config, the same format as `wfa train --config`
    set: {train.eval_every: 110}         # overrides of the base for every arm (dotted keys)
    grid: {method: [pairs, multipos]}    # one arm per combination of values
    arms:                                # and/or named arms, each an override set
      - {name: multipos-pd50, set: {method: multipos, model.patch_dropout: 0.5}}
    seeds: 3                             # 0..2, or a list
    budget: {steps: 880}                 # or {flops: 4.4e13}, {fraction: 0.333, reference: {...}}, {minutes: 30}
    shards: {path: runs/study-shards/rsicd, captions: $WFA_SHARED_DATA/rsicd/dataset_rsicd.json, ...}
    goal: {reference: benchmarks/study-rsicd, arm: pairs, fraction: 0.3333, metrics: [mR_t2i, mR_i2t]}
    out: benchmarks/study-rsicd-880      # run records, summary, plots
    runs_dir: runs/study-rsicd-880       # run folders (checkpoints, metrics.jsonl)

Paths are relative to the directory the command runs in, as in run configs; ``$VARIABLES`` are expanded where
a path is used (``$WFA_SHARED_DATA``: the study's ``data_dir`` when given, ``wfa study --data-dir``). This module
only parses and checks (torch only to resolve ``train.precision: auto`` for this machine): :func:`arm_config` turns
an arm and a seed into the :class:`wfa.config.Config` a run trains with.
"""
from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from wfa.errors import StudyError

#: characters an arm name may hold (it names files: ``runs/<arm>-s<seed>.json``)
_ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+,-]*$")
#: the final test metrics a goal may ask for (``mR_i2t`` is the mean of the three image-to-text recalls)
GOAL_METRICS = ("mR_t2i", "mR_i2t", "mR", "t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10")


@dataclass
class Arm:
    """One configuration a study trains: ``overrides`` (``key=value``) on the study's base; runs of arms of one
    ``group`` compete on val, and the winner's test numbers are reported (e.g. learning rates of one method)."""

    name: str
    overrides: list[str]
    group: str


@dataclass
class Reference:
    """Whose FLOPs a fractional budget (or a goal) is measured against: ``arm`` of this study trained ``steps`` steps
    (measured by a probe), or ``arm``'s run records in another study's folder ``study``."""

    arm: str = "pairs"
    steps: int | None = None
    study: str | None = None


@dataclass
class Budget:
    """How long each run trains. One of: ``steps`` (the same for every arm), ``flops`` (training FLOPs per run),
    ``fraction`` of a :class:`Reference`'s run FLOPs, or ``minutes`` (the whole study's wall time, turned into a
    FLOP budget per run from the probes' measured speed). The FLOP budgets are compute-matched: each arm trains
    budget / its measured FLOPs per step steps, phases counted (see :mod:`wfa.study.budget`)."""

    steps: int | None = None
    flops: float | None = None
    fraction: float | None = None
    reference: Reference | None = None
    minutes: float | None = None
    probe_steps: int = 6  # steps of a probe per phase: half counted for FLOPs, half timed
    validations: int | None = None  # validate this many times per run (default: the base's train.eval_every)
    warmup_fraction: float | None = None  # warm-up as a fraction of each arm's steps (default: the base's steps)

    @property
    def kind(self) -> str:
        """``steps``, ``flops``, ``fraction`` or ``minutes`` (``steps`` also when none is given: the base's)."""
        return next((k for k in ("steps", "flops", "fraction", "minutes") if getattr(self, k) is not None), "steps")


@dataclass
class Goal:
    """The question a study answers against a reference: do an arm's runs, within ``fraction`` of the reference
    arm's run FLOPs, reach its final test value of every metric in ``metrics`` (``tolerance``: how far below still
    counts, a number of points or ``pooled_std``, the pooled standard deviation of the two)?

    ``reference``: a study folder whose records of ``arm`` set the target; None: this study's ``arm`` runs."""

    reference: str | None = None
    arm: str = "pairs"
    fraction: float = 1 / 3
    metrics: list[str] = field(default_factory=lambda: ["mR_t2i"])
    tolerance: float | str = "pooled_std"


@dataclass
class ShardSource:
    """The study's shard folder and how to write it when it is not there yet: a Karpathy caption file, its image
    folder and an optional labels file (``wfa shards karpathy``); ``limit_images`` keeps the first N images of every
    split. Without ``captions`` the folder must already hold shards."""

    path: str
    captions: str | None = None
    images: str | None = None
    labels: str | None = None
    shard_size: int = 1000
    limit_images: int | None = None


@dataclass
class StudyConfig:
    """A parsed study (see the module docstring). ``base`` is a run-config mapping (read from the base file)."""

    name: str
    dataset: str
    base: dict[str, Any]
    set: list[str]
    arms: list[Arm]
    seeds: list[int]
    budget: Budget
    shards: ShardSource | None
    out: str
    runs_dir: str
    reference_arm: str = "pairs"
    goal: Goal | None = None
    flops_every: int = 10
    keep_checkpoints: bool = False
    source: str | None = None  # the YAML file, when read from one
    data_dir: str | None = None  # what $WFA_SHARED_DATA stands for in the shard paths (default: the environment's)

    def path(self, text: str) -> str:
        """A path of the study with ``$WFA_SHARED_DATA`` (``data_dir`` when given) and other variables expanded."""
        if self.data_dir is not None:
            text = text.replace("${WFA_SHARED_DATA}", self.data_dir).replace("$WFA_SHARED_DATA", self.data_dir)
        return expand(text)

    def arm(self, name: str) -> Arm:
        """The arm called ``name``."""
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise StudyError(f"study {self.name}: no arm {name!r} (arms: {', '.join(a.name for a in self.arms)})")

    @property
    def shards_path(self) -> str:
        """The shard folder every run reads (the base's ``data.shards`` when the study names none)."""
        if self.shards is not None:
            return self.path(self.shards.path)
        return self.path(str(self.base.get("data", {}).get("shards", "")))


_TOP_KEYS = {"name", "dataset", "base", "config", "set", "grid", "group_by", "arms", "seeds", "budget", "shards",
             "out", "runs_dir", "reference_arm", "goal", "flops_every", "keep_checkpoints"}


def expand(path: str) -> str:
    """``path`` with ``$VARIABLES`` and ``~`` expanded; an unset variable is a :class:`StudyError` naming it."""
    expanded = os.path.expanduser(os.path.expandvars(path))
    missing = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expanded)
    if missing:
        raise StudyError(f"{path}: the environment variable {missing[0]} is not set (e.g. export "
                         f"{missing[0]}=/path/to/data)")
    return expanded


def load_study(path: str | os.PathLike, overrides: Sequence[str] = ()) -> StudyConfig:
    """Read a study YAML; ``overrides`` (``key=value``) are added to its ``set`` for every arm. Raises
    :class:`StudyError` naming the file and key on any problem."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study config {path} not found")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise StudyError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(values, dict):
        raise StudyError(f"{path}: expected a mapping at the top level")
    try:
        study = study_from_dict(values, overrides)
    except StudyError as error:
        raise StudyError(f"{path}: {error}") from None
    study.source = str(path)
    return study


def study_from_dict(values: Mapping[str, Any], overrides: Sequence[str] = ()) -> StudyConfig:
    """A :class:`StudyConfig` from a parsed mapping (the YAML's content); see :func:`load_study`."""
    unknown = sorted(set(values) - _TOP_KEYS)
    if unknown:
        raise StudyError(f"unknown study key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(_TOP_KEYS))}")
    name = _string(values, "name", "study")
    base = _base(values)
    common = _override_list(values.get("set") or {}, "set") + list(overrides)
    arms = _arms(values)
    seeds = _seeds(values.get("seeds", 1))
    budget = _budget(values.get("budget"))
    shards = _shards(values.get("shards"))
    goal = _goal(values.get("goal"))
    study = StudyConfig(name=name, dataset=_string(values, "dataset", name), base=base, set=common, arms=arms,
                        seeds=seeds, budget=budget, shards=shards,
                        out=_string(values, "out", f"studies/{name}"),
                        runs_dir=_string(values, "runs_dir", f"runs/study-{name}"),
                        reference_arm=_string(values, "reference_arm", "pairs"), goal=goal,
                        flops_every=_int(values, "flops_every", 10, minimum=1),
                        keep_checkpoints=bool(values.get("keep_checkpoints", False)))
    check_study(study)
    return study


def check_study(study: StudyConfig) -> None:
    """Every arm builds a valid run config (keys, types, values), arm names are unique, the budget's reference
    arm exists. Raises :class:`StudyError`."""
    from wfa.config import ConfigError

    names = [arm.name for arm in study.arms]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise StudyError(f"arm name(s) {', '.join(repeated)} used twice; give the arms distinct names")
    reference = study.budget.reference
    if reference is not None and reference.study is None:
        study.arm(reference.arm)
    for arm in study.arms:
        try:
            arm_config(study, arm, study.seeds[0], steps=1, run_dir=Path("."))
        except ConfigError as error:
            raise StudyError(f"arm {arm.name}: {error}") from None


def arm_config(study: StudyConfig, arm: Arm, seed: int, steps: int, run_dir: Path, eval_every: int | None = None):
    """The :class:`wfa.config.Config` of one run: the base, the study's ``set``, the arm's overrides, then what the
    study decides (seed, ``steps``, the shards, the run folder and the run mechanics: a checkpoint at every
    validation, all kept, for the selection on val; FLOPs counted every ``flops_every`` steps; ``train.precision:
    auto`` resolved for this machine)."""
    from wfa.config import config_from_dict

    base = config_from_dict(study.base, [*study.set, *arm.overrides], validate=False)
    every = eval_every or base.train.eval_every or steps
    warmup = base.train.warmup_steps
    if study.budget.warmup_fraction is not None:
        warmup = int(round(study.budget.warmup_fraction * steps))
    mechanics = [f"seed={seed}", f"out={run_dir}", f"train.steps={steps}", f"train.eval_every={every}",
                 f"train.checkpoint_every={every}", "train.keep_checkpoints=0", f"train.warmup_steps={warmup}",
                 f"train.log_every={math.gcd(every, 10)}", f"train.count_flops_every={study.flops_every}",
                 "train.tensorboard=false", "train.max_minutes=null", "resume=null"]
    if study.shards is not None:
        mechanics.append(f"data.shards={study.shards_path}")
    if base.train.precision == "auto":  # decided here, so every arm runs at one precision and records say which
        from wfa.peak import resolve_precision

        mechanics.append(f"train.precision={resolve_precision('auto')}")
    return config_from_dict(study.base, [*study.set, *arm.overrides, *mechanics])


# -- parsing helpers ---------------------------------------------------------------------------------------------

def _string(values: Mapping[str, Any], key: str, default: str) -> str:
    value = values.get(key, default)
    if not isinstance(value, str) or not value:
        raise StudyError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def _int(values: Mapping[str, Any], key: str, default: int | None, minimum: int = 0) -> int | None:
    value = values.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise StudyError(f"{key}: expected an integer >= {minimum}, got {value!r}")
    return value


def _number(values: Mapping[str, Any], key: str, positive: bool = True) -> float | None:
    value = values.get(key)
    if value is None:
        return None
    if isinstance(value, str):  # YAML 1.1 reads 4.4e13 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (positive and value <= 0):
        raise StudyError(f"{key}: expected a positive number, got {value!r}")
    return float(value)


def _base(values: Mapping[str, Any]) -> dict[str, Any]:
    """The base run config as a mapping: the ``base`` file, with an inline ``config`` mapping merged over it."""
    base: dict[str, Any] = {}
    if values.get("base") is not None:
        path = Path(expand(_string(values, "base", "")))
        if not path.is_file():
            raise StudyError(f"base: run config {path} not found (paths are relative to the directory the command "
                             "runs in)")
        try:
            base = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise StudyError(f"base: {path} is not valid YAML ({error})") from None
        if not isinstance(base, dict):
            raise StudyError(f"base: {path} is not a run config (a mapping)")
    inline = values.get("config") or {}
    if not isinstance(inline, dict):
        raise StudyError("config: expected a mapping (a run config)")
    from wfa.config import _merge  # the run config's own merge of nested mappings

    return _merge(base, inline)


def _override_list(values: Any, where: str) -> list[str]:
    """``{key: value}`` or ``[key=value, ...]`` as ``key=value`` strings (values written as YAML)."""
    if isinstance(values, dict):
        return [f"{key}={_yaml_value(value)}" for key, value in values.items()]
    if isinstance(values, list) and all(isinstance(v, str) and "=" in v for v in values):
        return list(values)
    raise StudyError(f"{where}: expected a mapping of dotted keys to values (or a list of key=value), got {values!r}")


def _yaml_value(value: Any) -> str:
    """A value as the text a ``key=value`` override parses back to it."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).strip().removesuffix("...").strip()


def _arm_label(key: str, value: Any) -> str:
    """An arm's name part for one grid value: the value of ``method``, else ``<last key part>=<value>``."""
    shown = _yaml_value(value)
    return shown if key == "method" else f"{key.rsplit('.', 1)[-1]}={shown}"


def _arms(values: Mapping[str, Any]) -> list[Arm]:
    """The grid's arms (every combination of its values, in the YAML's order) followed by the named arms."""
    arms: list[Arm] = []
    grid = values.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise StudyError("grid: expected a mapping of dotted keys to non-empty lists of values")
    group_by = values.get("group_by")
    if group_by is not None and (not isinstance(group_by, list) or not set(group_by) <= set(grid)):
        raise StudyError(f"group_by: expected a list of grid keys ({', '.join(grid)}), got {group_by!r}")
    if grid:
        keys = list(grid)
        for combination in itertools.product(*(grid[k] for k in keys)):
            labels = [_arm_label(k, v) for k, v in zip(keys, combination)]
            name = "+".join(labels)
            group = "+".join(label for k, label in zip(keys, labels) if k in group_by) if group_by else name
            arms.append(Arm(name, [f"{k}={_yaml_value(v)}" for k, v in zip(keys, combination)], group))
    for i, entry in enumerate(values.get("arms") or []):
        if not isinstance(entry, dict) or set(entry) - {"name", "set", "group"} or "name" not in entry:
            raise StudyError(f"arms[{i}]: expected {{name: ..., set: {{key: value, ...}}, group: ...}}, got {entry!r}")
        name = str(entry["name"])
        arms.append(Arm(name, _override_list(entry.get("set") or {}, f"arms[{i}].set"), str(entry.get("group", name))))
    if not arms:
        raise StudyError("the study has no arms: give a grid (e.g. grid: {method: [pairs, multipos]}) or arms")
    bad = [arm.name for arm in arms if not _ARM_NAME.match(arm.name)]
    if bad:
        raise StudyError(f"arm name(s) {bad} hold characters a file name should not (allowed: letters, digits and "
                         "._=+,-); name the arm with arms: [{name: ..., set: ...}]")
    return arms


def _seeds(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                  for v in value) and len(set(value)) == len(value):
        return list(value)
    raise StudyError(f"seeds: expected a count >= 1 or a list of distinct seeds >= 0, got {value!r}")


def _budget(values: Any) -> Budget:
    if values is None:
        return Budget()
    if not isinstance(values, dict):
        raise StudyError(f"budget: expected a mapping, got {values!r}")
    keys = {"steps", "flops", "fraction", "reference", "minutes", "probe_steps", "validations", "warmup_fraction"}
    unknown = sorted(set(values) - keys)
    if unknown:
        raise StudyError(f"budget: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(keys))}")
    reference = None
    if values.get("reference") is not None:
        ref = values["reference"]
        if not isinstance(ref, dict) or set(ref) - {"arm", "steps", "study"}:
            raise StudyError(f"budget.reference: expected {{arm: ..., steps: N}} or {{study: FOLDER, arm: ...}}, "
                             f"got {ref!r}")
        reference = Reference(arm=str(ref.get("arm", "pairs")), steps=_int(ref, "steps", None, minimum=1),
                              study=ref.get("study"))
        if (reference.steps is None) == (reference.study is None):
            raise StudyError("budget.reference: give either steps (this study's arm, probed) or study (a folder of "
                             "run records)")
    budget = Budget(steps=_int(values, "steps", None, minimum=1), flops=_number(values, "flops"),
                    fraction=_number(values, "fraction"), reference=reference, minutes=_number(values, "minutes"),
                    probe_steps=_int(values, "probe_steps", 6, minimum=2),
                    validations=_int(values, "validations", None, minimum=1),
                    warmup_fraction=_number(values, "warmup_fraction", positive=False))
    given = [k for k in ("steps", "flops", "fraction", "minutes") if getattr(budget, k) is not None]
    if len(given) > 1:
        raise StudyError(f"budget: give one of steps, flops, fraction, minutes (got {', '.join(given)})")
    if budget.fraction is not None and reference is None:
        raise StudyError("budget.fraction needs budget.reference (whose run FLOPs it is a fraction of)")
    if budget.warmup_fraction is not None and not 0 <= budget.warmup_fraction < 1:
        raise StudyError(f"budget.warmup_fraction={budget.warmup_fraction} must be in [0, 1)")
    return budget


def _shards(values: Any) -> ShardSource | None:
    if values is None:
        return None
    if isinstance(values, str):
        return ShardSource(path=values)
    if not isinstance(values, dict) or "path" not in values:
        raise StudyError(f"shards: expected a folder or {{path: ..., captions: ..., images: ...}}, got {values!r}")
    keys = {"path", "captions", "images", "labels", "shard_size", "limit_images"}
    unknown = sorted(set(values) - keys)
    if unknown:
        raise StudyError(f"shards: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(keys))}")
    source = ShardSource(path=str(values["path"]), captions=values.get("captions"), images=values.get("images"),
                         labels=values.get("labels"), shard_size=_int(values, "shard_size", 1000, minimum=1),
                         limit_images=_int(values, "limit_images", None, minimum=1))
    if source.captions is not None and source.images is None:
        raise StudyError("shards: captions needs images (the image folder)")
    return source


def _goal(values: Any) -> Goal | None:
    if values is None:
        return None
    if not isinstance(values, dict) or set(values) - {"reference", "arm", "fraction", "metrics", "tolerance"}:
        raise StudyError(f"goal: expected {{reference, arm, fraction, metrics, tolerance}}, got {values!r}")
    metrics = values.get("metrics", ["mR_t2i"])
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, list) or not metrics or not set(metrics) <= set(GOAL_METRICS):
        raise StudyError(f"goal.metrics: expected a list of {', '.join(GOAL_METRICS)}, got {metrics!r}")
    tolerance = values.get("tolerance", "pooled_std")
    if tolerance != "pooled_std" and (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))
                                      or tolerance < 0):
        raise StudyError(f"goal.tolerance: expected pooled_std or a number of points >= 0, got {tolerance!r}")
    fraction = _number(values, "fraction") or 1 / 3
    return Goal(reference=values.get("reference"), arm=str(values.get("arm", "pairs")), fraction=fraction,
                metrics=list(metrics), tolerance=tolerance)
