"""CDEP: contextual decomposition explanation penalization (Rieger et al. 2020, Sec. 3.1; SPEC §4.5).

``loss = CE(f(x), y) + λ · penalty(β, γ)`` where β, γ are the CD of the logits for a feature group
the model should not rely on (a spurious patch, the colour of an image, ...). Two penalties:

- ``"softmax"`` (default, the released code): ``mean over examples, masks and classes of
  softmax([β_c, γ_c])[0]`` — the share of each logit attributed to the group;
- ``"l1"`` (the paper): ``mean ‖β − expl‖₁`` against a target explanation (default 0).

Both are differentiable w.r.t. the parameters (β goes through the ``cd_bias_split`` op's
autograd). Layer rules are the eval-mode ones (BatchNorm running statistics, no dropout)
whatever the model's mode, so the penalty can be added inside a training loop.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .core import _check_masks, decompose

__all__ = ["cdep_penalty"]

FORMS = ("softmax", "l1")


def cdep_penalty(model: nn.Module, inputs: Tensor, masks: Optional[Tensor] = None, *,
                 relevant: Optional[Tensor] = None, form: str = "softmax", explanation: Optional[Tensor] = None,
                 backend: Optional[str] = None) -> Tensor:
    """The CDEP penalty (a scalar with autograd) of the feature groups ``masks`` (``[K, ...]`` or
    ``[B, K, ...]`` as in :func:`contextual_decomposition`) or of given relevant parts
    ``relevant [B, K, *inputs.shape[1:]]``.

    Example (a training step)::

        loss = F.cross_entropy(model(x), y) + lam * cdep_penalty(model, x, relevant=colour_part)
        loss.backward()
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if (masks is None) == (relevant is None):
        raise ValueError("give exactly one of masks and relevant")
    if masks is not None:
        masks = _check_masks(inputs, masks)
    elif relevant.dim() != inputs.dim() + 1 or tuple(relevant.shape[2:]) != tuple(inputs.shape[1:]):
        raise ValueError(f"relevant must be [B, K, *inputs.shape[1:]], got {tuple(relevant.shape)}")
    beta, gamma = decompose(model, inputs, masks, relevant=relevant, backend=backend)
    if form == "softmax":
        return torch.softmax(torch.stack([beta, gamma], -1), -1)[..., 0].mean()
    target = torch.zeros_like(beta) if explanation is None else explanation.to(beta.dtype).expand_as(beta)
    return (beta - target).abs().sum(-1).mean()
