"""Training: the loop, checkpoints, plots and the ``train`` / ``evaluate`` sub-commands."""

from pvt_np.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pvt_np.training.trainer import TrainConfig, Trainer, TrainingError, build_model, evaluate, train_step
from pvt_np.training.validation import ConfigError

__all__ = [
    "CheckpointError",
    "ConfigError",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "build_model",
    "evaluate",
    "load_checkpoint",
    "save_checkpoint",
    "train_step",
]
