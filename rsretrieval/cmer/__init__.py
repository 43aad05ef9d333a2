"""CMER, reconstructed: the Focus-Adapter side branch, scene-label augmentation, recycled negatives.

Only CMER's abstract could be read (Zhang et al., arXiv 2501.10638, 2025); every part here is our
own design, argued in ``docs/cmer.md`` and measured in notebooks 03–05.

- :mod:`.focus_adapter`: the side branch and its focus layer (methods ``focus_adapter``, ``cmer``);
- :mod:`.scene`: scene prefixes at training time, predicted-scene re-ranking at test time;
- :mod:`.recycling`: two queues of past embeddings as extra negatives;
- :mod:`.cache`: the frozen features a side branch reads, computed once;
- :mod:`.recipe`: :class:`CMERConfig` and :func:`build_cmer`, the whole recipe from one config.
"""

from rsretrieval.cmer.cache import CachedSideBranchTask, FeatureCache, build_cache, clear_cache, time_epochs
from rsretrieval.cmer.focus_adapter import (
    CMERAdapterConfig,
    FocusAdapterCLIP,
    FocusAdapterConfig,
    FocusPool,
    focus_mass_on_objects,
    get_focus_model,
    remember_frozen_features,
)
from rsretrieval.cmer.recipe import CMERConfig, build_cmer, cmer_task, scene_protocols
from rsretrieval.cmer.recycling import EmbeddingQueue, RecyclingLoss, effective_negatives, steps_held
from rsretrieval.cmer.scene import (
    SceneAugmentedTask,
    SceneEvalResult,
    choose_weight_on_val,
    evaluate_with_scenes,
    scene_caption,
    scene_rerank,
)

__all__ = [
    "CMERAdapterConfig",
    "CMERConfig",
    "CachedSideBranchTask",
    "EmbeddingQueue",
    "FeatureCache",
    "FocusAdapterCLIP",
    "FocusAdapterConfig",
    "FocusPool",
    "RecyclingLoss",
    "SceneAugmentedTask",
    "SceneEvalResult",
    "build_cache",
    "build_cmer",
    "choose_weight_on_val",
    "clear_cache",
    "cmer_task",
    "effective_negatives",
    "evaluate_with_scenes",
    "focus_mass_on_objects",
    "get_focus_model",
    "remember_frozen_features",
    "scene_caption",
    "scene_protocols",
    "scene_rerank",
    "steps_held",
    "time_epochs",
]
