"""Pure-torch references of every fastattr op: short, obviously right, float64-capable.

They define what the fast backends compute; tests compare every backend against them.
"""
from .path_ops import path_accumulate, path_interpolate
from .perturb_by_rank import perturb_by_rank
from .sparsemax import sparsemax, sparsemax_backward

__all__ = ["path_accumulate", "path_interpolate", "perturb_by_rank", "sparsemax", "sparsemax_backward"]
