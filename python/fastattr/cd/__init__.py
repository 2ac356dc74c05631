"""Contextual decomposition family (SPEC §4): CD with batched masks, ACD, TRIM, CDEP."""
from .agglomerate import Hierarchy, agglomerate_1d, agglomerate_2d, plot_hierarchy
from .cdep import cdep_penalty
from .core import contextual_decomposition, decompose, trace
from .rules import register_rule, registered_rules
from .trim import band_components, frequency_bands, trim

__all__ = ["Hierarchy", "agglomerate_1d", "agglomerate_2d", "band_components", "cdep_penalty",
           "contextual_decomposition", "decompose", "frequency_bands", "plot_hierarchy", "register_rule",
           "registered_rules", "trace", "trim"]
