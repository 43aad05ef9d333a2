"""Training: the loop (:func:`fit`), tasks and their losses, and what a run writes to disk.

>>> from rsretrieval.training import TrainConfig, build_task, fit
>>> history = fit(model, tokenizer, train, transform, TrainConfig(epochs=1),
...               val_data=val, task=build_task("hmmc", model, train))       # doctest: +SKIP
"""

from rsretrieval.training.checkpoint import (
    RUN_FILES,
    TrainingState,
    check_resumable,
    clear_run,
    load_best,
    load_trainable_state_dict,
    run_key,
    trainable_state_dict,
)
from rsretrieval.training.loop import History, TrainConfig, epoch_order, fit, init_distributed, preload_images
from rsretrieval.training.losses import HMMCLoss, InfoNCELoss, VSEHardNegativeLoss, same_image_mask
from rsretrieval.training.tasks import (
    LOSSES,
    Batch,
    ContrastiveTask,
    PooledFeatureTask,
    HMMCTask,
    Inputs,
    Task,
    build_task,
    list_losses,
    register_loss,
    token_dropout,
)

__all__ = [
    "LOSSES",
    "RUN_FILES",
    "Batch",
    "ContrastiveTask",
    "PooledFeatureTask",
    "HMMCLoss",
    "HMMCTask",
    "History",
    "InfoNCELoss",
    "Inputs",
    "Task",
    "TrainConfig",
    "TrainingState",
    "VSEHardNegativeLoss",
    "build_task",
    "check_resumable",
    "clear_run",
    "epoch_order",
    "fit",
    "init_distributed",
    "list_losses",
    "load_best",
    "load_trainable_state_dict",
    "preload_images",
    "register_loss",
    "run_key",
    "same_image_mask",
    "token_dropout",
    "trainable_state_dict",
]
