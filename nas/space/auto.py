"""The ``auto`` space: a search space built from the input size, for data sets without one of their own.

Why a rule and not a table of YAML files: a user's images come at any resolution (16x16 gauge crops,
32x32 thumbnails, 96x96 camera crops), and a space made for another size either wastes the budget on
full-resolution layers or pools a 3x3 map away. The rule generalises the two spaces proven here
(``digits`` at 8x8 and ``mnist`` at 28x28, whose fronts beat hand-designed CNNs of the same size,
BENCHMARKS.md):

* **Stride plan.** A stride-2 stem from 24x24 up (at 2 CPU cores the full-resolution layers decide
  the budget; ``mnist.yaml`` explains), a stride-1 stem below. Then a stride-1 stage while the map is
  at most 16x16 (more layers where they are cheap), then stride-2 stages until the map is 6x6 or
  smaller (it ends between 4x4 and 6x6: 8 -> 4, 28 -> 14, 7, 4; 32 -> 16, 8, 4; 64 -> 32, 16, 8, 4;
  96 -> 48, 24, 12, 6). Two searchable layers a stage.
* **Widths grow with depth**: the ``mnist`` space's choices for its three stages (8-16, 8-32, 16-48
  channels), then 24-64 and 32-96 for deeper plans, so early high-resolution layers stay narrow and
  the last ones carry the capacity. At 28x28 the rule gives exactly the ``mnist`` space's network.
* **Blocks that won here**: plain ``conv_k3`` and fused inverted residuals ``fir_k3_e2`` /
  ``fir_k3_e4`` in two few-shot groups, ``skip``, a searched stem and no head conv. Layers that mixed
  unrelated families (depthwise, ghost, shuffle) did not train together (``bench/bench_block_mixing.py``);
  ``depthwise=True`` adds ``ir_k3_e3`` and ``dsc_k3`` as a third group of their own.
"""

from __future__ import annotations

import math

from .space import SearchSpace, StageSpec, load_space

AUTO = "auto"  # the --space name
FINAL_MAX = 6  # stride-2 stages until the feature map is at most this wide
STRIDE1_MAX = 16  # a stride-1 stage only while the map is at most this wide
STAGE_WIDTHS = ((8, 12, 16), (8, 16, 24, 32), (16, 24, 32, 48), (24, 32, 48, 64), (32, 48, 64, 96))


def stage_plan(resolution: int) -> tuple[int, list[int]]:
    """(stem stride, stride of each stage) for square inputs of ``resolution`` pixels."""
    if resolution < 2:
        raise ValueError(f"the auto space needs images of at least 2x2 pixels, got {resolution}x{resolution}")
    stem_stride = 2 if resolution >= 24 else 1
    hw = math.ceil(resolution / stem_stride)
    strides = [1] if hw <= STRIDE1_MAX else []
    while hw > FINAL_MAX or not any(s == 2 for s in strides):
        if hw <= 1:
            break
        strides.append(2)
        hw = math.ceil(hw / 2)
    return stem_stride, strides


def stage_widths(k: int) -> tuple[int, ...]:
    """Channel choices of stage ``k`` (0-based); stages past the table keep its widest entry."""
    return STAGE_WIDTHS[min(k, len(STAGE_WIDTHS) - 1)]


def auto_space(resolution: int, width_mult: float = 1.0, depthwise: bool = False) -> SearchSpace:
    """The ``auto`` space for ``resolution`` x ``resolution`` inputs (named ``auto-<resolution>``)."""
    stem_stride, strides = stage_plan(resolution)
    stages = tuple(StageSpec(2, s, stage_widths(k)) for k, s in enumerate(strides))
    dense = (("conv_k3",), ("fir_k3_e2", "fir_k3_e4"))
    groups = dense + ((("ir_k3_e3", "dsc_k3"),) if depthwise else ())
    blocks = tuple(b for g in groups for b in g) + ("skip",)
    return SearchSpace(name=f"{AUTO}-{resolution}", stem_channels=(8, 16), stem_stride=stem_stride,
                       stages=stages, blocks=blocks, head_channels=0, width_mult=width_mult,
                       block_groups=groups)


def is_auto(name: str) -> bool:
    """Whether a ``--space`` value names the ``auto`` space (built from the data's resolution)."""
    return name.strip().lower() == AUTO


def space_for(name: str, resolution: int, width_mult: float | None = None) -> SearchSpace:
    """A space by name for inputs of ``resolution`` pixels: ``auto`` is built by the rule above, any
    other name or YAML path is :func:`load_space`'s (raises ValueError for an unknown one)."""
    if is_auto(name):
        return auto_space(resolution, 1.0 if width_mult is None else width_mult)
    return load_space(name, width_mult)
