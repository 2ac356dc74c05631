"""Contextual decomposition family (SPEC §4): CD with batched masks, ACD, TRIM, CDEP."""
from .core import contextual_decomposition, decompose, trace
from .rules import register_rule, registered_rules

__all__ = ["contextual_decomposition", "decompose", "register_rule", "registered_rules", "trace"]
