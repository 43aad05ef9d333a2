"""Parameter-efficient transfer methods for open_clip's CLIP, behind one registry.

>>> from rsretrieval.models import create_model
>>> from rsretrieval.methods import apply_method, list_methods, save_method, wrap_tokenizer
>>> bundle = create_model("tiny")
>>> model = apply_method(bundle.model, "lora", r=8)   # freeze, inject, only LoRA trains
>>> tokenizer = wrap_tokenizer(model, bundle.tokenizer)  # CoOp's placeholders; identity elsewhere

One module per method; each registers itself (name, config dataclass, ``inject``) when imported
below, in the order the course presents them. Packages above this one register theirs the same way
(the Focus-Adapter and CMER's branch: :mod:`rsretrieval.cmer`), found by :mod:`rsretrieval.plugins`.
``apply_method`` is the only way in, and ``save_method``/``load_method`` store a method without its base.
"""

from __future__ import annotations

from rsretrieval.methods.base import (
    AdapterModule,
    AppliedMethod,
    BlockWrapper,
    MethodConfig,
    MethodNotFoundError,
    MethodSpec,
    NoTargetMatchedError,
    UnsupportedModelError,
    apply_method,
    base_fingerprint,
    get_applied_method,
    get_method,
    list_methods,
    method_parameters,
    register_method,
    wrap_tokenizer,
)

# importing a method module registers it; the order is the order list_methods() shows
from rsretrieval.methods.full import FullConfig  # noqa: E402  isort: skip
from rsretrieval.methods.linear_probe import LinearProbeConfig  # noqa: E402  isort: skip
from rsretrieval.methods.adapter import AdapterConfig  # noqa: E402  isort: skip
from rsretrieval.methods.lora import LoraConfig  # noqa: E402  isort: skip
from rsretrieval.methods.vpt import VPTConfig  # noqa: E402  isort: skip
from rsretrieval.methods.coop import CoOpConfig, CoOpTokenizer  # noqa: E402  isort: skip
from rsretrieval.methods.clip_adapter import CLIPAdapterConfig  # noqa: E402  isort: skip
from rsretrieval.methods.adaptformer import AdaptFormerConfig  # noqa: E402  isort: skip
from rsretrieval.methods.mrs_adapter import MRSAdapterConfig  # noqa: E402  isort: skip
from rsretrieval.methods.checkpoint import (  # noqa: E402
    load_method,
    read_method_file,
    save_method,
    save_method_half,
)

__all__ = [
    "AdaptFormerConfig",
    "AdapterConfig",
    "AdapterModule",
    "AppliedMethod",
    "BlockWrapper",
    "CLIPAdapterConfig",
    "CoOpConfig",
    "CoOpTokenizer",
    "FullConfig",
    "LinearProbeConfig",
    "LoraConfig",
    "MRSAdapterConfig",
    "MethodConfig",
    "MethodNotFoundError",
    "MethodSpec",
    "NoTargetMatchedError",
    "UnsupportedModelError",
    "VPTConfig",
    "apply_method",
    "base_fingerprint",
    "get_applied_method",
    "get_method",
    "list_methods",
    "load_method",
    "method_parameters",
    "read_method_file",
    "register_method",
    "save_method",
    "save_method_half",
    "wrap_tokenizer",
]
