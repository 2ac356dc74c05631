"""Randomisation checks of explanations (SPEC §11): the random-logit test (Sixt et al. 2020, "When
Explanations Lie: Why Many Modified BP Attributions Fail", ICML), with Quantus 0.6's definition
(``quantus.RandomLogit``): the similarity between the explanation of the target class and that of a
random other class. An explanation that does not depend on the class it explains scores high; lower
is better.

The similarity is Quantus's default, SSIM (Wang et al. 2004) as ``quantus.similarity_func.ssim``
computes it: ``skimage.metrics.structural_similarity`` of the two maps *flattened* to vectors
(Quantus reshapes them to ``[B, d]`` first), with a uniform 7-element window and the data range of
the pair; :func:`ssim` is that, batched in torch.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from ..core import (Target, check_count, check_inputs, chunk_size, forward_chunks, make_generator, model_entry,
                    resolve_target)
from .robustness import Explain, explainer, preprocessor

__all__ = ["random_logit", "ssim"]


def ssim(a: torch.Tensor, b: torch.Tensor, *, win_size: int = 7) -> torch.Tensor:
    """Mean structural similarity of each pair of rows of ``a``, ``b`` ``[B, ...]`` (flattened to
    ``[B, d]``), as ``skimage.metrics.structural_similarity(a_i, b_i, data_range=R_i)`` on 1-D arrays,
    which is what ``quantus.similarity_func.ssim`` computes for batched maps::

        SSIM = mean_w [(2 μ_a μ_b + C1)(2 σ_ab + C2)] / [(μ_a² + μ_b² + C1)(σ_a² + σ_b² + C2)]

    over every window ``w`` of ``win_size`` consecutive elements that lies inside the vector (skimage
    crops the border), ``σ`` the sample (co)variances in the window, ``C1 = (0.01 R)²``,
    ``C2 = (0.03 R)²`` and ``R = max − min`` over both rows (NaN where both rows are one constant).
    Returns ``[B]`` float64."""
    if isinstance(win_size, bool) or not isinstance(win_size, int) or win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size must be an odd int >= 3, got {win_size!r}")
    a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    if a.shape != b.shape:
        raise ValueError(f"ssim compares maps of one shape; got {tuple(a.shape)} and {tuple(b.shape)} (flattened)")
    if a.shape[1] < win_size:
        raise ValueError(f"ssim needs maps of at least win_size ({win_size}) elements, got {a.shape[1]}")
    both = torch.cat([a, b], 1)
    r = (both.amax(1) - both.amin(1))[:, None]
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2

    def mean(z):
        return F.avg_pool1d(z[:, None], win_size, stride=1)[:, 0]

    ua, ub = mean(a), mean(b)
    norm = win_size / (win_size - 1)
    va, vb, vab = norm * (mean(a * a) - ua * ua), norm * (mean(b * b) - ub * ub), norm * (mean(a * b) - ua * ub)
    s = (2 * ua * ub + c1) * (2 * vab + c2) / ((ua * ua + ub * ub + c1) * (va + vb + c2))
    return s.mean(1)


def _similarity(similarity) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if similarity == "ssim":
        return ssim
    if callable(similarity) and not isinstance(similarity, str):
        return similarity
    raise ValueError(f"similarity must be 'ssim' or a function of two [B, d] tensors, got {similarity!r}")


def _off_classes(classes, t: torch.Tensor, n_outputs: int) -> torch.Tensor:
    """``classes`` as ``[B]`` long, each a valid output other than the target, or an error naming it."""
    if not isinstance(classes, torch.Tensor):
        classes = torch.as_tensor(classes)
    if classes.is_floating_point() or classes.is_complex() or classes.dtype == torch.bool \
            or tuple(classes.shape) != tuple(t.shape):
        raise ValueError(f"classes must hold one integer class per example ({t.shape[0]}), got "
                         f"{classes.dtype} of shape {tuple(classes.shape)}")
    c = classes.to(device=t.device, dtype=torch.long)
    if (c < 0).any() or (c >= n_outputs).any() or (c == t).any():
        raise ValueError(f"classes must be outputs in 0..{n_outputs - 1} other than the targets {t.tolist()}, "
                         f"got {c.tolist()}")
    return c


def _explain_all(fn, model, inputs, targets, chunk, what: str) -> torch.Tensor:
    """``explain`` on every example for ``targets``, ``chunk`` examples per call."""
    parts = []
    for i in range(0, inputs.shape[0], chunk):
        e = fn(model, inputs[i:i + chunk], targets[i:i + chunk])
        n = min(chunk, inputs.shape[0] - i)
        if not isinstance(e, torch.Tensor) or e.dim() < 2 or e.shape[0] != n:
            got = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
            raise ValueError(f"explain returned {got} for {n} inputs ({what}); expected one explanation per input")
        parts.append(e.detach())
    return torch.cat(parts)


@model_entry
def random_logit(model: Callable, inputs: torch.Tensor, explain: Explain, target: Target = None, *,
                 num_classes: Optional[int] = None, similarity: Union[str, Callable] = "ssim",
                 classes: Optional[torch.Tensor] = None, attributions: Optional[torch.Tensor] = None,
                 preprocess=None, explain_kwargs: Optional[dict] = None, generator=0,
                 max_batch: Optional[int] = None, memory_budget: Optional[int] = None) -> torch.Tensor:
    """Random-logit test (Sixt et al. 2020; Quantus ``RandomLogit``) per example, lower is better:

        ``sim(e(x, t), e(x, t'))``,  ``t' ~ U{0, …, K−1} \\ {t}``

    the similarity (default: :func:`ssim` of the flattened maps, Quantus's default) between the
    explanation of the target class ``t`` and that of an off-target class ``t'`` drawn uniformly from
    the other ``K − 1`` of the first ``K = num_classes`` outputs: ``k ~ U{0, …, K−2}`` from
    ``generator``, ``t' = k + [k ≥ t]`` (Quantus's mapping of its ``np.random.randint`` draw).

    Args:
        explain: an attribution function ``fn(model, inputs, target, **explain_kwargs)`` or a name in
            ``fastattr.attribution.METHODS``; called once per chunk of examples for the targets (unless
            ``attributions`` are given) and once per chunk for the off-target classes.
        target: None (the predicted class), an int or ``[B]``.
        num_classes: ``K`` (default: every output of the model); at most the model's outputs.
        similarity: ``"ssim"`` or a function of two ``[B, d]`` float64 tensors returning ``[B]``.
        classes: the off-target classes ``[B]`` instead of drawing them (e.g. to replay another
            library's draws); each a valid output other than the target.
        attributions: a precomputed ``e(x, t)`` (default: ``explain`` on the targets).
        preprocess: applied to both explanations before comparing: ``"abs_max"`` (``|a| / max|a|`` per
            example) or a function of an ``[N, ...]`` batch.
        generator: torch.Generator or int seed for the off-target classes.
        max_batch / memory_budget: examples per call of ``explain`` (and per forward); a method given
            by name also chunks its own model calls under them.

    Returns ``[B]`` float64. Example::

        >>> s = fastattr.metrics.random_logit(model, x, fastattr.saliency, y)
    """
    check_inputs(inputs)
    sim = _similarity(similarity)
    prep = preprocessor(preprocess)
    fn = explainer(explain, explain_kwargs, dict(max_batch=max_batch, memory_budget=memory_budget))
    logits = forward_chunks(model, inputs, max_batch, memory_budget)
    t = resolve_target(model, inputs, target, logits=logits)
    n_outputs = 1 if logits.dim() == 1 else logits.shape[-1]
    k = check_count(num_classes, "num_classes", minimum=2, optional=True) or n_outputs
    if k > n_outputs or k < 2:
        raise ValueError(f"num_classes must be in 2..{n_outputs} (the model's outputs), got {num_classes!r}")
    if classes is not None:
        off = _off_classes(classes, t, n_outputs)
    else:
        if (t >= k).any():
            raise ValueError(f"target {t.tolist()} must be below num_classes ({k}) to draw another class")
        draw = torch.randint(0, k - 1, t.shape, generator=make_generator(generator)).to(t.device)
        off = draw + (draw >= t).long()
    chunk = chunk_size(inputs, inputs.shape[0], max_batch, memory_budget)
    if attributions is None:
        e_t = _explain_all(fn, model, inputs, t, chunk, "the targets")
    elif not isinstance(attributions, torch.Tensor) or attributions.shape[:1] != inputs.shape[:1]:
        got = tuple(attributions.shape) if isinstance(attributions, torch.Tensor) else type(attributions).__name__
        raise ValueError(f"attributions must be e(x, target), a tensor with {inputs.shape[0]} rows, got {got}")
    else:
        e_t = attributions.detach()
    e_off = _explain_all(fn, model, inputs, off, chunk, "the off-target classes")
    if e_off.shape != e_t.shape:
        name = "attributions" if attributions is not None else "explain's output for the targets"
        raise ValueError(f"{name} has {tuple(e_t.shape[1:])} per example but explain returns "
                         f"{tuple(e_off.shape[1:])} for the off-target classes")
    if attributions is not None and not torch.isfinite(e_t).all():
        raise ValueError("attributions contains NaN or Inf")
    if not (torch.isfinite(e_t).all() and torch.isfinite(e_off).all()):
        raise ValueError("explain returned NaN or Inf")
    b = inputs.shape[0]
    out = sim(prep(e_t).reshape(b, -1).double(), prep(e_off).reshape(b, -1).double())
    return torch.as_tensor(out, dtype=torch.float64, device=inputs.device).reshape(b)
