"""Contextual decomposition family (SPEC §4): CD with batched masks, ACD, TRIM, CDEP."""
from .agglomerate import Hierarchy, agglomerate_1d, agglomerate_2d, plot_hierarchy
from .blocks import block_masks, cd_blocks
from .cdep import cdep_penalty
from .core import contextual_decomposition, decompose, trace
from .rules import register_rule, registered_rules
from .trim import band_components, frequency_bands, trim

__all__ = ["CD_METHODS", "Hierarchy", "agglomerate_1d", "agglomerate_2d", "band_components", "block_masks",
           "cd_blocks", "cdep_penalty",
           "contextual_decomposition", "decompose", "frequency_bands", "plot_hierarchy", "register_rule",
           "registered_rules", "trace", "trim"]

# Attribution-map methods ``fn(model, inputs, target)`` built on CD (the report runs them).
CD_METHODS = {"cd_blocks": cd_blocks}
