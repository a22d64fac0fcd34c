"""Pretrained CNN backbones and the versioned artifacts every stage loads them from."""

OFFLINE_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
NETWORK_BACKBONES = ("inception_v3", "vgg16")
ALL_BACKBONES = OFFLINE_BACKBONES + NETWORK_BACKBONES
DEFAULT_BACKBONE = "efficientnet_lite2"
