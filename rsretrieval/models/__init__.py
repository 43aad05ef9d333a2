"""Models: the open_clip factory and helpers shared by every transfer method."""

from rsretrieval.models.factory import (
    LOCAL_PRETRAINED,
    ModelBundle,
    create_model,
    list_models,
    list_pretrained,
    local_pretrained_path,
)
from rsretrieval.models.utils import (
    autocast,
    count_parameters,
    embed_dim,
    encode_pair,
    encode_text_trimmed,
    eval_mode,
    freeze,
    logit_scale,
    print_trainable_parameters,
    seed_everything,
    select_device,
    trims_text_exactly,
)

__all__ = [
    "LOCAL_PRETRAINED",
    "ModelBundle",
    "autocast",
    "count_parameters",
    "create_model",
    "embed_dim",
    "encode_pair",
    "encode_text_trimmed",
    "eval_mode",
    "freeze",
    "logit_scale",
    "list_models",
    "list_pretrained",
    "local_pretrained_path",
    "print_trainable_parameters",
    "seed_everything",
    "select_device",
    "trims_text_exactly",
]
