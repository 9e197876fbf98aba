"""Weighted feature aggregation: fuse the K caption embeddings of an image into one text feature.

Every aggregator follows one call contract::

    fused, weights = agg(features, mask, weights=None)

``features`` ``[B, K, D]`` are caption embeddings (normalised or not), ``mask`` ``[B, K]`` bool marks the
real captions (``True``) against padding, ``weights`` ``[B, K]`` are optional precomputed weights (the
loader's ``batch["weights"]``). The result is ``fused = normalize(sum_k w_k * normalize(f_k))`` ``[B, D]``
and the weights used ``[B, K]``: exactly 0 on padding, each row summing to 1. Padded slots never reach the
output, whatever they hold (NaN included). Pure torch, no I/O.

Usage::

    import torch
    from wfa.aggregation import create_aggregator, list_aggregators, weight_entropy

    print(list_aggregators())                      # ['attention', 'bleu', 'mean']
    agg = create_aggregator("attention", dim=256)  # learnable; uniform weights at init
    features = torch.randn(8, 5, 256)              # [B, K, D] caption embeddings
    mask = torch.ones(8, 5, dtype=torch.bool)      # True = a real caption
    mask[0, 3:] = False                            # image 0 has only 3 captions
    fused, weights = agg(features, mask)           # [8, 256] unit norm, [8, 5] rows sum to 1
    print(weight_entropy(weights, mask).item())    # 1.0 at init: uniform

New aggregators register with :func:`register_aggregator` and subclass :class:`Aggregator`, implementing
:meth:`Aggregator.caption_weights`.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from wfa.errors import CheckpointError

__all__ = [
    "Aggregator",
    "AttentionAggregator",
    "BleuAggregator",
    "MeanAggregator",
    "create_aggregator",
    "distance_from_uniform",
    "list_aggregators",
    "load_aggregator",
    "register_aggregator",
    "save_aggregator",
    "weight_entropy",
]

_REGISTRY: dict[str, type[nn.Module]] = {}
_NORM_EPS = 1e-12
_SPEC_KEY = "wfa_aggregator"
_MAX_DIM = 1 << 16  # a feature dimension beyond any text tower: refuse, rather than allocate, a crafted one
# Parameters (and buffers) of one aggregator: 64M float32 values, 256 MB, far above any aggregator over a text
# tower's features (attention at dim = hidden_dim = 4096 has 16.8M); a crafted size product is refused unallocated.
MAX_PARAMETERS = 1 << 26
_MAX_ROWS_NAMED = 10

T = TypeVar("T", bound=type)


def register_aggregator(name: str) -> Callable[[T], T]:
    """Class decorator registering an aggregator class under ``name`` for :func:`create_aggregator`.

    The class must be an ``nn.Module`` whose constructor takes ``dim`` as its first argument (subclass
    :class:`Aggregator` to get the call contract and input checks). Registering a taken name is an error.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"aggregator name must be a non-empty string, got {name!r}")

    def decorator(cls: T) -> T:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"register_aggregator({name!r}) expects an nn.Module subclass, got {cls!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(
                f"aggregator name {name!r} is already registered to {_REGISTRY[name].__qualname__}; "
                "choose another name"
            )
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_aggregators() -> list[str]:
    """Names accepted by :func:`create_aggregator`, sorted."""
    return sorted(_REGISTRY)


def create_aggregator(name: str, dim: int, **kwargs: object) -> nn.Module:
    """Build the aggregator registered as ``name`` for ``dim``-dimensional caption features.

    ``kwargs`` go to the class (e.g. ``temperature`` and ``hidden_dim`` for ``attention``).
    Raises ``ValueError`` for an unknown name, listing the known ones, and for sizes that would make more
    than :data:`MAX_PARAMETERS` parameters (counted on the ``meta`` device, before any memory is allocated).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown aggregator {name!r}; known aggregators: {', '.join(list_aggregators())}")
    _shapes(name, dim, kwargs)  # refuses one over MAX_PARAMETERS before anything is allocated
    aggregator = _REGISTRY[name](dim, **kwargs)
    aggregator.spec = {"name": name, "dim": dim, "kwargs": dict(kwargs)}  # what save_aggregator records
    return aggregator


def _shapes(name: str, dim: int, kwargs: dict) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of aggregator ``name`` built with these sizes, found on the ``meta`` device (no
    memory); ``ValueError`` when it would hold more than :data:`MAX_PARAMETERS` values."""
    with torch.device("meta"):
        shaped = _REGISTRY[name](dim, **kwargs)
    shapes = {key: tuple(value.shape) for key, value in shaped.state_dict().items()}
    total = sum(math.prod(shape) for shape in shapes.values())
    if total > MAX_PARAMETERS:
        raise ValueError(f"aggregator {name!r} with dim={dim} and {kwargs} would hold {total:,} parameters, more "
                         f"than {MAX_PARAMETERS:,}")
    return shapes


def save_aggregator(aggregator: nn.Module, path: str | os.PathLike) -> Path:
    """Write an aggregator made by :func:`create_aggregator` to ``path`` (safetensors, atomically).

    The weights are the tensors; the name, ``dim`` and constructor ``kwargs`` are a JSON string in the
    file's metadata (key ``wfa_aggregator``). No pickle: :func:`load_aggregator` runs no code from the file.
    """
    from safetensors.torch import save_file

    spec = getattr(aggregator, "spec", None)
    if not isinstance(spec, dict):
        raise ValueError("save_aggregator needs an aggregator built by create_aggregator (it records the spec)")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in aggregator.state_dict().items()}
    save_file(tensors, str(tmp), metadata={_SPEC_KEY: json.dumps(spec, sort_keys=True)})
    os.replace(tmp, path)
    return path


def load_aggregator(path: str | os.PathLike, device: str | torch.device = "cpu",
                    state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Rebuild the aggregator :func:`save_aggregator` wrote, in eval mode on ``device``.

    ``state_dict`` replaces the file's weights (e.g. a training checkpoint's ``aggregator`` entry).
    A file that is not such a safetensors file (a pickle, a truncated or foreign file, an unknown name or
    kwargs that do not fit) raises :class:`wfa.errors.CheckpointError` naming the file.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"aggregator file {path} not found or not a file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            spec = json.loads((handle.metadata() or {}).get(_SPEC_KEY, "null"))
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as error:
        raise CheckpointError(f"aggregator file {path} is not a wfa aggregator (safetensors) file ({error}); "
                              "pass the aggregator.safetensors written by wfa train, or --no-aggregator") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("dim"), int) \
            or not isinstance(spec.get("kwargs", {}), dict):
        raise CheckpointError(f"aggregator file {path} has no valid '{_SPEC_KEY}' metadata (name, dim, kwargs)")
    sizes = [spec["dim"], *(v for v in spec.get("kwargs", {}).values() if isinstance(v, int))]
    if not all(0 < size <= _MAX_DIM for size in sizes):
        raise CheckpointError(f"aggregator file {path}: dim or hidden_dim outside 1..{_MAX_DIM} ({spec})")
    weights = tensors if state_dict is None else state_dict
    try:
        if spec["name"] in _REGISTRY:  # sizes and shapes checked before the aggregator is allocated
            expected = _shapes(spec["name"], spec["dim"], spec.get("kwargs", {}))
            given = {key: tuple(value.shape) for key, value in weights.items()}
            if given != expected:
                raise ValueError(f"its tensors {given} are not the {expected} that its metadata describes")
        aggregator = create_aggregator(spec["name"], spec["dim"], **spec.get("kwargs", {}))
        aggregator.load_state_dict(weights)
    except (ValueError, TypeError, RuntimeError) as error:
        detail = str(error).split("\n")[0][:200]
        raise CheckpointError(f"aggregator file {path} does not describe a usable aggregator ({detail})") from None
    return aggregator.to(device).eval()


def _rows(indices: torch.Tensor) -> str:
    """Format batch row indices for an error message (at most ``_MAX_ROWS_NAMED``)."""
    rows = indices.flatten().tolist()
    shown = ", ".join(str(r) for r in rows[:_MAX_ROWS_NAMED])
    more = f" and {len(rows) - _MAX_ROWS_NAMED} more" if len(rows) > _MAX_ROWS_NAMED else ""
    return f"{shown}{more}"


def _check_mask(mask: object, batch: int | None = None, k: int | None = None) -> torch.Tensor:
    """Validate a caption mask (bool ``[B, K]``, every row with at least one real caption)."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor of shape [B, K], got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = a real caption), got {mask.dtype}; pass mask.bool()")
    if mask.dim() != 2 or (batch is not None and tuple(mask.shape) != (batch, k)):
        expected = f"[{batch}, {k}] to match features" if batch is not None else "[B, K]"
        raise ValueError(f"mask must have shape {expected}, got {list(mask.shape)}")
    empty = ~mask.any(dim=1)
    if bool(empty.any()):
        raise ValueError(
            f"batch row(s) {_rows(empty.nonzero())} have every caption masked; each image needs at least one "
            "real caption (drop such images before aggregation)"
        )
    return mask


def _check_inputs(
    features: object, mask: object, weights: object, dim: int
) -> None:
    """Validate the shapes, dtypes and devices of an aggregator call."""
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor of shape [B, K, D], got {type(features).__name__}")
    if features.dim() != 3:
        raise ValueError(f"features must have shape [B, K, D], got {list(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"features must be a floating-point tensor, got {features.dtype}")
    batch, k, d = features.shape
    if d != dim:
        raise ValueError(f"features have dimension D={d} but this aggregator was built for dim={dim}")
    if k == 0:
        raise ValueError("features have K=0 captions per image; each image needs at least one caption")
    mask = _check_mask(mask, batch, k)
    if mask.device != features.device:
        raise ValueError(f"mask is on {mask.device} but features are on {features.device}; move both to one device")
    if weights is not None:
        if not isinstance(weights, torch.Tensor):
            raise TypeError(f"weights must be a torch.Tensor of shape [B, K] or None, got {type(weights).__name__}")
        if tuple(weights.shape) != (batch, k):
            raise ValueError(f"weights must have shape [{batch}, {k}] to match features, got {list(weights.shape)}")
        if not weights.is_floating_point():
            raise TypeError(f"weights must be a floating-point tensor, got {weights.dtype}")
        if weights.device != features.device:
            raise ValueError(
                f"weights are on {weights.device} but features are on {features.device}; move both to one device"
            )


class Aggregator(nn.Module):
    """Base class: input checks, per-caption normalisation, the weighted sum and the final normalisation.

    Subclasses implement :meth:`caption_weights`. The arithmetic runs in float32 (float64 stays float64)
    whatever the input dtype or autocast state; ``fused`` is returned in the dtype of ``features`` and the
    weights in the compute dtype.

    The input checks (an all-masked row, bad ``bleu`` weights) read one boolean back from the device per
    call, a small synchronisation bought for errors instead of NaNs. ``mean`` and ``bleu`` have no
    parameters: under DDP wrap the whole model that holds the aggregator, not the aggregator alone.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.dim = dim

    def caption_weights(
        self, features: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor:
        """Return ``[B, K]`` weights, 0 on padding, rows summing to 1.

        ``features`` are the unit-normalised caption embeddings in the compute dtype, with padded slots
        already replaced by zeros; ``mask`` has at least one ``True`` per row.
        """
        raise NotImplementedError

    def forward(
        self, features: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse ``features`` ``[B, K, D]`` under ``mask`` ``[B, K]`` into ``(fused [B, D], weights [B, K])``."""
        _check_inputs(features, mask, weights, self.dim)
        compute_dtype = torch.promote_types(features.dtype, torch.float32)
        # torch.where (not multiplication by 0) so NaN/inf in padded slots cannot leak, in values or gradients.
        valid = mask.unsqueeze(-1)
        f = torch.where(valid, features.to(compute_dtype), torch.zeros((), dtype=compute_dtype, device=features.device))
        f = F.normalize(f, dim=-1, eps=_NORM_EPS)
        given = None if weights is None else weights.to(compute_dtype)
        w = self.caption_weights(f, mask, given).to(compute_dtype)
        w = torch.where(mask, w, torch.zeros((), dtype=compute_dtype, device=w.device))
        fused = F.normalize((w.unsqueeze(-1) * f).sum(dim=1), dim=-1, eps=_NORM_EPS)
        return fused.to(features.dtype), w

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


@register_aggregator("mean")
class MeanAggregator(Aggregator):
    """Uniform weights ``1 / K_valid`` over the real captions; ignores given ``weights``."""

    def caption_weights(
        self, features: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor:
        m = mask.to(features.dtype)
        return m / m.sum(dim=1, keepdim=True)


@register_aggregator("bleu")
class BleuAggregator(Aggregator):
    """The given weights (e.g. BLEU uniqueness, ``batch["weights"]``) renormalised over the real captions.

    Weights on padded slots are ignored. Negative or non-finite weights on real captions, or a row whose
    real captions all weigh 0, are errors naming the batch rows.
    """

    def caption_weights(
        self, features: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor:
        if weights is None:
            raise ValueError(
                "the 'bleu' aggregator needs weights: pass the precomputed BLEU-uniqueness weights "
                "(batch['weights']) as agg(features, mask, weights)"
            )
        zero = torch.zeros((), dtype=weights.dtype, device=weights.device)
        w = torch.where(mask, weights, zero)
        bad = (~torch.isfinite(w)).any(dim=1)
        if bool(bad.any()):
            raise ValueError(f"weights of batch row(s) {_rows(bad.nonzero())} are NaN or infinite on real captions")
        negative = (w < 0).any(dim=1)
        if bool(negative.any()):
            raise ValueError(f"weights of batch row(s) {_rows(negative.nonzero())} are negative; weights must be >= 0")
        total = w.sum(dim=1, keepdim=True)
        zero_rows = (total <= 0).squeeze(1)
        if bool(zero_rows.any()):
            raise ValueError(
                f"weights of batch row(s) {_rows(zero_rows.nonzero())} sum to 0 over the real captions; "
                "cannot renormalise"
            )
        return w / total


@register_aggregator("attention")
class AttentionAggregator(Aggregator):
    """Learned attention over the captions: ``w = masked_softmax(q . tanh(W f + b) / sqrt(h) / temperature)``.

    ``f`` is the unit-normalised caption embedding, ``W`` a ``dim -> hidden_dim`` projection (default
    ``hidden_dim = dim``) and ``q`` a learnable query. ``q`` starts at zero, so every score is exactly 0
    and the weights are exactly uniform (equal to ``mean``) at initialisation. Given ``weights`` are ignored.

    Precision: the parameters stay float32 and the scoring runs in float32 with autocast disabled (it is
    a ``dim x hidden_dim`` matmul over ``B*K`` rows, negligible next to the text encoder), so fp16/bf16
    autocast never touches the softmax.

    DDP: every parameter is in the autograd graph from the first step, so DDP with the default
    ``find_unused_parameters=False`` works. At the very first step ``q = 0`` gives ``W`` and ``b`` an
    all-zero (but present) gradient; once an optimiser step has moved ``q``, they receive real gradients.
    """

    def __init__(self, dim: int, hidden_dim: int | None = None, temperature: float = 1.0) -> None:
        super().__init__(dim)
        hidden = dim if hidden_dim is None else hidden_dim
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden_dim must be a positive int, got {hidden_dim!r}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.hidden_dim = hidden
        self.temperature = float(temperature)
        self.proj = nn.Linear(dim, hidden, dtype=torch.float32)
        nn.init.zeros_(self.proj.bias)
        self.query = nn.Parameter(torch.zeros(hidden, dtype=torch.float32))

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Unmasked attention scores ``[B, K]`` for unit-normalised ``features`` ``[B, K, D]``."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            dtype = torch.promote_types(features.dtype, torch.float32)
            h = torch.tanh(F.linear(features.to(dtype), self.proj.weight.to(dtype), self.proj.bias.to(dtype)))
            return (h @ self.query.to(dtype)) / (math.sqrt(self.hidden_dim) * self.temperature)

    def caption_weights(
        self, features: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor:
        s = self.scores(features)
        s = torch.where(mask, s, torch.full((), float("-inf"), dtype=s.dtype, device=s.device))
        return torch.softmax(s, dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden_dim={self.hidden_dim}, temperature={self.temperature}"


def _valid_weights(weights: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a ``weights``/``mask`` pair for the logging helpers; return (float weights zeroed on padding, counts)."""
    _check_mask(mask)
    if not isinstance(weights, torch.Tensor) or weights.shape != mask.shape:
        shape = list(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(f"weights must be a tensor of shape {list(mask.shape)} like mask, got {shape}")
    dtype = torch.promote_types(weights.dtype, torch.float32)
    w = torch.where(mask, weights.to(dtype), torch.zeros((), dtype=dtype, device=weights.device))
    return w, mask.sum(dim=1).to(dtype)


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def weight_entropy(weights: torch.Tensor, mask: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Normalised entropy of each row's weights over its real captions, for logging.

    ``H(w) / log(K_valid)``: 1 for uniform weights, 0 when one caption takes all the weight. A row with a
    single real caption counts as 1 (its only possible distribution is uniform). ``reduction="mean"``
    returns the mean over rows (a 0-dim tensor), ``"none"`` the ``[B]`` values.
    """
    w, counts = _valid_weights(weights, mask)
    plogp = torch.where(w > 0, w * torch.log(w.clamp_min(torch.finfo(w.dtype).tiny)), torch.zeros_like(w))
    entropy = -plogp.sum(dim=1)
    normaliser = torch.log(counts)
    values = torch.where(counts > 1, entropy / normaliser.clamp_min(1e-12), torch.ones_like(entropy))
    return _reduce(values, reduction)


def distance_from_uniform(weights: torch.Tensor, mask: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Total-variation distance between each row's weights and uniform over its real captions, for logging.

    ``0.5 * sum_k |w_k - 1/K_valid|`` over the real captions: 0 at uniform, at most ``1 - 1/K_valid``.
    ``reduction="mean"`` returns the mean over rows (a 0-dim tensor), ``"none"`` the ``[B]`` values.
    """
    w, counts = _valid_weights(weights, mask)
    uniform = mask.to(w.dtype) / counts.unsqueeze(1)
    values = 0.5 * (w - uniform).abs().sum(dim=1)
    return _reduce(values, reduction)
