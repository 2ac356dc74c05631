"""Hot-path ops. Each module registers a ``torch.library.custom_op`` with a fake kernel and
autograd, and dispatches to the cpp / triton / reference backend chosen by ``fastattr._backend``; the chores they share (lazy
Triton import, dtype casts, C++ calls, tensor checks) are in ``fastattr.ops._utils``.
"""
from .bottleneck import bottleneck
from .cd import cd_bias_split
from .greedy_gains import greedy_gains
from .distinct_copies import distinct_copies
from .group_gen import group_gen
from .group_masks import first_equal_group, group_masks
from .group_select import group_select
from .conv import conv2d_input_grad
from .max_pool import max_pool2d
from .impute import linear_impute, noisy_linear_impute, stencil_solve
from .path_ops import path_accumulate, path_interpolate
from .perturb_by_rank import perturb_by_rank
from .simplex_qp import simplex_qp
from .sparsemax import sparsemax

__all__ = ["bottleneck", "cd_bias_split", "distinct_copies", "first_equal_group", "greedy_gains", "group_gen", "group_masks", "group_select", "conv2d_input_grad", "linear_impute", "max_pool2d", "noisy_linear_impute", "path_accumulate", "path_interpolate", "perturb_by_rank", "simplex_qp", "sparsemax", "stencil_solve"]
