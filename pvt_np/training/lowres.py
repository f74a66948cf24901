"""Progressive resizing (``--low-res-epochs``, ``--low-res-scale``): the first epochs train on reduced images.

The augmented batches of those epochs are resized by low_res_scale (antialiased bilinear, see
:func:`pvt_np.data.resize_bilinear`): cheaper steps early, full size for the rest.
"""

from __future__ import annotations

from pvt_np.models.pvt_v2 import PyramidVisionTransformerV2
from pvt_np.training.config import TrainConfig
from pvt_np.training.model import reason
from pvt_np.training.validation import ConfigError


def reduced_size(image_size: tuple[int, int], scale: float) -> tuple[int, int]:
    """The image size of the low-resolution epochs: ``image_size`` times ``scale``, rounded (at least 1)."""
    return tuple(max(1, round(side * scale)) for side in image_size)


def halves_by_default(model: PyramidVisionTransformerV2, config: TrainConfig, image_size: tuple[int, int]) -> bool:
    """Whether the default (low_res_epochs None) trains the first half of the epochs at low resolution: only where
    the reduced images differ from the images and the model takes them. Typed epochs must be possible: a
    :class:`ConfigError` names low_res_scale if the model cannot take the reduced images."""
    if config.low_res_epochs == 0:
        return False
    low = reduced_size(image_size, config.low_res_scale)
    try:
        model.feature_sizes(*low)
    except ValueError as err:
        if config.low_res_epochs is not None:
            raise ConfigError(
                "low_res_scale",
                f"a scale whose {low[0]}x{low[1]} images {config.model} can take ({reason(err)})",
                config.low_res_scale,
            ) from err
        return False
    return low != tuple(image_size)


def low_res_epoch_count(config: TrainConfig, by_default: bool) -> int:
    """How many of the first epochs train on reduced images: config.low_res_epochs, or where that is None (the
    default) the first half, epochs // 2, if ``by_default`` (see :func:`halves_by_default`)."""
    if config.low_res_epochs is not None:
        return config.low_res_epochs
    return config.epochs // 2 if by_default else 0


__all__ = ["halves_by_default", "low_res_epoch_count", "reduced_size"]
