"""Search space: the block registry, genomes, space definitions and analytic costs."""

from .blocks import BLOCKS, SKIP, Block, build_block, register_block, to_static
from .genome import Genome, GenomeError, LayerGene
from .space import LayerChoices, SearchSpace, StageSpec, builtin_spaces, load_space, scale_channels

__all__ = [
    "BLOCKS", "SKIP", "Block", "Genome", "GenomeError", "LayerChoices", "LayerGene", "SearchSpace",
    "StageSpec", "build_block", "builtin_spaces", "load_space", "register_block", "scale_channels",
    "to_static",
]
