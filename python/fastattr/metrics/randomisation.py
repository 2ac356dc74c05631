"""Randomisation checks of explanations (SPEC §11): the random-logit test (Sixt et al. 2020, "When
Explanations Lie: Why Many Modified BP Attributions Fail", ICML), with Quantus 0.6's definition
(``quantus.RandomLogit``): the similarity between the explanation of the target class and that of a
random other class. An explanation that does not depend on the class it explains scores high; lower
is better.

The similarity is Quantus's default, SSIM (Wang et al. 2004) as ``quantus.similarity_func.ssim``
computes it: ``skimage.metrics.structural_similarity`` of the two maps *flattened* to vectors
(Quantus reshapes them to ``[B, d]`` first), with a uniform 7-element window and the data range of
the pair; :func:`ssim` is that, batched in torch.

The model parameter randomisation test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps",
NeurIPS; SPEC §11), :func:`model_randomisation`, follows Quantus 0.6's ``MPRT``
(``quantus/metrics/randomisation/mprt.py``) and ``PyTorchModel.get_random_layer_generator``
(``quantus/helpers/model/pytorch_model.py``): the layers are the modules of a deep copy of the model
that have ``reset_parameters``, each re-initialised by ``torch.manual_seed(seed)`` then
``reset_parameters()``; its default similarity is Quantus's ``correlation_spearman``, per example
``scipy.stats.spearmanr`` (average ranks for ties), which :func:`spearman` computes in torch.
"""
from __future__ import annotations

import copy
from typing import Callable, Dict, Optional, Union

import torch
import torch.nn.functional as F

from ..core import (Target, check_count, check_inputs, chunk_size, forward_chunks, make_generator, model_entry,
                    resolve_target)
from .robustness import Explain, explainers, given_attributions, label, preprocessor

__all__ = ["model_randomisation", "random_logit", "spearman", "ssim"]


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


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """1-based ranks of each row of ``v`` ``[B, d]``, ties given their average rank
    (``scipy.stats.rankdata(method="average")``)."""
    b, d = v.shape
    sv, order = torch.sort(v, dim=1, stable=True)
    new = torch.ones_like(sv, dtype=torch.bool)
    new[:, 1:] = sv[:, 1:] != sv[:, :-1]
    group = torch.cumsum(new.long(), 1) - 1  # [B, d] group index of each sorted position
    pos = torch.arange(d, device=v.device, dtype=torch.float64).expand(b, d)
    first = torch.full((b, d), float(d), dtype=torch.float64, device=v.device).scatter_reduce(
        1, group, pos, "amin")
    last = torch.full((b, d), -1.0, dtype=torch.float64, device=v.device).scatter_reduce(1, group, pos, "amax")
    avg = (first.gather(1, group) + last.gather(1, group)) / 2 + 1
    return torch.empty_like(avg).scatter_(1, order, avg)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of rows of ``a``, ``b`` ``[B, ...]`` (flattened to
    ``[B, d]``): the Pearson correlation of their ranks, ties given their average rank, as
    ``scipy.stats.spearmanr(a_i, b_i)[0]`` (what ``quantus.similarity_func.correlation_spearman``
    computes per example for batched maps); NaN where a row is constant. Returns ``[B]`` float64."""
    a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    if a.shape != b.shape:
        raise ValueError(f"spearman compares maps of one shape; got {tuple(a.shape)} and {tuple(b.shape)} "
                         "(flattened)")
    if a.shape[1] < 2:
        raise ValueError(f"spearman needs maps of at least 2 elements, got {a.shape[1]}")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    r = (ra * rb).sum(1) / torch.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    return r.clamp(-1.0, 1.0)


_SIMILARITIES = {"ssim": ssim, "spearman": spearman}


def similarity_function(similarity, allowed=("ssim",)) -> Callable:
    """The per-example similarity ``f(a [B, d], b [B, d]) -> [B]`` named by ``similarity`` (one of
    ``allowed``: ``"ssim"``, ``"spearman"``), or the callable given."""
    if isinstance(similarity, str) and similarity in allowed:
        return _SIMILARITIES[similarity]
    if callable(similarity) and not isinstance(similarity, str):
        return similarity
    names = " or ".join(repr(n) for n in allowed)
    raise ValueError(f"similarity must be {names} or a function of two [B, d] tensors, got {similarity!r}")


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


def _explain_all(fn, model, inputs, targets, chunk, what: str, name: Optional[str] = None) -> torch.Tensor:
    """``explain`` (of method ``name`` in a dict call) on every example for ``targets``, ``chunk``
    examples per call."""
    parts = []
    for i in range(0, inputs.shape[0], chunk):
        e = fn(model, inputs[i:i + chunk], targets[i:i + chunk])
        n = min(chunk, inputs.shape[0] - i)
        if not isinstance(e, torch.Tensor) or e.dim() < 2 or e.shape[0] != n:
            got = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
            raise ValueError(f"{label('explain', name)} returned {got} for {n} inputs ({what}); expected one "
                             "explanation per input")
        parts.append(e.detach())
    return torch.cat(parts)


def _one_per_method(several: bool, out: dict):
    """A dict call's ``{method: value}``, or the one value of a single-method call."""
    return out if several else out[None]


@model_entry
def random_logit(model: Callable, inputs: torch.Tensor, explain: Union[Explain, Dict[str, Explain]],
                 target: Target = None, *, num_classes: Optional[int] = None, similarity: Union[str, Callable] = "ssim",
                 classes: Optional[torch.Tensor] = None,
                 attributions: Union[None, torch.Tensor, Dict[str, torch.Tensor]] = None, preprocess=None,
                 explain_kwargs: Optional[dict] = None, generator=0, max_batch: Optional[int] = None,
                 memory_budget: Optional[int] = None) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
    """Random-logit test (Sixt et al. 2020; Quantus ``RandomLogit``) per example, lower is better:

        ``sim(e(x, t), e(x, t'))``,  ``t' ~ U{0, …, K−1} \\ {t}``

    the similarity (default: :func:`ssim` of the flattened maps, Quantus's default) between the
    explanation of the target class ``t`` and that of an off-target class ``t'`` drawn uniformly from
    the other ``K − 1`` of the first ``K = num_classes`` outputs: ``k ~ U{0, …, K−2}`` from
    ``generator``, ``t' = k + [k ≥ t]`` (Quantus's mapping of its ``np.random.randint`` draw).

    Args:
        explain: an attribution function ``fn(model, inputs, target, **explain_kwargs)`` or a name in
            ``fastattr.attribution.METHODS``; called once per chunk of examples for the targets (unless
            ``attributions`` are given) and once per chunk for the off-target classes. A dict
            ``{method name: function or name}`` tests several methods against the same off-target
            classes (drawn once; the same as one call per method with the same ``generator``).
        target: None (the predicted class), an int or ``[B]``.
        num_classes: ``K`` (default: every output of the model); at most the model's outputs.
        similarity: ``"ssim"`` or a function of two ``[B, d]`` float64 tensors returning ``[B]``.
        classes: the off-target classes ``[B]`` instead of drawing them (e.g. to replay another
            library's draws); each a valid output other than the target.
        attributions: a precomputed ``e(x, t)`` (default: ``explain`` on the targets); with a dict
            ``explain``, a dict ``{method name: e(x, t)}`` for some or all of its methods.
        preprocess: applied to both explanations before comparing: ``"abs_max"`` (``|a| / max|a|`` per
            example) or a function of an ``[N, ...]`` batch.
        generator: torch.Generator or int seed for the off-target classes.
        max_batch / memory_budget: examples per call of ``explain`` (and per forward); a method given
            by name also chunks its own model calls under them.

    Returns ``[B]`` float64; for a dict ``explain``, ``{method: [B]}``. Example::

        >>> s = fastattr.metrics.random_logit(model, x, fastattr.saliency, y)
        >>> both = fastattr.metrics.random_logit(model, x, {"sal": "saliency", "ixg": "input_x_gradient"}, y)
    """
    check_inputs(inputs)
    sim = similarity_function(similarity)
    prep = preprocessor(preprocess)
    fns, several = explainers(explain, explain_kwargs, dict(max_batch=max_batch, memory_budget=memory_budget))
    given = given_attributions(attributions, fns, several)
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
    b = inputs.shape[0]
    out = {}
    for name, fn in fns.items():
        a_name, e_name = label("attributions", name), label("explain", name)
        a = given.get(name)
        if a is None:
            e_t = _explain_all(fn, model, inputs, t, chunk, "the targets", name)
        elif not isinstance(a, torch.Tensor) or a.shape[:1] != inputs.shape[:1]:
            got = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
            raise ValueError(f"{a_name} must be e(x, target), a tensor with {inputs.shape[0]} rows, got {got}")
        else:
            e_t = a.detach()
        e_off = _explain_all(fn, model, inputs, off, chunk, "the off-target classes", name)
        if e_off.shape != e_t.shape:
            what = a_name if a is not None else f"{e_name}'s output for the targets"
            raise ValueError(f"{what} has {tuple(e_t.shape[1:])} per example but {e_name} returns "
                             f"{tuple(e_off.shape[1:])} for the off-target classes")
        if a is not None and not torch.isfinite(e_t).all():
            raise ValueError(f"{a_name} contains NaN or Inf")
        if not (torch.isfinite(e_t).all() and torch.isfinite(e_off).all()):
            raise ValueError(f"{e_name} returned NaN or Inf")
        s = sim(prep(e_t).reshape(b, -1).double(), prep(e_off).reshape(b, -1).double())
        out[name] = torch.as_tensor(s, dtype=torch.float64, device=inputs.device).reshape(b)
    return _one_per_method(several, out)


def _layers(model: torch.nn.Module) -> list:
    """``(name, module)`` of every module with ``reset_parameters``, in ``named_modules`` order (Quantus)."""
    return [(n, m) for n, m in model.named_modules() if callable(getattr(m, "reset_parameters", None))]


def _seed_of(generator) -> int:
    if isinstance(generator, torch.Generator):
        return int(torch.randint(0, 2 ** 62, (1,), generator=generator))
    if isinstance(generator, bool) or not isinstance(generator, int) or generator < 0:
        raise ValueError(f"generator must be a torch.Generator or a non-negative int seed, got {generator!r}")
    return generator


def _reinitialise(layer: torch.nn.Module, seed: int) -> None:
    """``torch.manual_seed(seed); layer.reset_parameters()`` (Quantus), the global RNG state (CPU and
    the layer's CUDA devices) restored afterwards."""
    devices = sorted({t.device.index or 0 for t in list(layer.parameters()) + list(layer.buffers())
                      if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        with torch.no_grad():
            layer.reset_parameters()


@model_entry
def model_randomisation(model: torch.nn.Module, inputs: torch.Tensor, explain: Union[Explain, Dict[str, Explain]],
                        target: Target = None, *, mode: str = "cascading", similarity: Union[str, Callable] = "spearman",
                        layer_order: str = "top_down", generator=0,
                        attributions: Union[None, torch.Tensor, Dict[str, torch.Tensor]] = None,
                        explain_kwargs: Optional[dict] = None, max_batch: Optional[int] = None,
                        memory_budget: Optional[int] = None) -> dict:
    """Model parameter randomisation test (Adebayo et al. 2018; Quantus ``MPRT``) per layer and example,
    lower is better (an explanation that ignores the model's parameters stays similar):

        ``sim(e(x; θ), e(x; θ̃_l))`` for each layer ``l`` in turn

    The model is deep-copied (the user's model is never changed); its layers are the modules with
    ``reset_parameters`` (Quantus's rule: Conv, Linear, BatchNorm, ...), in ``named_modules`` order,
    reversed for ``layer_order="top_down"``. Each step re-initialises one layer as Quantus does,
    ``torch.manual_seed(seed)`` then ``reset_parameters()`` (the global RNG state is restored after), on
    top of the earlier steps (``mode="cascading"``) or on the original parameters
    (``mode="independent"``), and explains every input on that model (one ``explain`` call per
    chunk).

    Args:
        explain: an attribution function ``fn(model, inputs, target, **explain_kwargs)`` or a name in
            ``fastattr.attribution.METHODS``; it receives the randomised copy. A dict ``{method name:
            function or name}`` tests several methods on one copy: each layer is re-initialised once and
            every method explains on it (the same as one call per method with the same ``generator``).
        target: None (the predicted class of the original model), an int or ``[B]``.
        mode: ``"cascading"`` or ``"independent"``.
        similarity: ``"spearman"`` (:func:`spearman`, Quantus's default), ``"ssim"`` (:func:`ssim`) or
            a function of two ``[B, d]`` float64 tensors returning ``[B]``.
        layer_order: ``"top_down"`` (output layer first) or ``"bottom_up"``.
        generator: int seed (each layer is re-initialised after ``torch.manual_seed(seed)``; Quantus's
            ``seed=s`` is ``generator=s + 1``) or a torch.Generator to draw one seed from.
        attributions: the original explanations ``e(x; θ)`` (default: ``explain`` on the model); with a
            dict ``explain``, a dict ``{method name: e(x; θ)}`` for some or all of its methods.
        max_batch / memory_budget: examples per call of ``explain`` (and per forward).

    Returns ``{layer name: [B] float64}`` in the order of randomisation; for a dict ``explain``,
    ``{method: {layer name: [B]}}``. Example::

        >>> s = fastattr.metrics.model_randomisation(model, x, fastattr.saliency, y)
        >>> both = fastattr.metrics.model_randomisation(model, x, {"sal": "saliency", "ig": "integrated_gradients"}, y)
    """
    check_inputs(inputs)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (its layers are re-initialised), got "
                        f"{type(model).__name__}")
    if mode not in ("cascading", "independent"):
        raise ValueError(f"mode must be 'cascading' or 'independent', got {mode!r}")
    if layer_order not in ("top_down", "bottom_up"):
        raise ValueError(f"layer_order must be 'top_down' or 'bottom_up', got {layer_order!r}")
    sim = similarity_function(similarity, ("spearman", "ssim"))
    seed = _seed_of(generator)
    fns, several = explainers(explain, explain_kwargs, dict(max_batch=max_batch, memory_budget=memory_budget))
    given = given_attributions(attributions, fns, several)
    logits = forward_chunks(model, inputs, max_batch, memory_budget)
    t = resolve_target(model, inputs, target, logits=logits)
    chunk = chunk_size(inputs, inputs.shape[0], max_batch, memory_budget)
    e0 = {}
    for name, fn in fns.items():
        a, a_name = given.get(name), label("attributions", name)
        if a is None:
            e0[name] = _explain_all(fn, model, inputs, t, chunk, "the original model", name)
            if not torch.isfinite(e0[name]).all():
                raise ValueError(f"{label('explain', name)} returned NaN or Inf for the original model")
        elif not isinstance(a, torch.Tensor) or a.shape[:1] != inputs.shape[:1]:
            got = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
            raise ValueError(f"{a_name} must be e(x), a tensor with {inputs.shape[0]} rows, got {got}")
        elif not torch.isfinite(a).all():
            raise ValueError(f"{a_name} contains NaN or Inf")
        else:
            e0[name] = a.detach()
    try:
        net = copy.deepcopy(model)
    except Exception as err:  # noqa: BLE001 - named for the user
        raise TypeError(f"model could not be deep-copied ({err}); model_randomisation never changes the "
                        "model itself") from err
    layers = _layers(net)
    if not layers:
        raise ValueError("model has no layer with reset_parameters to randomise")
    if layer_order == "top_down":
        layers = layers[::-1]
    original = {k: v.detach().clone() for k, v in net.state_dict().items()} if mode == "independent" else None
    b = inputs.shape[0]
    reference = {name: e.reshape(b, -1).double() for name, e in e0.items()}
    out: dict = {name: {} for name in fns}
    for layer_name, layer in layers:
        if original is not None:
            net.load_state_dict(original)
        _reinitialise(layer, seed)
        for name, fn in fns.items():
            e = _explain_all(fn, net, inputs, t, chunk, f"the model with {layer_name or 'the model'} randomised", name)
            if e.shape != e0[name].shape:
                what = label("attributions", name) if name in given else \
                    f"{label('explain', name)}'s output for the original model"
                raise ValueError(f"{what} has {tuple(e0[name].shape[1:])} per example but {label('explain', name)} "
                                 f"returns {tuple(e.shape[1:])} with {layer_name or 'the model'} randomised")
            s = sim(reference[name], e.reshape(b, -1).double())
            out[name][layer_name] = torch.as_tensor(s, dtype=torch.float64).reshape(b).to(inputs.device)
    return _one_per_method(several, out)
