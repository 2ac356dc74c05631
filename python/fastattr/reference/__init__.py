"""Pure-torch references of every fastattr op: short, obviously right, float64-capable.

They define what the fast backends compute; tests compare every backend against them.
"""
from .path_ops import path_accumulate, path_interpolate
from .sparsemax import sparsemax, sparsemax_backward

__all__ = ["path_accumulate", "path_interpolate", "sparsemax", "sparsemax_backward"]
