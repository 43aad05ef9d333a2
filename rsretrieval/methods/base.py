"""Shared machinery of the transfer methods: registry, adapter base class, block helpers, ``apply_method``.

The design follows peft (``tuners/tuners_utils.py``, ``mapping.py``) in small:

- each method module calls :func:`register_method` with its config dataclass and an ``inject``
  function that edits an open_clip ``CLIP`` in place;
- :func:`apply_method` is the one entry point: it freezes the whole model, calls ``inject``, then
  makes trainable exactly the method's parameters, found *structurally*: every parameter of every
  :class:`AdapterModule` in the model, plus the base parameters ``inject`` returns (``full``,
  ``linear_probe``). Names are never matched by substring.

Modules a method adds are either :class:`AdapterModule` subclasses (they hold the trainable
parameters) or wrappers that keep the original module as ``base_layer`` and hold no parameters of
their own, so the frozen weights stay frozen whatever the wrapper does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rsretrieval.errors import MethodNotFoundError, NoTargetMatchedError, UnsupportedModelError
from rsretrieval.models.utils import freeze

_logger = logging.getLogger(__name__)

TOWERS = ("visual", "text")
APPLIED_ATTR = "rsr_method"  # attribute of the model that records the applied method


# ----------------------------------------------------------------------------- building blocks

class AdapterModule(nn.Module):
    """Base class of every module a method adds that owns trainable parameters.

    :func:`apply_method` makes every parameter of every ``AdapterModule`` in the model trainable and
    freezes everything else. A module that wraps a frozen original must therefore *not* subclass
    this; it keeps the original as ``base_layer`` and holds an ``AdapterModule`` beside it.
    """


@dataclass
class MethodConfig:
    """Base class of method configs: dataclasses whose fields carry ``metadata={"help": ...}``."""

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-able values (tuples become lists)."""
        return json_ready(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodConfig:
        """Rebuild a config; keys this version does not know are dropped with a warning (as peft does)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"{cls.__name__}: ignoring unknown fields {unknown} (written by another version?)",
                          stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text, e.g. for a notebook table or a CLI."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def json_ready(obj: Any) -> Any:
    """Tuples to lists, recursively, so a config survives a JSON round trip unchanged."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


def check_towers(towers: Sequence[str], owner: str) -> tuple[str, ...]:
    """Validate a ``towers`` field: a non-empty subset of ``("visual", "text")``; returns a tuple."""
    if isinstance(towers, str):
        towers = (towers,)
    towers = tuple(towers)
    bad = [t for t in towers if t not in TOWERS]
    if not towers or bad:
        raise ValueError(f"{owner}.towers={towers!r}: use a non-empty subset of {TOWERS}")
    return tuple(dict.fromkeys(towers))  # de-duplicated, order kept


def check_positive(owner: str, **values: float) -> None:
    """Raise a ValueError naming every field that is not > 0."""
    bad = {k: v for k, v in values.items() if not v > 0}
    if bad:
        raise ValueError(f"{owner}: these fields must be > 0: {bad}")


def check_probability(owner: str, **values: float) -> None:
    """Raise a ValueError naming every field outside [0, 1)."""
    bad = {k: v for k, v in values.items() if not 0 <= v < 1}
    if bad:
        raise ValueError(f"{owner}: these fields must be in [0, 1): {bad}")


def like(module: nn.Module, ref: torch.Tensor) -> nn.Module:
    """Move a new module to the device and dtype of a reference tensor of the model it joins."""
    return module.to(device=ref.device, dtype=ref.dtype)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class BottleneckAdapter(AdapterModule):
    """down (d -> r) -> activation -> dropout -> up (r -> d), with the up projection zero-initialised.

    The initialisation is AdaptFormer's (and PE-RSITR's): down weights kaiming-uniform(a=sqrt 5),
    zero biases, all-zero up projection, so the adapter outputs exactly 0 until it trains and the
    adapted model starts as the frozen one.

    Args:
        width: d, the feature width it reads and writes.
        bottleneck: r.
        activation: key of :data:`ACTIVATIONS`.
        dropout: dropout on the bottleneck (training only).
    """

    def __init__(self, width: int, bottleneck: int, activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, width)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(self.act(self.down(x))))


# ----------------------------------------------------------------------------- the CLIP layout

def check_clip(model: nn.Module, method: str) -> None:
    """Raise :class:`UnsupportedModelError` unless ``model`` has open_clip 3.x ``CLIP``'s layout."""
    from open_clip.transformer import ResidualAttentionBlock

    problems = []
    for tower in TOWERS:
        try:
            _, blocks = tower_resblocks(model, tower)
        except AttributeError:
            problems.append(f"no {_TOWER_PATH[tower]}.resblocks")
            continue
        owner = model.visual.transformer if tower == "visual" else model.transformer
        if not getattr(owner, "batch_first", False):
            problems.append(f"{tower} transformer is not batch-first")
        kinds = {type(b).__name__ for b in blocks if not isinstance(b, ResidualAttentionBlock)}
        if kinds:
            problems.append(f"{tower} blocks are {sorted(kinds)}, not ResidualAttentionBlock")
    if problems:
        raise UnsupportedModelError(
            f"method {method!r} injects into open_clip's CLIP (ViT image tower at visual.transformer, text "
            f"tower at transformer, default ResidualAttentionBlock, batch-first): {'; '.join(problems)}. "
            "Build the model with rsretrieval.models.create_model (tiny, mini, ViT-B-32, ...)."
        )


_TOWER_PATH = {"visual": "visual.transformer", "text": "transformer"}


def tower_resblocks(model: nn.Module, tower: str) -> tuple[str, nn.ModuleList]:
    """(dotted prefix, ``resblocks`` ModuleList) of one tower."""
    owner = model.visual.transformer if tower == "visual" else model.transformer
    return f"{_TOWER_PATH[tower]}.resblocks", owner.resblocks


def tower_width(model: nn.Module, tower: str) -> int:
    """Width of a tower's residual stream (768 / 512 on ViT-B-32)."""
    return int((model.visual.transformer if tower == "visual" else model.transformer).width)


def iter_blocks(model: nn.Module, towers: Iterable[str]) -> Iterator[tuple[str, str, int, nn.Module]]:
    """Yield ``(tower, dotted name, index, block)`` for every residual block of the given towers."""
    for tower in towers:
        prefix, blocks = tower_resblocks(model, tower)
        for i, block in enumerate(blocks):
            yield tower, f"{prefix}.{i}", i, block


class BlockWrapper(nn.Module):
    """Replaces a ``ResidualAttentionBlock`` in its ``resblocks`` list and keeps it as ``base_layer``.

    Subclasses override ``forward`` with the block signature open_clip calls (``q_x`` plus
    ``attn_mask``, also positionally through gradient checkpointing). The wrapper owns no
    parameters itself.
    """

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer

    def get_weight_dtype(self) -> torch.dtype:
        # open_clip's Transformer.get_cast_dtype() asks resblocks[0] for this
        return self.base_layer.get_weight_dtype()

    def attention_residual(self, q_x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """``x + ls_1(attn(ln_1(x)))``: the residual stream after the attention sub-layer."""
        base = self.base_layer
        return q_x + base.ls_1(base.attention(q_x=base.ln_1(q_x), attn_mask=attn_mask))

    @staticmethod
    def check_self_attention(k_x: torch.Tensor | None, v_x: torch.Tensor | None) -> None:
        if k_x is not None or v_x is not None:
            raise UnsupportedModelError("method block wrappers support self-attention blocks only (k_x=v_x=None)")


# ----------------------------------------------------------------------------- registry

InjectFn = Callable[[nn.Module, Any], "Iterable[nn.Parameter] | None"]
TokenizerWrapFn = Callable[[nn.Module, Any, Callable], Callable]


@dataclass(frozen=True)
class MethodSpec:
    """What :func:`register_method` stores about a method.

    Attributes:
        name: registry key (lower case, e.g. ``mrs_adapter``).
        config_cls: the method's config dataclass.
        inject: ``inject(model, config)`` edits the model in place; returns the *base* parameters it
            trains in place (``full``, ``linear_probe``), or None.
        starts_at_base: True when the injected model computes exactly what the frozen model did until
            it trains (zero-initialised up projections, LoRA's zero B).
        wrap_tokenizer: ``wrap(model, config, tokenizer)`` for methods that need their own token
            layout (CoOp), else None.
        paper_params: trainable parameters PE-RSITR reports for the method on ViT-B/32, None where it
            reports none.
        default_loss: the training loss (:func:`rsretrieval.training.build_task`) the method trains with
            when none is named.
    """

    name: str
    config_cls: type[MethodConfig]
    inject: InjectFn
    starts_at_base: bool
    wrap_tokenizer: TokenizerWrapFn | None = None
    paper_params: int | None = None
    default_loss: str = "infonce"

    @property
    def summary(self) -> str:
        """First line of the config's docstring."""
        return (self.config_cls.__doc__ or self.name).strip().splitlines()[0]


_METHODS: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    config_cls: type[MethodConfig],
    inject: InjectFn,
    *,
    starts_at_base: bool,
    wrap_tokenizer: TokenizerWrapFn | None = None,
    paper_params: int | None = None,
    default_loss: str = "infonce",
) -> MethodSpec:
    """Add a method to the registry (see :class:`MethodSpec` for the arguments).

    Raises:
        ValueError: a name that is not a lower-case identifier, a name already taken, or a config
            class that is not a :class:`MethodConfig` dataclass or is already used by another method.
    """
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"method name {name!r} must be a lower-case identifier, e.g. 'my_adapter'")
    if name in _METHODS:
        raise ValueError(f"method {name!r} is already registered (by {_METHODS[name].inject.__module__})")
    if not (dataclasses.is_dataclass(config_cls) and issubclass(config_cls, MethodConfig)):
        raise ValueError(f"{config_cls!r} must be a @dataclass subclassing MethodConfig")
    if any(s.config_cls is config_cls for s in _METHODS.values()):
        raise ValueError(f"{config_cls.__name__} already belongs to another method; give each method its own class")
    spec = MethodSpec(name, config_cls, inject, starts_at_base, wrap_tokenizer, paper_params, default_loss)
    _METHODS[name] = spec
    return spec


def _registry() -> dict[str, MethodSpec]:
    from rsretrieval.plugins import load_plugins

    load_plugins()  # the packages above (CMER's side branch) register their methods
    return _METHODS


def list_methods() -> list[str]:
    """Registered method names, in registration order."""
    return list(_registry())


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``name``; an unknown name lists the valid ones."""
    try:
        return _registry()[name]
    except KeyError:
        raise MethodNotFoundError(f"unknown method {name!r}. Available: {', '.join(_METHODS)}") from None


def _spec_of_config(config: MethodConfig) -> MethodSpec:
    for spec in _registry().values():
        if type(config) is spec.config_cls:
            return spec
    raise MethodNotFoundError(f"{type(config).__name__} belongs to no registered method. Available: "
                              f"{', '.join(f'{s.name} ({s.config_cls.__name__})' for s in _METHODS.values())}")


def make_config(method: str | MethodConfig, **overrides: Any) -> tuple[MethodSpec, MethodConfig]:
    """Resolve a method name or config object plus overrides into (spec, validated config)."""
    spec = _spec_of_config(method) if isinstance(method, MethodConfig) else get_method(method)
    valid = [f.name for f in dataclasses.fields(spec.config_cls)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"{spec.config_cls.__name__} has no field(s) {unknown}. Valid fields: {valid}")
    if isinstance(method, MethodConfig):
        return spec, dataclasses.replace(method, **overrides)  # replace() re-runs __post_init__
    return spec, spec.config_cls(**overrides)


# ----------------------------------------------------------------------------- applying a method

@dataclass(frozen=True)
class AppliedMethod:
    """What :func:`apply_method` records on the model (as ``model.rsr_method``).

    Attributes:
        name: the method.
        config: its config.
        base_fingerprint: :func:`base_fingerprint` of the model before injection.
        param_names: names (as in ``model.named_parameters()``) of the method's parameters.
    """

    name: str
    config: MethodConfig
    base_fingerprint: str
    param_names: tuple[str, ...]


def get_applied_method(model: nn.Module) -> AppliedMethod | None:
    """The method applied to ``model``, or None for a plain model."""
    return getattr(model, APPLIED_ATTR, None)


def method_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The applied method's parameters by name (what :func:`save_method` writes)."""
    applied = get_applied_method(model)
    if applied is None:
        raise ValueError("no method has been applied to this model; call apply_method(model, name) first")
    params = dict(model.named_parameters())
    return {n: params[n] for n in applied.param_names}


def base_fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter's name and shape and four sampled values (rounded to fp16).

    Two models agree when they have the same architecture *and* the same weights; fp32 and fp16
    copies of one checkpoint agree too (values are compared after rounding to fp16).
    """
    h = hashlib.sha256()
    samples = []
    for name, p in model.named_parameters():
        h.update(f"{name}:{tuple(p.shape)};".encode())
        flat = p.detach().reshape(-1)
        if flat.numel():
            n = flat.numel()
            idx = torch.tensor(sorted({k * (n - 1) // 3 for k in range(4)}), device=flat.device)  # ends + 2 inside
            samples.append(flat[idx].float())
    if samples:
        h.update(torch.cat(samples).half().cpu().numpy().tobytes())
    return h.hexdigest()


def apply_method(model: nn.Module, method: str | MethodConfig, /, **overrides: Any) -> nn.Module:
    """Freeze ``model``, inject a method, and leave trainable exactly the method's parameters.

    Args:
        model: an open_clip ``CLIP`` (e.g. ``create_model("mini").model``); edited in place.
        method: a registered name (:func:`list_methods`) or a config object such as
            ``LoraConfig(r=8)``.
        **overrides: config fields to set, e.g. ``apply_method(model, "lora", r=8)``.

    Returns:
        The same model, with ``model.rsr_method`` recording what was applied.

    Raises:
        MethodNotFoundError: unknown method.
        ValueError: unknown or invalid config fields; a model that already carries a method.
        NoTargetMatchedError: target patterns that match no module.
        UnsupportedModelError: a model without open_clip CLIP's layout.

    Example:
        >>> from rsretrieval.models import create_model, print_trainable_parameters
        >>> model = apply_method(create_model("tiny").model, "mrs_adapter")
        >>> _ = print_trainable_parameters(model)  # doctest: +ELLIPSIS
        trainable params: ...
    """
    spec, config = make_config(method, **overrides)
    applied = get_applied_method(model)
    if applied is not None:
        raise ValueError(f"this model already carries method {applied.name!r}; build a fresh model "
                         f"(create_model) to apply {spec.name!r}")
    check_clip(model, spec.name)
    fingerprint = base_fingerprint(model)
    # inject validates its targets before it edits anything, so a bad config leaves the model untouched
    extra = list(spec.inject(model, config) or [])
    chosen = {id(p) for m in model.modules() if isinstance(m, AdapterModule) for p in m.parameters()}
    chosen |= {id(p) for p in extra}
    freeze(model)
    for p in model.parameters():  # only the method's parameters; one created outside an AdapterModule stays frozen
        if id(p) in chosen:
            p.requires_grad_(True)
    names = tuple(n for n, p in model.named_parameters() if id(p) in chosen)
    if not names:
        raise NoTargetMatchedError(f"method {spec.name!r} with {config} added no trainable parameters")
    setattr(model, APPLIED_ATTR, AppliedMethod(spec.name, config, fingerprint, names))
    _logger.info("applied %s: %d trainable tensors", spec.name, len(names))
    return model


def wrap_tokenizer(model: nn.Module, tokenizer: Callable) -> Callable:
    """The tokenizer to use with ``model``: the method's wrapper (CoOp) or ``tokenizer`` itself.

    Call it for every method, so code does not need to know which methods change the token layout.
    """
    applied = get_applied_method(model)
    if applied is None:
        return tokenizer
    spec = get_method(applied.name)
    return spec.wrap_tokenizer(model, applied.config, tokenizer) if spec.wrap_tokenizer else tokenizer


def match_targets(candidates: Sequence[str], patterns: Sequence[str], owner: str) -> dict[str, list[str]]:
    """Match names against patterns: exact name, ``.``-suffix, or regular expression (full match).

    Returns ``{pattern: matched names}``. Every pattern must match something: a typo in one pattern
    would otherwise make the method silently smaller than asked.

    Raises:
        NoTargetMatchedError: naming the patterns that matched nothing and a few real candidates.
    """
    out: dict[str, list[str]] = {}
    for pat in patterns:
        try:
            rx = re.compile(pat)
        except re.error:
            rx = None
        out[pat] = [c for c in candidates
                    if c == pat or c.endswith("." + pat) or (rx is not None and rx.fullmatch(c))]
    unmatched = [p for p, hits in out.items() if not hits]
    if unmatched:
        step = max(1, len(candidates) // 8)
        examples = list(candidates[::step])[:8]
        raise NoTargetMatchedError(
            f"{owner}: target pattern(s) {unmatched} matched none of the {len(candidates)} candidate names "
            f"(patterns tried: {list(patterns)}; each is tried as an exact name, a '.'-suffix and a full "
            f"regular expression). Some real names: {examples}. Fix the pattern or drop it."
        )
    return out
