"""The render layer: a search run's written outputs (``pareto.json``, ``archive.csv``, ``summary.md``,
the layer statistics) and its plots (projections, hypervolume, layer heat map), from the front and the
archive alone. It reads the search layer's pure functions (the knee, the objectives) and writes nothing
a search needs back; ``nasctl report``'s page (:mod:`nasctl.nas.report`) sits on top of it.
"""

from .outputs import layer_stats, md_escape, summary_markdown, write_outputs

__all__ = ["layer_stats", "md_escape", "summary_markdown", "write_outputs"]
