"""Search space: the block registry, genomes, space definitions and analytic costs."""

from .auto import AUTO, auto_space, is_auto, space_for
from .blocks import BLOCKS, SKIP, Block, build_block, register_block, to_static
from .genome import Genome, GenomeError, LayerGene
from .space import (
                    LayerChoices,
                    SearchSpace,
                    StageSpec,
                    builtin_spaces,
                    check_width,
                    load_space,
                    scale_channels,
)

__all__ = [
    "AUTO", "BLOCKS", "SKIP", "Block", "Genome", "GenomeError", "LayerChoices", "LayerGene", "SearchSpace",
    "StageSpec", "auto_space", "build_block", "is_auto", "builtin_spaces", "load_space", "register_block",
    "scale_channels", "space_for", "to_static", "check_width",
]
