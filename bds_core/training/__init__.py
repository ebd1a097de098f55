"""The BDS training recipe: weighted LoRA fine-tuning with a data scheduler."""

from bds_core.training.callbacks import ProgressEvent, TrainerCallback
from bds_core.training.config import METHODS, TrainConfig
from bds_core.training.losses import per_example_loss, weighted_loss_sum
from bds_core.training.outputs import TrainResult
from bds_core.training.trainer import BDSTrainer, train

__all__ = [
    "METHODS",
    "BDSTrainer",
    "ProgressEvent",
    "TrainConfig",
    "TrainResult",
    "TrainerCallback",
    "per_example_loss",
    "train",
    "weighted_loss_sum",
]
