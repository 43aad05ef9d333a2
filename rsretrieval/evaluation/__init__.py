"""Evaluation: the multi-caption retrieval protocol (:mod:`.metrics`), encoding a split (:mod:`.evaluate`) and
comparing two systems with their uncertainty (:mod:`.compare`)."""

from rsretrieval.evaluation.compare import Comparison, mr_interval, paired_comparison, per_image_hits
from rsretrieval.evaluation.evaluate import (
    EvalResult,
    compare_table,
    decoded_images,
    encode_images,
    encode_texts,
    evaluate,
    evaluate_features,
    format_metrics,
)
from rsretrieval.evaluation.metrics import (
    DEFAULT_TIES,
    METRIC_KEYS,
    RECALL_KEYS,
    TIE_RULES,
    Ranks,
    metrics_from_ranks,
    rank_stats,
    recall_at_k,
    retrieval_metrics,
    retrieval_ranks,
    tie_rule_table,
)

__all__ = [
    "Comparison",
    "mr_interval",
    "paired_comparison",
    "per_image_hits",
    "DEFAULT_TIES",
    "METRIC_KEYS",
    "RECALL_KEYS",
    "TIE_RULES",
    "Ranks",
    "EvalResult",
    "compare_table",
    "decoded_images",
    "encode_images",
    "encode_texts",
    "evaluate",
    "evaluate_features",
    "format_metrics",
    "metrics_from_ranks",
    "rank_stats",
    "recall_at_k",
    "retrieval_metrics",
    "retrieval_ranks",
    "tie_rule_table",
]
