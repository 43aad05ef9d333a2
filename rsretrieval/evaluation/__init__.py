"""Evaluation: the multi-caption retrieval protocol (:mod:`.metrics`) and encoding a split (:mod:`.evaluate`)."""

from rsretrieval.evaluation.evaluate import (
    EvalResult,
    compare_table,
    encode_images,
    encode_texts,
    evaluate,
    evaluate_features,
    format_metrics,
)
from rsretrieval.evaluation.metrics import (
    METRIC_KEYS,
    RECALL_KEYS,
    metrics_from_ranks,
    rank_stats,
    recall_at_k,
    retrieval_metrics,
    retrieval_ranks,
)

__all__ = [
    "METRIC_KEYS",
    "RECALL_KEYS",
    "EvalResult",
    "compare_table",
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
]
