"""The supernet layer: the slim weight-sharing supernet and its subnets (``model``), its self-describing
checkpoints (``checkpoint``) and those of one trained subnet (``subnet_ckpt``), low to high.

``from nasctl.nas.supernet import Supernet, build_subnet, prepare_subnet`` and the rest of ``model``'s
names; the checkpoint readers and writers by their module (``nasctl.nas.supernet.checkpoint``).
"""

from .model import (
    BNCalibration,
    Head,
    Normalize,
    Stem,
    Subnet,
    Supernet,
    build_subnet,
    init_weights,
    last_width,
    layer_plan,
    prepare_subnet,
    recalibrate_bn,
    sub_supernets,
)

__all__ = [
    "BNCalibration", "Head", "Normalize", "Stem", "Subnet", "Supernet", "build_subnet", "init_weights",
    "last_width", "layer_plan", "prepare_subnet", "recalibrate_bn", "sub_supernets",
]
