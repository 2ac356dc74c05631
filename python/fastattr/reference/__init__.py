"""Pure-torch references of every fastattr op: short, obviously right, float64-capable.

They define what the fast backends compute; tests compare every backend against them.
"""
from .cd import cd_bias_split
from .distinct_copies import distinct_copies
from .group_gen import group_gen
from .group_masks import first_equal_group, group_masks
from .group_select import group_select
from .impute import stencil_solve
from .max_pool import max_pool2d
from .path_ops import path_accumulate, path_interpolate
from .perturb_by_rank import perturb_by_rank
from .simplex_qp import simplex_qp
from .sparsemax import sparsemax, sparsemax_backward

__all__ = ["cd_bias_split", "distinct_copies", "first_equal_group", "group_gen", "group_masks", "group_select", "max_pool2d", "path_accumulate", "path_interpolate", "perturb_by_rank", "simplex_qp", "sparsemax", "sparsemax_backward", "stencil_solve"]
