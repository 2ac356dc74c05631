"""Drop-in for the ``acd`` package's CD entry points (Singh et al. 2019), on fastattr's CD.

``from fastattr.integrations.acd import cd, cd_text`` in place of ``from acd import cd, cd_text``:
same arguments, same return types, same numbers (float32 round-off aside). Differences:

- the model is walked in forward order with ``torch.fx`` (acd walks ``model.modules()`` in
  registration order and needs ``model_type`` for models whose forward calls functional ops;
  fastattr accepts ``model_type`` and needs no special case);
- the model is neither moved nor left in eval mode (acd calls ``model.eval().to(device)``): it
  must already be on ``device``; it is evaluated in eval mode and its mode restored;
- 0/0 in a BatchNorm shift split goes 50/50 like every other bias (acd gives it all to γ);
- ``mask`` must be binary (0/1, as acd documents) and broadcast to ``im_torch``: acd takes any
  values silently (``3 * mask`` gives ``relevant = 3x``, ``irrelevant = −2x``), fastattr raises.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from ..cd.core import check_parts, decompose, eval_mode
from ..cd.rules import lstm_pair
from ..core import broadcasts_to, check_inputs, model_entry

__all__ = ["cd", "cd_text"]


def _device(device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; pass device='cpu'")
    return dev


@model_entry(inputs_name="im_torch")
def cd(im_torch: Tensor, model: nn.Module, mask=None, model_type: Optional[str] = None, device="cuda",
       transform: Optional[Callable[[Tensor], Tensor]] = None) -> "tuple[Tensor, Tensor]":
    """acd's ``cd``: class-wise CD scores ``(relevant, irrelevant)``, each ``[B, C]``, of the pixels
    where the binary ``mask`` is 1 (shaped like ``im_torch`` or ``H × W``), or of ``transform(im_torch)``
    as the relevant part when no mask is given. ``relevant + irrelevant`` = the logits. Like acd's,
    the scores carry autograd (β-only CD through the ``cd_bias_split`` op, as CDEP uses), so a
    penalty on them can be backpropagated to the model's parameters."""
    dev = _device(device)
    check_inputs(im_torch, "im_torch")
    if model_type not in (None, "mnist", "resnet18"):
        raise ValueError(f"model_type must be None, 'mnist' or 'resnet18', got {model_type!r}")
    x = im_torch.to(dev)
    if mask is not None:
        m = mask.detach() if isinstance(mask, Tensor) else torch.as_tensor(np.asarray(mask))
        m = m.to(device=dev, dtype=x.dtype)
        bad = m[(m != 0) & (m != 1)]
        if bad.numel():
            raise ValueError(f"mask must be binary (1 marks the relevant pixels, 0 the rest), got values such as "
                             f"{bad.unique()[:3].tolist()}")
        if not broadcasts_to(m.shape, x.shape):
            raise ValueError(f"mask of shape {tuple(m.shape)} must be shaped like im_torch {tuple(x.shape)} or "
                             f"its H × W {tuple(x.shape[-2:])}")
        relevant = m * x
    elif transform is not None:
        relevant = transform(x).to(dev)
        if relevant.dim() < 4:
            relevant = relevant.reshape(1, 1, relevant.shape[0], relevant.shape[1])
    else:
        raise ValueError("cd needs mask or transform")
    relevant = relevant.expand_as(x)[:, None].to(x.dtype)
    check_parts(x, None, relevant)
    with eval_mode(model):
        beta, gamma = decompose(model, x, relevant=relevant, output_bias="split")
    return beta[:, 0], gamma[:, 0]


@model_entry(inputs_name="batch")
def cd_text(batch, model: nn.Module, start: int, stop: int, return_irrel_scores: bool = False):
    """acd's ``cd_text`` for a sequence-first LSTM classifier with attributes ``embed``, ``lstm`` and
    ``hidden_to_label``: CD scores (numpy ``[C]``) of tokens ``start..stop`` (inclusive) of
    ``batch.text [T, 1]``, from the final hidden state, output bias dropped (Murdoch et al. 2018)."""
    for name in ("embed", "lstm", "hidden_to_label"):
        if not hasattr(model, name):
            raise AttributeError(f"cd_text needs model.{name} (acd's LSTM classifier layout)")
    text = batch.text
    steps = text.shape[0]
    if not 0 <= start <= stop < steps:
        raise ValueError(f"need 0 <= start <= stop < {steps} (the sequence length), got start={start}, stop={stop}")
    with torch.no_grad():
        vectors = model.embed(text)[:, 0].to(model.lstm.weight_ih_l0.dtype)
        mask = torch.zeros(steps, 1, dtype=vectors.dtype, device=vectors.device)
        mask[start:stop + 1] = 1
        phrase = mask[None, :, 0] != 0  # acd: the tokens start..stop, whatever their embedding
        parts = (vectors * mask)[None], (vectors * (1 - mask))[None]
        _, _, h_beta, h_gamma, _, _ = lstm_pair(model.lstm, *parts, phrase)
        weight = model.hidden_to_label.weight
        scores = (h_beta @ weight.T)[0].cpu().numpy()
        irrel = (h_gamma @ weight.T)[0].cpu().numpy()
    return (scores, irrel) if return_irrel_scores else scores
