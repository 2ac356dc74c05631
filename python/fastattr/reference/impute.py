"""Reference of the ``stencil_solve`` op behind noisy linear imputation (SPEC §11; Rong et al. 2022,
"A Consistent and Efficient Evaluation Strategy for Attribution Methods", ICML): one
``scipy.sparse.linalg.spsolve`` per mask plane, the system built entry by entry.

For a plane with removed pixels ``U`` and each pixel's in-image neighbours ``N(i)`` (weight
``w = 1/6`` for the four edge neighbours, ``1/12`` for the four corners), the op solves

    s_i u_i − Σ_{j ∈ N(i) ∩ U} w_ij u_j = b_i   (i ∈ U),   s_i = Σ_{j ∈ N(i)} w_ij,

so that with ``b_i = Σ_{j ∈ N(i) \\ U} w_ij x_j`` each removed pixel is the weighted mean of its
neighbours. The matrix is symmetric and, when some pixel of the plane is known, positive definite.
"""
from __future__ import annotations

import numpy as np
import torch

#: (dy, dx, weight) of the eight neighbours of the imputation stencil
STENCIL = tuple((dy, dx, 1 / 12 if dy and dx else 1 / 6)
                for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)


def stencil_solve(rhs: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """``u`` ``[G, R, H, W]`` solving the system above for each of the ``R`` right-hand sides ``rhs``
    ``[G, R, H, W]`` of plane ``g`` (mask ``removed[g]`` ``[H, W]`` bool); zero on known pixels. A plane
    with no known pixel has no unique solution and gives zeros. Computed in float64."""
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import spsolve

    groups, n_rhs, height, width = rhs.shape
    out = np.zeros((groups, n_rhs, height * width))
    b_all = rhs.detach().double().cpu().reshape(groups, n_rhs, -1).numpy()
    for g in range(groups):
        mask = removed[g].cpu().numpy().astype(bool).ravel()
        unknown = np.flatnonzero(mask)
        if unknown.size == 0 or unknown.size == mask.size:
            continue
        column = np.full(mask.size, -1)
        column[unknown] = np.arange(unknown.size)
        y, x = np.divmod(unknown, width)
        diag = np.zeros(unknown.size)
        rows, cols, vals = [np.arange(unknown.size)], [np.arange(unknown.size)], []
        for dy, dx, w in STENCIL:
            yy, xx = y + dy, x + dx
            inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
            diag[inside] += w
            j = column[(yy * width + xx)[inside]]
            rows.append(np.flatnonzero(inside)[j >= 0])
            cols.append(j[j >= 0])
            vals.append(np.full(int((j >= 0).sum()), -w))
        a = csc_matrix((np.concatenate([diag] + vals), (np.concatenate(rows), np.concatenate(cols))),
                       shape=(unknown.size, unknown.size))
        u = spsolve(a, b_all[g][:, unknown].T)
        out[g][:, unknown] = np.asarray(u).reshape(unknown.size, n_rhs).T
    return torch.from_numpy(out).reshape(rhs.shape).to(device=rhs.device, dtype=rhs.dtype)
