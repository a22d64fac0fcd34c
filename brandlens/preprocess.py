"""The one geometric preprocessing step, shared by every stage and by exported models.

``resize_mode`` says how an image becomes the backbone's square input:

* ``center_crop`` (EfficientNet's own evaluation): a central square of
  ``crop_fraction`` of the shorter side is cut out and resized;
* ``squash``: the central ``crop_fraction`` of each side (1.0: the whole image)
  is resized to the square, aspect ratio not kept: nothing off-centre is lost;
* ``pad``: the image is padded to a square with mid-grey (127, which the
  EfficientNet-Lite normalisation maps to 0), then its central
  ``crop_fraction`` is resized.

Resizing is bilinear and antialiased. It is written in TensorFlow ops so that the
exported serving model runs exactly the same computation as the bottleneck and
scoring jobs. On the 100-photo ImageNet sample, Lite2 ranks the true class first
for 92 with the EfficientNet crop and 82 when the whole image is squashed to a square.
"""

from __future__ import annotations

import math

import numpy as np

CENTER_CROP = "center_crop"
SQUASH = "squash"
PAD = "pad"
RESIZE_MODES = (CENTER_CROP, SQUASH, PAD)
DEFAULT_RESIZE_MODE = CENTER_CROP
PAD_VALUE = 127.0
# A reduced-scale JPEG decode stays at least this many times the model's input on the side
# that is resized, so the antialiased bilinear resize still does the final step.
DECODE_MARGIN = 2.0


def default_crop_fraction(input_size: int, resize_mode: str = DEFAULT_RESIZE_MODE) -> float:
    """EfficientNet's evaluation crop ``input_size / (input_size + 32)``; the whole image (1.0) for squash and pad."""
    return input_size / (input_size + 32) if resize_mode == CENTER_CROP else 1.0


def decode_side(size: int, crop_fraction: float, grid: int = 1, keep_fraction: float = 1.0,
                margin: float = DECODE_MARGIN) -> int:
    """The shorter side a decoded image needs for ``crop_and_resize(image, size, crop_fraction, any mode)``.

    The resized region (a crop of ``crop_fraction`` x a side in every mode) keeps >= ``margin``
    x ``size`` pixels, also for multi-crop tiles (``grid`` per side) and for augmentations that
    first keep ``keep_fraction`` of each side. The decoder passes it to
    :func:`brandlens.imaging.decode_image` as ``min_side``.
    """
    return int(math.ceil(margin * size * max(1, grid) / (crop_fraction * keep_fraction)))


def tile_boxes(height: int, width: int, grid: int) -> list[tuple[int, int, int, int]]:
    """``grid`` x ``grid`` tiles (top, left, bottom, right) that overlap by a quarter, covering the image.

    The scoring job's multi-crop views and the bottleneck job's training tiles (``--tiles``) are these boxes.
    """
    if grid <= 1:
        return []
    boxes = []
    tile_h, tile_w = height * 4 / (3 * grid + 1), width * 4 / (3 * grid + 1)
    for row in range(grid):
        for col in range(grid):
            top, left = round(row * tile_h * 0.75), round(col * tile_w * 0.75)
            boxes.append((top, left, min(height, round(top + tile_h)), min(width, round(left + tile_w))))
    return boxes


def _central(image, fraction_h, fraction_w):
    import tensorflow as tf

    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    crop_h = tf.maximum(tf.cast(tf.round(tf.cast(height, tf.float32) * fraction_h), tf.int32), 1)
    crop_w = tf.maximum(tf.cast(tf.round(tf.cast(width, tf.float32) * fraction_w), tf.int32), 1)
    top = (height - crop_h) // 2
    left = (width - crop_w) // 2
    return image[top:top + crop_h, left:left + crop_w, :]


def crop_and_resize(image, size: int, crop_fraction: float, resize_mode: str = DEFAULT_RESIZE_MODE):
    """HxWx3 image tensor (any dtype) -> float32 size x size x 3 in the input's value range."""
    import tensorflow as tf  # here, so that the jobs' planning and cached reruns need not import it

    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {resize_mode!r}; choose one of {', '.join(RESIZE_MODES)}")
    image = tf.convert_to_tensor(image)
    if resize_mode == CENTER_CROP:
        shape = tf.shape(image)
        height, width = shape[0], shape[1]
        side = tf.cast(tf.round(tf.cast(tf.minimum(height, width), tf.float32) * crop_fraction), tf.int32)
        side = tf.maximum(side, 1)
        top = (height - side) // 2
        left = (width - side) // 2
        crop = image[top:top + side, left:left + side, :]
    elif resize_mode == SQUASH:
        crop = image if crop_fraction == 1.0 else _central(image, crop_fraction, crop_fraction)
    else:
        image = tf.cast(image, tf.float32)
        shape = tf.shape(image)
        height, width = shape[0], shape[1]
        side = tf.maximum(height, width)
        top, left = (side - height) // 2, (side - width) // 2
        crop = tf.pad(image, [[top, side - height - top], [left, side - width - left], [0, 0]], constant_values=PAD_VALUE)
        if crop_fraction != 1.0:
            crop = _central(crop, crop_fraction, crop_fraction)
    return tf.image.resize(tf.cast(crop, tf.float32), (size, size), method="bilinear", antialias=True)


def prepare(rgb: np.ndarray, size: int, crop_fraction: float, resize_mode: str = DEFAULT_RESIZE_MODE) -> np.ndarray:
    """Numpy convenience for one decoded HxWx3 uint8 image."""
    return crop_and_resize(rgb, size, crop_fraction, resize_mode).numpy()
