"""CDEP: contextual decomposition explanation penalization (Rieger et al. 2020, Sec. 3.1; SPEC §4.5).

``loss = CE(f(x), y) + λ Σ_blobs penalty(β, γ)`` where β, γ are the CD of the logits for a feature
group (blob) the model should not rely on (a spurious patch, the colour of an image, ...). Two
penalties per blob (mask / relevant part k):

- ``"softmax"`` (default, the released code): ``mean over examples and classes of
  softmax([β_c, γ_c])[0]`` — the share of each logit attributed to the group;
- ``"l1"`` (the paper): ``mean over examples of ‖β − expl‖₁`` against a target explanation (default 0).

``reduction="sum"`` (default, SPEC §4.5 and the released code) adds the K per-blob penalties;
``"mean"`` averages them (``sum / K``). Both are differentiable w.r.t. the parameters (β goes through
the ``cd_bias_split`` op's autograd). Layer rules are the eval-mode ones (BatchNorm running
statistics, no dropout) whatever the model's mode, so the penalty can be added inside a training loop.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..core import broadcasts_to, model_entry
from .core import accepts_backend, check_parts, decompose

__all__ = ["cdep_penalty"]

FORMS = ("softmax", "l1")
REDUCTIONS = ("sum", "mean")


@accepts_backend
@model_entry(quiet=True)
def cdep_penalty(model: nn.Module, inputs: Tensor, masks: Optional[Tensor] = None, *,
                 relevant: Optional[Tensor] = None, form: str = "softmax",
                 explanation: Optional[Tensor] = None, reduction: str = "sum") -> Tensor:
    """The CDEP penalty (a scalar with autograd) of the feature groups ``masks`` (``[K, ...]`` or
    ``[B, K, ...]`` as in :func:`contextual_decomposition`) or of given relevant parts
    ``relevant [B, K, *inputs.shape[1:]]``.

    ``form``: ``"softmax"`` or ``"l1"`` (see the module docstring); ``explanation``: the l1 form's
    target, broadcastable to β ``[B, K, C]`` (e.g. ``[C]``); ``reduction``: ``"sum"`` over the K blobs
    (SPEC §4.5's ``Σ_blobs``) or ``"mean"`` over them.

    Example (a training step on RGB images ``x [B, 3, H, W]``, penalising their colour)::

        import torch.nn.functional as F
        colour_part = (x - x.mean(1, keepdim=True)).unsqueeze(1)   # relevant [B, K=1, 3, H, W]
        loss = F.cross_entropy(model(x), y) + lam * cdep_penalty(model, x, relevant=colour_part)
        loss.backward()
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if explanation is not None and not isinstance(explanation, Tensor):
        raise TypeError(f"explanation must be a tensor, got {type(explanation).__name__}")
    masks = check_parts(inputs, masks, relevant)
    beta, gamma = decompose(model, inputs, masks, relevant=relevant)
    if form == "softmax":
        share = torch.softmax(torch.stack([beta, gamma], -1), -1)[..., 0]
        per_blob = share.reshape(share.shape[0], share.shape[1], -1).mean(2).mean(0)
    else:
        if explanation is None:
            target = torch.zeros_like(beta)
        else:
            if not broadcasts_to(explanation.shape, beta.shape):
                raise ValueError(f"explanation of shape {tuple(explanation.shape)} does not broadcast to the "
                                 f"CD scores' shape {tuple(beta.shape)} ([B, K, C])")
            target = explanation.to(beta.dtype).expand_as(beta)
        dist = (beta - target).abs()
        per_blob = dist.reshape(dist.shape[0], dist.shape[1], -1).sum(2).mean(0)
    return per_blob.sum() if reduction == "sum" else per_blob.mean()
