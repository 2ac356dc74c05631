"""Complexity of explanations (SPEC §11, Quantus 0.6 definitions): sparseness as the Gini index of
``|a|`` (Chalasani et al. 2020, "Concise Explanations of Neural Networks using Adversarial Training",
after Hurley & Rickard 2009) and complexity as the entropy of the fractional contributions
``|a_i| / Σ_j |a_j|`` (Bhatt et al. 2020, "Evaluating and Aggregating Feature-based Model
Explanations").

Both read the map only: ``model`` and ``target`` are accepted for the common metric signature and
unused (``model`` may be None). ``inputs`` fix the map's allowed shapes (the input's, or its
channel-reduced map); every element of the map is one feature. Values are float64 ``[B]``; an
all-zero map has neither (NaN).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..core import Target, check_attributions, check_inputs, check_number

#: which way is better, per metric of this module and of :mod:`.randomisation` and :mod:`.stability`
DIRECTIONS = {"sparseness": "higher", "complexity": "lower", "random_logit": "lower",
              "relative_input_stability": "lower", "relative_output_stability": "lower",
              "relative_representation_stability": "lower", "model_randomisation": "lower"}

__all__ = ["DIRECTIONS", "complexity", "contribution_entropy", "gini_index", "sparseness"]


def gini_index(values: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Gini index of each row of ``values`` ``[B, d]`` (taken as given, signs included) plus ``eps``:
    with the row sorted ascending, ``v_(1) ≤ … ≤ v_(d)``,
    ``G = Σ_k (2k − d − 1) v_(k) / (d Σ_k v_(k))``, in float64. For ``v ≥ 0``: 0 when every entry is
    equal, ``1 − 1/d`` when one entry holds everything."""
    v = torch.sort(values.double() + eps, dim=1).values
    d = v.shape[1]
    k = torch.arange(1, d + 1, dtype=torch.float64, device=v.device)
    return ((2 * k - d - 1) * v).sum(1) / (d * v.sum(1))


def contribution_entropy(values: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Entropy of each row's fractional contributions ``p_i = v_i / Σ_j |v_j|`` of ``values`` ``[B, d]``:
    ``H = −Σ_i p_i log(p_i + eps)`` in float64 (``0 log 0 = 0`` when ``eps`` is 0). For ``v ≥ 0``:
    0 when one entry holds everything, ``log d`` when all are equal; a negative ``v_i`` gives NaN."""
    v = values.double()
    p = v / v.abs().sum(1, keepdim=True)
    return -(torch.special.xlogy(p, p) if eps == 0 else p * torch.log(p + eps)).sum(1)


def _per_feature(inputs: torch.Tensor, attributions: torch.Tensor, eps) -> tuple[torch.Tensor, float]:
    check_inputs(inputs)
    return check_attributions(inputs, attributions).abs(), check_number(eps, "eps")


def sparseness(model: Optional[Callable], inputs: torch.Tensor, attributions: torch.Tensor,
               target: Target = None, *, eps: float = 0.0) -> torch.Tensor:
    """Sparseness (Chalasani et al. 2020; Quantus ``Sparseness``) per example, higher is better: the
    Gini index of ``|a|`` over the ``d`` features, sorted ascending ``|a|_(1) ≤ … ≤ |a|_(d)``,

        ``G = Σ_k (2k − d − 1) |a|_(k) / (d Σ_k |a|_(k))``  in ``[0, 1 − 1/d]``

    (0: every feature contributes equally; ``1 − 1/d``: one feature holds all). ``eps`` is added to
    ``|a|`` first (Quantus adds ``1e-7`` to the map normalised by its maximum). Scale-invariant for
    ``eps = 0``. ``model`` and ``target`` are unused.

    Args:
        inputs: ``[B, ...]``; attributions: the map, shaped like ``inputs`` or channel-reduced.

    Returns ``[B]`` float64. Example::

        >>> g = fastattr.metrics.sparseness(None, x, fastattr.saliency(model, x, y))
    """
    a, eps = _per_feature(inputs, attributions, eps)
    return gini_index(a, eps)


def complexity(model: Optional[Callable], inputs: torch.Tensor, attributions: torch.Tensor,
               target: Target = None, *, eps: float = 0.0) -> torch.Tensor:
    """Complexity (Bhatt et al. 2020; Quantus ``Complexity``) per example, lower is better: the entropy
    of the fractional contributions ``p_i = |a_i| / Σ_j |a_j|`` over the ``d`` features,

        ``H = −Σ_i p_i log(p_i + eps)``  in ``[0, log d]``

    (0: one feature holds all; ``log d``: all contribute equally; ``0 log 0 = 0``). Quantus uses
    ``eps = 1e-12``. Scale-invariant. ``model`` and ``target`` are unused.

    Args:
        inputs: ``[B, ...]``; attributions: the map, shaped like ``inputs`` or channel-reduced.

    Returns ``[B]`` float64. Example::

        >>> h = fastattr.metrics.complexity(None, x, fastattr.saliency(model, x, y))
    """
    a, eps = _per_feature(inputs, attributions, eps)
    return contribution_entropy(a, eps)
