"""open_clip models for wfa: architectures by name or JSON config, multispectral input, trimmed text encoding.

Importing this module registers the small configs in ``wfa/model_configs/`` with open_clip, so
``open_clip.create_model_and_transforms("wfa-vit-tiny", pretrained=path)`` works after ``import wfa.model``.
"""
from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from contextlib import nullcontext
from typing import Callable, ContextManager, Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.factory import load_state_dict
from open_clip.model import CLIP
from open_clip.timm_model import TimmModel
from open_clip.transformer import PatchDropout, TextTransformer, text_global_pool
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import record_function

CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(CONFIG_DIR)

#: Sentinel-2 bands that receive open_clip's R, G, B kernels (in that order).
RGB_BANDS = ("B04", "B03", "B02")

# Pool types for which EOT/first-token pooling under a causal mask never sees later tokens.
_TRIMMABLE_POOLS = ("argmax", "eos", "first")


def list_wfa_models() -> list[str]:
    """Names of the model configs shipped in ``wfa/model_configs``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def resolve_model_name(name: str) -> str:
    """Return the open_clip architecture name for ``name``.

    ``name`` is an open_clip architecture (``ViT-B-32``), a wfa config (``wfa-vit-tiny``), or a path to a
    JSON model config in open_clip's format; the latter is registered under its file stem (replacing any
    config of that name). open_clip's ``hf-hub:`` and ``local-dir:`` names pass through unchanged.
    """
    if name.startswith(("hf-hub:", "local-dir:")):
        return name
    path = Path(name)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"model config {name!r} not found")
        config = json.loads(path.read_text())
        missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in config]
        if missing:
            raise ValueError(f"model config {name!r} lacks {missing}: expected open_clip's JSON model format")
        open_clip.add_model_config(path)
        return path.stem
    if name in open_clip.list_models():
        return name
    raise ValueError(
        f"unknown model {name!r}: not an open_clip architecture (open_clip.list_models()), "
        f"not a wfa config ({', '.join(list_wfa_models())}) and not a JSON config file"
    )


def create_model(
    name: str,
    pretrained: str | None = None,
    in_chans: int | None = None,
    bands: Sequence[str] | None = None,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    patch_dropout: float | None = None,
) -> tuple[nn.Module, Callable]:
    """Build an open_clip model and its tokenizer.

    Args:
        name: see :func:`resolve_model_name`.
        pretrained: an open_clip pretrained tag or a local checkpoint file; ``None`` = random init.
            A checkpoint whose first convolution has C != 3 input channels (one written by
            :func:`save_open_clip_checkpoint` for a multispectral model) is loaded into a C-channel model.
        in_chans: input channels; default ``len(bands)``, else the checkpoint's, else 3.
        bands: band names of the input channels (e.g. Sentinel-2 ``B02`` ... ``B12``, ``VV``, ``VH``); used to
            put RGB weights on ``B04/B03/B02`` (see :func:`inflate_rgb_kernel`).
        image_size: override the config's image size; pretrained positional embeddings are resized by open_clip.
        device, precision: as in ``open_clip.create_model`` (``fp32``, ``fp16``, ``bf16``, ``pure_bf16``...).
        patch_dropout: override the config's patch dropout (open_clip's ``PatchDropout``: that fraction of an
            image's patch tokens dropped at random in training mode; evaluation never drops).

    The first convolution / patch embedding is replaced for C != 3: from pretrained RGB weights by
    :func:`inflate_rgb_kernel`, from scratch by a freshly initialised C-channel kernel.
    """
    arch = resolve_model_name(name)
    if bands is not None:
        bands = [str(band) for band in bands]
        if in_chans is not None and in_chans != len(bands):
            raise ValueError(f"in_chans={in_chans} but {len(bands)} band names given ({bands})")
        in_chans = len(bands)
    checkpoint = pretrained if pretrained is not None and os.path.isfile(pretrained) else None
    model = open_clip.create_model(
        arch,
        pretrained=None if checkpoint else pretrained,
        precision=precision,
        device=device,
        force_image_size=image_size,
        force_patch_dropout=patch_dropout,
    )
    checkpoint_chans = _checkpoint_in_chans(model, checkpoint) if checkpoint else 3
    in_chans = in_chans or checkpoint_chans
    if checkpoint_chans not in (3, in_chans):
        raise ValueError(
            f"checkpoint {pretrained!r} has {checkpoint_chans} input channels, but {in_chans} were asked for"
        )
    from_rgb = pretrained is not None and checkpoint_chans == 3
    if checkpoint and from_rgb:
        open_clip.load_checkpoint(model, checkpoint)
    if in_chans != 3 or (from_rgb and _reorders_rgb(bands)):
        adapt_input_channels(model, in_chans, bands, from_rgb=from_rgb)
    if checkpoint and not from_rgb:
        open_clip.load_checkpoint(model, checkpoint)
    return model, open_clip.get_tokenizer(arch)


def get_tokenizer(name: str) -> Callable:
    """The tokenizer of model ``name`` (see :func:`resolve_model_name`), without building the model."""
    return open_clip.get_tokenizer(resolve_model_name(name))


def set_patch_dropout(model: nn.Module, prob: float) -> None:
    """Drop ``prob`` of the patch tokens in training from now on (0: none); the model must have been built
    with patch dropout (``create_model(..., patch_dropout=p)``, p > 0) when ``prob > 0``."""
    module = getattr(model.visual, "patch_dropout", None)
    if isinstance(module, PatchDropout):
        module.prob = prob
    elif prob > 0:
        raise ValueError(f"{type(model.visual).__name__} has no PatchDropout: build it with patch_dropout > 0")


def attention_kernels(device: torch.device, reduced_precision: bool) -> ContextManager:
    """The scaled-dot-product-attention kernels to run under: on CPU in bf16/fp16 the math kernel (the fused
    CPU flash-attention kernel is 2.4x slower than math in bf16 at these sizes, forward + backward: see
    BENCHMARKS.md), else PyTorch's own choice."""
    if device.type == "cpu" and reduced_precision:
        return sdpa_kernel([SDPBackend.MATH])
    return nullcontext()


def compile_towers(model: nn.Module, backend: str = "inductor") -> None:
    """``torch.compile`` the image tower and the text transformer in place (``nn.Module.compile``: the state dict
    keeps its keys). The text transformer is compiled with dynamic shapes: trimmed captions change the sequence
    length and deduplication the batch from step to step."""
    model.visual.compile(backend=backend)
    spec = _trimmable_text_tower(model)
    text = spec[0].transformer if spec is not None else getattr(model, "transformer", None)
    if text is not None:
        text.compile(backend=backend, dynamic=True)


def _checkpoint_in_chans(model: nn.Module, checkpoint: str) -> int:
    """Input channels of the first convolution stored in ``checkpoint`` (3 when the model has none we adapt)."""
    try:
        path, _ = first_conv(model)
    except NotImplementedError:
        return 3
    weight = load_state_dict(checkpoint).get(f"{path}.weight")
    return 3 if weight is None else int(weight.shape[1])


def _reorders_rgb(bands: Sequence[str] | None) -> bool:
    """True for 3 band names holding RGB bands in another order than B04, B03, B02 (e.g. B02, B03, B04)."""
    upper = [band.upper() for band in bands or ()]
    return any(band in RGB_BANDS for band in upper) and upper != list(RGB_BANDS)


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The image tower's first convolution / patch embedding: ``(dotted path in model, module)``.

    Native ViT and ModifiedResNet towers: ``visual.conv1``; timm towers: the trunk's ``first_conv``
    from its pretrained config. Other towers raise ``NotImplementedError``.
    """
    visual = model.visual
    if isinstance(visual, TimmModel):
        name = visual.trunk.pretrained_cfg.get("first_conv")
        if isinstance(name, (list, tuple)):
            name = name[0] if len(name) == 1 else None
        if not name:
            raise NotImplementedError(
                f"timm tower {type(visual.trunk).__name__} has no single first_conv: multispectral input unsupported"
            )
        path = f"visual.trunk.{name}"
    else:
        path = "visual.conv1"
    try:
        conv = model.get_submodule(path)
    except AttributeError:
        conv = None
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise NotImplementedError(
            f"multispectral input is not supported for vision tower {type(visual).__name__}: "
            f"no plain Conv2d at {path!r}"
        )
    return path, conv


def inflate_rgb_kernel(weight: torch.Tensor, in_chans: int, bands: Sequence[str] | None = None) -> torch.Tensor:
    """Turn an RGB kernel ``[O, 3, kh, kw]`` (channels R, G, B) into a ``[O, in_chans, kh, kw]`` kernel.

    Rule: every channel starts as the mean of the three RGB kernels; if ``bands`` names ``B04``, ``B03``,
    ``B02`` (case-insensitive), those channels get exactly the R, G, B kernels; then the whole kernel is
    multiplied by ``3 / in_chans``. Without band names (or without any RGB band, e.g. S1 ``VV``/``VH``), all
    channels are the scaled mean kernel. The ``3 / in_chans`` factor keeps the response to an input whose
    channels are all equal to x the same as the RGB kernel's response to an RGB image equal to x (timm's
    ``adapt_input_conv`` uses the same factor). ``in_chans=3`` without bands returns the kernel unchanged.
    """
    if weight.shape[1] != 3:
        raise ValueError(f"expected an RGB kernel with 3 input channels, got shape {tuple(weight.shape)}")
    if bands is not None and len(bands) != in_chans:
        raise ValueError(f"{len(bands)} band names given for {in_chans} channels")
    if bands is None and in_chans == 3:
        return weight.clone()
    new = weight.mean(dim=1, keepdim=True).repeat(1, in_chans, 1, 1)
    if bands is not None:
        upper = [band.upper() for band in bands]
        for rgb_index, band in enumerate(RGB_BANDS):
            if band in upper:
                new[:, upper.index(band)] = weight[:, rgb_index]
    return new * (3 / in_chans)


def adapt_input_channels(
    model: nn.Module, in_chans: int, bands: Sequence[str] | None = None, from_rgb: bool = True
) -> nn.Conv2d:
    """Replace the first convolution of ``model.visual`` (in place) by an ``in_chans``-channel one.

    ``from_rgb=True`` inflates the current RGB kernel with :func:`inflate_rgb_kernel`; ``False`` gives a fresh
    kernel with PyTorch's default Conv2d initialisation (for training from scratch). The bias (if any),
    stride, padding and the module's class are kept. Sets ``model.visual.in_chans`` and ``.bands``.
    Returns the new convolution.
    """
    path, conv = first_conv(model)
    old = conv.weight.detach()
    if from_rgb:
        weight = inflate_rgb_kernel(old.float(), in_chans, bands).to(old.dtype)
    else:
        weight = torch.empty(old.shape[0], in_chans, *old.shape[2:], dtype=old.dtype, device=old.device)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    new = copy.deepcopy(conv)
    new.in_channels = in_chans
    new.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
    model.set_submodule(path, new)
    model.visual.in_chans = in_chans
    model.visual.bands = list(bands) if bands is not None else None
    return new


def _trimmable_text_tower(model: nn.Module) -> tuple[nn.Module, str, int | None] | None:
    """(module with the native text transformer, pool type, eos id), or None when trimming is not exact.

    Exact: open_clip ``CLIP`` and ``CustomTextCLIP`` with a native ``TextTransformer`` that uses a causal mask,
    no appended CLS token, no padding mask and ``argmax``/``eos``/``first`` pooling. Not exact (fall back to
    ``model.encode_text``): HF text towers, CoCa, SigLIP-style bidirectional towers, ``last``/``none`` pooling.
    """
    if isinstance(model, CLIP):
        tower, pool, eos = model, model.text_pool_type, getattr(model, "text_eos_id", None)
    elif isinstance(getattr(model, "text", None), TextTransformer):
        tower = model.text
        if tower.cls_emb is not None or tower.use_pad_mask:
            return None
        pool, eos = tower.pool_type, tower.eos_id
    else:
        return None
    if tower.attn_mask is None or pool not in _TRIMMABLE_POOLS:
        return None
    return tower, pool, eos


def text_trimming_is_exact(model: nn.Module) -> bool:
    """Whether :func:`encode_text` trims for this model (otherwise it calls ``model.encode_text``)."""
    return _trimmable_text_tower(model) is not None


def encode_text(model: nn.Module, tokens: torch.Tensor, trim: bool = True) -> torch.Tensor:
    """Unnormalised text features ``[N, D]`` of ``tokens`` ``[N, L]``, trimmed to the longest caption.

    Replicates open_clip's ``CLIP.encode_text`` on ``tokens[:, :L']``, with the positional table and the
    causal mask sliced to ``L'`` = 1 + the largest pooled position in the batch (the EOT token: argmax of the
    token ids, or the first ``eos_id``). Under a causal mask the pooled token never attends to later
    positions, so the result equals the untrimmed one. Towers where this is not exact
    (see :func:`text_trimming_is_exact`) and ``trim=False`` use ``model.encode_text``.
    """
    spec = _trimmable_text_tower(model) if trim else None
    if spec is None or tokens.shape[0] == 0:
        return model.encode_text(tokens)
    tower, pool, eos = spec
    tokens = tokens[:, :_pooled_length(tokens, pool, eos)]
    return _encode_embedded(tower, tokens, tower.token_embedding(tokens), pool, eos)


def _pooled_length(tokens: torch.Tensor, pool: str, eos: int | None) -> int:
    """1 + the largest position any row of ``tokens`` pools from (the trimmed length)."""
    if pool == "argmax":
        return int(tokens.argmax(dim=-1).max()) + 1
    if pool == "eos":
        return int((tokens == eos).int().argmax(dim=-1).max()) + 1
    return 1


def _encode_embedded(tower: nn.Module, tokens: torch.Tensor, embedded: torch.Tensor, pool: str,
                     eos: int | None) -> torch.Tensor:
    """open_clip's text tower after the token embedding, on ``tokens`` ``[N, L']`` already trimmed and their
    embeddings ``embedded`` ``[N, >= L', D]``."""
    length = tokens.shape[1]
    cast_dtype = tower.transformer.get_cast_dtype()
    x = embedded[:, :length].to(cast_dtype) + tower.positional_embedding[:length].to(cast_dtype)
    x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
    x = tower.ln_final(x)
    x = text_global_pool(x, tokens, pool, eos_token_id=eos)
    projection = tower.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection


def encode_texts(model: nn.Module, tokens: torch.Tensor, trim: bool = True, buckets: int = 1,
                 dedup: bool = False) -> torch.Tensor:
    """L2-normalised features ``[N, D]`` of ``tokens`` ``[N, L]``: :func:`encode_text` with less work, same result.

    ``dedup``: identical token rows (a caption repeated within the batch) are encoded once and shared.
    ``buckets`` > 1 (with ``trim``): rows are sorted by length and encoded in that many chunks, each
    trimmed to its own longest row by :func:`encode_text`, so short captions do not pay for the batch's
    longest. Both are exact: a row's features never depend on the other rows (causal mask, EOT pooling),
    and a shared row's gradient is the sum of its copies' gradients. Defaults: one trimmed pass.
    """
    inverse = None
    if dedup and tokens.shape[0] > 1:
        tokens, inverse = torch.unique(tokens, dim=0, return_inverse=True)
    spec = _trimmable_text_tower(model) if trim else None
    if spec is not None and buckets > 1 and tokens.shape[0] > 1:
        tower, pool, eos = spec
        tokens = tokens[:, :_pooled_length(tokens, pool, eos)]
        # one embedding lookup for all rows: its backward builds a dense [vocab, width] gradient, once
        embedded = tower.token_embedding(tokens)
        order = (tokens != 0).sum(dim=1).argsort()  # by number of non-padding tokens
        chunks = [order[i] for i in torch.arange(len(order), device=order.device).tensor_split(buckets) if len(i)]
        parts = []
        for idx in chunks:
            rows = tokens[idx]
            rows = rows[:, :_pooled_length(rows, pool, eos)]
            parts.append(_encode_embedded(tower, rows, embedded[idx], pool, eos))
        features = parts[0].new_empty(tokens.shape[0], parts[0].shape[-1])
        features = features.index_copy(0, torch.cat(chunks), torch.cat(parts))
    else:
        features = encode_text(model, tokens, trim=trim)
    features = F.normalize(features, dim=-1)
    return features if inverse is None else features[inverse]


def encode_captions(model: nn.Module, tokens: torch.Tensor, mask: torch.Tensor, trim: bool = True,
                    buckets: int = 1, dedup: bool = False) -> torch.Tensor:
    """L2-normalised features ``[B, K, D]`` of ``tokens`` ``[B, K, L]``; zeros where ``mask`` ``[B, K]`` is False.

    The valid captions of the whole batch are encoded together by :func:`encode_texts` (``trim``,
    ``buckets``, ``dedup`` as there); padding is never encoded.
    """
    if tokens.dim() != 3 or mask.shape != tokens.shape[:2]:
        raise ValueError(f"encode_captions: tokens {tuple(tokens.shape)} must be [B, K, L] and mask [B, K], "
                         f"got mask {tuple(mask.shape)}")
    batch, k, length = tokens.shape
    index = mask.reshape(-1).bool().nonzero().squeeze(1)
    if index.numel() == 0:
        raise ValueError("encode_captions: the caption mask has no valid caption in the whole batch")
    features = encode_texts(model, tokens.reshape(batch * k, length)[index], trim, buckets, dedup)
    out = features.new_zeros(batch * k, features.shape[-1]).index_copy(0, index, features)
    return out.view(batch, k, -1)


class ContrastiveModel(nn.Module):
    """An open_clip model and an optional aggregator behind one ``forward`` (the module that training wraps).

    One module, so DDP sees every parameter used in its forward and synchronises all gradients.
    ``text_options`` are :func:`encode_captions`' ``trim`` / ``buckets`` / ``dedup``.
    """

    def __init__(self, clip: nn.Module, aggregator: nn.Module | None = None, trim_text: bool = True,
                 text_buckets: int = 1, dedup_captions: bool = False):
        super().__init__()
        self.clip = clip
        self.aggregator = aggregator
        self.text_options = {"trim": trim_text, "buckets": text_buckets, "dedup": dedup_captions}

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Features of ``images`` ``[B, C, H, W]`` and of the captions ``tokens`` ``[B, K, L]`` under ``mask``.

        Returns ``image_features`` ``[B, D]`` and ``caption_features`` ``[B, K, D]`` (L2-normalised, zeros
        where ``mask`` is False), ``logit_scale``, and with an aggregator the fused ``text_features``
        ``[B, D]`` and the ``weights`` ``[B, K]`` it used (``weights`` in: e.g. BLEU uniqueness).
        """
        with record_function("wfa.image_tower"):
            out = {"image_features": F.normalize(self.clip.encode_image(images), dim=-1)}
        with record_function("wfa.text_tower"):
            out["caption_features"] = encode_captions(self.clip, tokens, mask, **self.text_options)
        out["logit_scale"] = self.clip.logit_scale.exp()
        if self.aggregator is not None:
            with record_function("wfa.aggregation"):
                out["text_features"], out["weights"] = self.aggregator(out["caption_features"], mask, weights)
        return out


def text_embed_dim(clip: nn.Module) -> int:
    """Output dimension of the text tower (the aggregator's ``dim``)."""
    projection = clip.text_projection
    return int(projection.shape[1] if isinstance(projection, torch.Tensor) else projection.out_features)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / accelerate (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def save_open_clip_checkpoint(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the model's state dict (on CPU) atomically to ``path`` in open_clip's checkpoint format.

    RGB models load with ``open_clip.create_model_and_transforms(name_or_config, pretrained=path)``
    (for wfa configs after ``import wfa.model``); multispectral ones with
    ``wfa.model.create_model(name, pretrained=path)``, which reads the channel count from the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu() for key, value in unwrap_model(model).state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path
