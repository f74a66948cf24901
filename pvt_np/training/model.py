"""The model a run trains, built from its :class:`~pvt_np.training.config.TrainConfig`."""

from __future__ import annotations

import re

from pvt_np.models import create_model
from pvt_np.models.pvt_v2 import PyramidVisionTransformerV2
from pvt_np.training.config import TrainConfig
from pvt_np.training.errors import TrainingError
from pvt_np.training.validation import ConfigError


def build_model(config: TrainConfig, num_classes: int, image_size: tuple[int, int]) -> PyramidVisionTransformerV2:
    """The run's model, initialised from the run's seed."""
    cifar = config.cifar_stem if config.cifar_stem is not None else max(image_size) <= 64
    try:
        model = create_model(
            config.model,
            num_classes=num_classes,
            drop_rate=config.drop_rate,
            drop_path_rate=config.drop_path_rate,
            seed=config.seed,
            dtype=config.dtype,
            cifar=cifar,
            **config.model_overrides,
        )
    except (ValueError, TypeError) as err:
        if not config.model_overrides:
            raise
        raise ConfigError(
            "model_overrides", f"create_model arguments that build a {config.model} ({reason(err)})",
            config.model_overrides,
        ) from err  # fmt: skip
    try:
        model.feature_sizes(*image_size)  # a clear error now if the images are too small for this pyramid
    except ValueError as err:
        raise TrainingError(
            f"the {image_size[0]}x{image_size[1]} images of {config.dataset} at {config.data_path} are too small "
            f"for {config.model}{' with the CIFAR stem' if cifar else ''}: {reason(err)}"
        ) from err
    return model.to(device=config.device)


def reason(err: Exception) -> str:
    """An error's message without its leading 'ClassName: ': the layer that raised it is not what the user set."""
    return re.sub(r"^[A-Za-z_]\w*: ", "", str(err))


__all__ = ["build_model", "reason"]
