"""Training: the loop, checkpoints, plots and the ``train`` / ``evaluate`` sub-commands."""

from pvt_np.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pvt_np.training.budget import fit_epochs
from pvt_np.training.config import TrainConfig
from pvt_np.training.errors import TrainingError
from pvt_np.training.model import build_model
from pvt_np.training.trainer import Trainer, train_step
from pvt_np.training.tta import evaluate
from pvt_np.training.validation import ConfigError

__all__ = [
    "CheckpointError",
    "ConfigError",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "build_model",
    "evaluate",
    "fit_epochs",
    "load_checkpoint",
    "save_checkpoint",
    "train_step",
]
