"""Typed run configuration: dataclasses, YAML files and dotted ``key=value`` overrides.

A run is described by one :class:`Config` (every key: docs/configs.md). It is loaded from a YAML file whose
nesting mirrors the dataclasses (``data``, ``model``, ``aggregator``, ``method_options``, ``train``), then
command-line overrides such as ``train.lr=1e-3`` or ``method=mean`` are applied (values parsed with ``yaml.safe_load``, so
``null``, ``true``, ``[a, b]`` work). Unknown keys and wrongly typed values are errors that list the
valid keys or name the expected type. The resolved configuration is saved in the run directory.

Relative paths in a config (``data.shards``, ``out``) are relative to the directory the command runs
in, not to the YAML file.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from wfa.data.loader import DataOptions, LoaderConfig
from wfa.errors import ConfigError, PluginError
from wfa.methods import MethodOptions, list_methods
from wfa.plugins import IMPORT_HELP, IMPORT_OPTION, import_modules

PRECISIONS = ("no", "bf16", "fp16", "auto")


@dataclass
class DataConfig(DataOptions):
    """Where the shards are and how the loader reads them (the keys it shares with the loader:
    :class:`wfa.data.loader.DataOptions`), plus validation and the resolution schedule."""

    val_split: str | None = None  # split evaluated every train.eval_every steps (None: no validation)
    low_res_size: int | None = None  # resolution schedule: train at this size first (None: no schedule)
    low_res_fraction: float = 0.0  # ... for this fraction of the run, then at image_size (see docs/configs.md)


@dataclass
class ModelConfig:
    """Which open_clip model to build (see :func:`wfa.model.create_model`)."""

    name: str = "wfa-vit-tiny"  # open_clip architecture, wfa config name, or a JSON config path
    pretrained: str | None = None  # open_clip tag or local checkpoint; None = random init
    in_chans: int | None = None  # None: from the shards' index (3 for RGB, len(bands) otherwise)
    bands: list[str] | None = None  # None: from the shards' index
    trim_text: bool = True  # encode captions trimmed to the longest one in the batch (exact)
    text_buckets: int = 4  # with trim_text: encode captions in this many length-sorted chunks (exact)
    dedup_captions: bool = True  # encode a caption repeated within a batch once (exact)
    patch_dropout: float = 0.0  # fraction of patch tokens dropped per image in training (open_clip PatchDropout)


@dataclass
class AggregatorConfig:
    """Options of the learned ``attention`` aggregator (``bleu`` and ``mean`` have none).

    The BLEU weights themselves (and their temperature ``tau``) are computed when the shards are
    written (``wfa shards``), not at training time.

    ``lr_scale``: the aggregator's parameters train at ``train.lr * lr_scale`` (own AdamW groups; no weight
    decay on the query and bias): at the CLIP rate the few aggregator parameters barely move the weights away
    from uniform. The default is the largest scale that moved them clearly without raising the loss
    (BENCHMARKS.md, "Measured choices behind defaults").
    """

    hidden_dim: int | None = None  # projection width; None = the embedding dimension
    temperature: float = 1.0  # softmax temperature of the attention scores
    lr_scale: float = 100.0  # the aggregator's parameters train at train.lr * lr_scale (see above)


@dataclass
class TrainConfig:
    """Optimisation schedule. ``batch_size`` is per process and per micro-step.

    The global batch of one optimizer step is ``batch_size * world_size * grad_accum``; with
    ``grad_accum > 1`` the contrastive negatives are those of one micro-batch.
    """

    batch_size: int = 32
    steps: int | None = None  # optimizer steps; when set, it takes precedence over epochs
    epochs: float = 1.0  # passes over data.split (used when steps and max_minutes are null)
    max_minutes: float | None = None  # time budget of the training loop; the LR decays over it (see docs)
    lr: float = 5e-4
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_steps: int = 0
    grad_clip: float | None = 1.0  # max gradient L2 norm; None disables clipping
    grad_accum: int = 1
    precision: str = "no"  # no | bf16 | fp16 (through accelerate) | auto (bf16 where it is fast, else no)
    compile: bool = False  # torch.compile the image tower and the text transformer (see docs/configs.md)
    compile_backend: str = "inductor"  # torch.compile backend ("aot_eager": no code generation, for debugging)
    unmasked_fraction: float = 0.0  # the last fraction of steps without patch dropout (FLIP's unmasked tuning)
    local_loss: bool = False  # open_clip ClipLoss local_loss (saves memory with many ranks)
    log_every: int = 10
    eval_every: int = 0  # 0: validate only at the end (when data.val_split is set)
    checkpoint_every: int = 0  # 0: checkpoint only at the end
    keep_checkpoints: int = 2  # newest step_*.pt files kept; 0 keeps all
    count_flops_every: int = 0  # count one step's FLOPs every N steps (torch FlopCounterMode); 0: never
    tensorboard: bool = True


@dataclass
class Config:
    """A complete training run."""

    method: str = "bleu"  # a registered method: wfa.methods.list_methods()
    seed: int = 0
    out: str = "runs/default"
    resume: str | None = None  # "latest" or a checkpoint path
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    method_options: MethodOptions = field(default_factory=MethodOptions)
    train: TrainConfig = field(default_factory=TrainConfig)

    def loader_config(self, view: str = "images") -> LoaderConfig:
        """The training loader's config: the ``data`` keys it shares with the loader (:class:`DataOptions`), plus
        the batch size, seed and the method's ``view``; shards are shuffled when samples are (``data.shuffle > 0``)."""
        shared = {option.name: getattr(self.data, option.name) for option in dataclasses.fields(DataOptions)}
        return LoaderConfig(**shared, batch_size=self.train.batch_size, seed=self.seed, view=view,
                            shuffle_shards=self.data.shuffle > 0)

    def validate(self) -> "Config":
        """Check values that the types alone do not; returns self. Raises :class:`ConfigError`."""
        if self.method not in list_methods():
            raise ConfigError(f"method={self.method!r} is not one of {', '.join(list_methods())}")
        try:
            self.method_options.check()
        except ValueError as err:
            raise ConfigError(str(err)) from None
        t = self.train
        if t.precision not in PRECISIONS:
            raise ConfigError(f"train.precision={t.precision!r} is not one of {', '.join(PRECISIONS)}")
        for key, value in (("train.batch_size", t.batch_size), ("train.grad_accum", t.grad_accum),
                           ("train.log_every", t.log_every), ("data.max_captions", self.data.max_captions),
                           ("data.image_size", self.data.image_size), ("model.text_buckets", self.model.text_buckets)):
            if value < 1:
                raise ConfigError(f"{key}={value} must be >= 1")
        if t.precision == "fp16":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("train.precision=fp16 needs a CUDA GPU (there is none: it would silently run "
                                  "fp32); use train.precision=bf16 or no")
        if not (self.aggregator.lr_scale > 0 and math.isfinite(self.aggregator.lr_scale)):
            raise ConfigError(f"aggregator.lr_scale={self.aggregator.lr_scale} must be > 0 and finite")
        self._validate_optimiser()
        if t.steps is not None and t.steps < 1 or t.epochs <= 0:
            raise ConfigError(f"train.steps={t.steps} / train.epochs={t.epochs} must be positive")
        self._validate_levers()
        if t.max_minutes is not None and not 0 < t.max_minutes < float("inf"):
            raise ConfigError(f"train.max_minutes={t.max_minutes} must be a positive number of minutes (or null)")
        for key, value in (("train.warmup_steps", t.warmup_steps), ("train.eval_every", t.eval_every),
                           ("train.checkpoint_every", t.checkpoint_every),
                           ("train.keep_checkpoints", t.keep_checkpoints), ("data.num_workers", self.data.num_workers),
                           ("train.count_flops_every", t.count_flops_every),
                           ("data.shuffle", self.data.shuffle)):
            if value < 0:
                raise ConfigError(f"{key}={value} must be >= 0")
        return self

    def _validate_levers(self) -> None:
        """The image-token levers: fractions in range, a low resolution below the final one."""
        d, m, t = self.data, self.model, self.train
        if not (math.isfinite(m.patch_dropout) and 0.0 <= m.patch_dropout < 1.0):
            raise ConfigError(f"model.patch_dropout={m.patch_dropout} must be in [0, 1)")
        if not (math.isfinite(t.unmasked_fraction) and 0.0 <= t.unmasked_fraction <= 1.0):
            raise ConfigError(f"train.unmasked_fraction={t.unmasked_fraction} must be in [0, 1]")
        if not (math.isfinite(d.low_res_fraction) and 0.0 <= d.low_res_fraction < 1.0):
            raise ConfigError(f"data.low_res_fraction={d.low_res_fraction} must be in [0, 1)")
        if d.low_res_size is not None and not 1 <= d.low_res_size < d.image_size:
            raise ConfigError(f"data.low_res_size={d.low_res_size} must be >= 1 and below data.image_size="
                              f"{d.image_size} (or null for no resolution schedule)")
        if d.low_res_size is None and d.low_res_fraction:
            raise ConfigError(f"data.low_res_fraction={d.low_res_fraction} needs data.low_res_size")
        if not t.compile_backend:
            raise ConfigError("train.compile_backend must name a torch.compile backend (e.g. inductor)")

    def _validate_optimiser(self) -> None:
        """Optimiser values: finite, in range (a negative lr or grad_clip would train by gradient ascent)."""
        t = self.train
        checks = (("train.lr", t.lr, lambda v: v > 0, "> 0"),
                  ("train.weight_decay", t.weight_decay, lambda v: v >= 0, ">= 0"),
                  ("train.beta1", t.beta1, lambda v: 0 <= v < 1, "in [0, 1)"),
                  ("train.beta2", t.beta2, lambda v: 0 <= v < 1, "in [0, 1)"),
                  ("train.eps", t.eps, lambda v: v > 0, "> 0"),
                  ("train.epochs", t.epochs, lambda v: v > 0, "> 0"))
        for key, value, ok, rule in checks:
            if not (math.isfinite(value) and ok(value)):
                raise ConfigError(f"{key}={value} must be a finite number {rule}")
        if t.grad_clip is not None and not (math.isfinite(t.grad_clip) and t.grad_clip > 0):
            raise ConfigError(f"train.grad_clip={t.grad_clip} must be a finite number > 0, or null for no clipping")


def _fields(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass's fields."""
    return typing.get_type_hints(cls)


def _valid_keys(cls: type, prefix: str = "") -> list[str]:
    """All dotted keys a dataclass accepts, e.g. ``train.lr``."""
    keys = []
    for name, hint in _fields(cls).items():
        if dataclasses.is_dataclass(hint):
            keys += _valid_keys(hint, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Return ``value`` converted to ``hint`` (int -> float only) or raise :class:`ConfigError`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(key, value, option)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(hint)}, got {value!r} ({type(value).__name__})")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is str and isinstance(value, bool):
        raise ConfigError(f"{key}: expected a string, got {value!r}: YAML reads unquoted no/yes/on/off as "
                          f"booleans, quote the word (e.g. {key.split('.')[-1]}: \"no\")")
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"{key}: expected {_type_name(hint)}, got {value!r} ({type(value).__name__})")
    return value


def _type_name(hint: Any) -> str:
    """Readable name of a type hint for error messages."""
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a nested mapping, checking keys and types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = _fields(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
                          f"valid keys: {', '.join(_valid_keys(cls, prefix))}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(prefix + name, value, hint)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``key == "a.b.c"``, creating levels as needed."""
    *parents, last = key.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
        node = child
    node[last] = value


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn ``["train.lr=1e-3", "method=mean"]`` into a nested mapping (values via ``yaml.safe_load``)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.lr=1e-3)")
        key = key.strip()
        value = yaml.safe_load(raw) if raw.strip() else None
        if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
            value = raw.strip()  # YAML 1.2 booleans only: train.precision=no means the string "no"
        _set_dotted(tree, key, value)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``extra`` into a copy of ``base``."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_from_dict(values: dict[str, Any], overrides: Sequence[str] = (), validate: bool = True) -> Config:
    """Build a :class:`Config` from a nested mapping plus dotted overrides; keys and types are always checked,
    values (:meth:`Config.validate`) unless ``validate`` is false."""
    cfg = _build(Config, _merge(values, parse_overrides(overrides)))
    return cfg.validate() if validate else cfg


def load_config(path: str | Path | None, overrides: Sequence[str] = (), validate: bool = True) -> Config:
    """Load a YAML config (``None``: the defaults), apply ``key=value`` overrides, validate.

    ``validate=False`` checks keys and types only: how a finished run's saved config is read back, since its values
    may ask for what this machine lacks (``train.precision=fp16`` without a GPU) or a method registered elsewhere.
    Raises :class:`ConfigError` naming the file or key on any problem.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return config_from_dict(values, overrides, validate)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path is not None else str(err)) from None


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The configuration as plain nested Python data."""
    return asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved configuration as YAML (readable back with :func:`load_config`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return path


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--resume``, ``--import`` and free ``key=value`` overrides (``wfa train`` and
    ``python -m wfa.trainer``)."""
    parser.add_argument("--config", help="YAML config (e.g. configs/ucm.yaml); defaults if omitted")
    parser.add_argument(IMPORT_OPTION, dest="imports", action="append", default=[], metavar="MODULE",
                        help=IMPORT_HELP)
    parser.add_argument("--resume", metavar="latest|PATH", help="continue from the newest checkpoint in out/ "
                        "(latest) or from a step_*.pt file; same as the override resume=...")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. method=mean train.lr=1e-3 data.shards=shards/ucm; methods: "
                        + ", ".join(list_methods()))


def config_from_args(args: argparse.Namespace) -> Config:
    """The :class:`Config` named by parsed ``--config`` / ``--resume`` / overrides, after importing the
    ``--import`` modules (their methods must exist before the config names one)."""
    overrides = list(args.overrides) + ([f"resume={args.resume}"] if args.resume else [])
    try:
        import_modules(getattr(args, "imports", None) or [])
        return load_config(args.config, overrides)
    except PluginError as error:  # also a broken `wfa.methods` entry point, loaded when the method is checked
        raise ConfigError(str(error)) from None
