"""``fastattr.aggregate`` (AGG, issue 16) for ``fastattr bench agg``: its cost against the floor and
the paper's per-image procedure, and the reproduction of the paper's Tables 1–2 on the digits CNN.

The seven explainers are the paper's: saliency, input × gradient, integrated gradients, SmoothGrad,
VarGrad, guided backprop and DeepLift. The floor is those seven on all ``m·B`` perturbed inputs
(what ``"robust"`` must explain at least), computed as fastattr computes them at their cheapest
(:func:`~fastattr.attribution.explain_all`: saliency and input × gradient share one gradient,
SmoothGrad and VarGrad one set of noisy gradients); a row times them as seven separate calls. The
paper's procedure, as its released code runs it, handles one image at a time: every explainer on every
perturbed copy at batch size 1, the infidelity copies one forward each, and one cvxpy problem per image;
it is timed on a few images and scaled to the batch (its cost is the same for every image). A row times the
floor with the model's max pooling and its first convolution's backward on torch's own kernels
(:func:`fastattr.torch_pooling`, :func:`fastattr.torch_convolution`): fastattr's calls run them through
:func:`fastattr.ops.max_pool2d` and :func:`fastattr.ops.conv2d_input_grad` on CPU
(:mod:`fastattr.core.layer_kernels`); :func:`pool_table` and :func:`conv_table` time those ops against torch's
kernels.
"""
from __future__ import annotations

import importlib.util
import warnings
from typing import Optional

import numpy as np
import torch

from .. import _backend, torch_convolution, torch_pooling
from ..attribution import aggregate, explain_all
from ..attribution.shared import MethodSet, method_function
from ..attribution.aggregate import abs_max, aggregation_matrices
from ..core import Blur
from ..ops import max_pool2d
from ..zoo import load_digits, load_digits_cnn
from . import Table, machine_info, time_interleaved

#: the explainers' settings: this bench's (IG 20 steps; SmoothGrad / VarGrad 10 draws of
#: σ = 0.15 · (max x − min x)) and the released code's (Captum's default 50 IG steps; 20 draws of σ = 0.5 in
#: its SmoothGrad and VarGrad explainers, which both run ``nt_type="smoothgrad_sq"``, as costly as these)
SETTINGS = {"bench": {"n_steps": 20, "n_samples": 10, "stdev": None},
            "released": {"n_steps": 50, "n_samples": 20, "stdev": 0.5}}


def seven(n_steps: int, n_samples: int, stdev: Optional[float]) -> dict:
    """The seven explainers as :func:`~fastattr.attribution.explain_all` takes them, with these settings."""
    noisy = {"n_samples": n_samples, "generator": 0, **({} if stdev is None else {"stdev": stdev})}
    return {"saliency": "saliency", "input_x_gradient": "input_x_gradient",
            "integrated_gradients": ("integrated_gradients", {"n_steps": n_steps}),
            "smoothgrad": ("smoothgrad", noisy), "vargrad": ("smoothgrad", {**noisy, "variant": "vargrad"}),
            "guided_backprop": "guided_backprop", "deeplift": "deeplift"}


SEVEN = seven(**SETTINGS["bench"])


def _captum_seven(model, n_steps: int, n_samples: int, stdev: Optional[float]) -> dict:
    """The released code's explainers: Captum's, one call per (perturbed) image, with these settings
    (:data:`SETTINGS`; ``stdev`` None: σ = 0.15 · (max x − min x))."""
    from captum.attr import (DeepLift, GuidedBackprop, InputXGradient, IntegratedGradients, NoiseTunnel,
                             Saliency)

    sal, ixg, ig = Saliency(model), InputXGradient(model), IntegratedGradients(model)
    gbp, dl, nt = GuidedBackprop(model), DeepLift(model), NoiseTunnel(Saliency(model))

    def noisy(kind):
        def run(x, t):
            sigma = 0.15 * (x.max() - x.min()).item() if stdev is None else stdev
            return nt.attribute(x, target=t, nt_type=kind, nt_samples=n_samples, stdevs=sigma, abs=False)
        return run

    return {"saliency": lambda x, t: sal.attribute(x, target=t, abs=True),
            "input_x_gradient": lambda x, t: ixg.attribute(x, target=t),
            "integrated_gradients": lambda x, t: ig.attribute(x, target=t, n_steps=n_steps),
            "smoothgrad": noisy("smoothgrad"),
            "vargrad": noisy("vargrad"),
            "guided_backprop": lambda x, t: gbp.attribute(x, target=t),
            "deeplift": lambda x, t: dl.attribute(x, target=t)}


def _paper_procedure(model, x, t, n_samples: int, settings: dict, seed: int = 0) -> np.ndarray:
    """The released code's loop (github.com/thomdeck/aggopt, ``AGGopt_explainer``) for every image:
    Captum's seven explainers on the image and on each of its ``m`` noisy copies at batch size 1,
    the infidelity copies through the model in batches of 10, one cvxpy problem per image."""
    import cvxpy as cp

    explainers = _captum_seven(model, **settings)
    gen = torch.Generator().manual_seed(seed)
    weights = []
    for i in range(x.shape[0]):
        xi, ti = x[i:i + 1], int(t[i])

        def maps(z):
            return torch.stack([abs_max(f(z, ti).detach().sum(1)).reshape(-1) for f in explainers.values()],
                               1).double()

        phi = maps(xi)
        g_r = torch.zeros(7, 7, dtype=torch.float64)
        for _ in range(n_samples):
            d = phi - maps(xi + (2 * torch.rand(xi.shape, generator=gen) - 1) * 0.1)
            g_r += d.T @ d / n_samples
        base = Blur()(xi)
        with torch.no_grad():
            f_x = model(xi)[0, ti]
        chosen = torch.rand((n_samples,) + xi.shape[2:], generator=gen) < 0.2
        x_tilde = torch.where(chosen[:, None], base, xi)
        with torch.no_grad():
            delta = torch.cat([f_x - model(c)[:, ti] for c in x_tilde.split(10)]).double()
        rows = (xi - x_tilde).sum(1).reshape(n_samples, -1).double() @ phi - delta[:, None]
        g_f = rows.T @ rows / n_samples
        g = 0.5 * g_r / g_r.norm() + 0.5 * g_f / g_f.norm()
        w = cp.Variable(7)
        psd = cp.psd_wrap(g.numpy())
        cp.Problem(cp.Minimize(cp.quad_form(w, psd)), [w >= 0, cp.sum(w) == 1]).solve()
        weights.append(w.value)
    return np.stack(weights)


def aggregate_table(batch: int = 32, n_samples: int = 50, paper_images: int = 2, repeat: int = 3,
                    device: Optional[str] = None, settings: str = "bench") -> Table:
    """AGG_opt against its floor and the paper's per-image procedure, the explainers with ``settings``
    (a key of :data:`SETTINGS`)."""
    methods = seven(**SETTINGS[settings])
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_digits_cnn().to(device)
    x, _ = load_digits("test", batch)
    x = x.to(device)
    t = model(x).argmax(1)
    gen = torch.Generator().manual_seed(1)
    z = (x.repeat(n_samples, 1, 1, 1) + (2 * torch.rand((n_samples * batch,) + x.shape[1:], generator=gen) - 1)
         .to(device) * 0.1)
    tz = t.repeat(n_samples)

    one_by_one = [method_function(name, m, {}) for name, m in methods.items()]

    def separately():
        for f in one_by_one:
            f(model, z, tz)

    def torch_kernel_floor():
        with torch_pooling(), torch_convolution():
            explain_all(model, z, tz, methods=methods)

    impls = {"floor: 7 explainers on m·B inputs": lambda: explain_all(model, z, tz, methods=methods),
             "floor on torch's max pool and convolution backward": torch_kernel_floor,
             "7 explainers on m·B inputs, one call each": separately,
             "fastattr.aggregate opt": lambda: aggregate(model, x, t, methods=methods, objective="opt",
                                                         n_samples=n_samples)}
    if all(importlib.util.find_spec(m) is not None for m in ("cvxpy", "captum")):
        xs, ts = x[:paper_images].cpu(), t[:paper_images].cpu()
        cpu_model = model if device.type == "cpu" else load_digits_cnn()
        impls[f"paper procedure ({paper_images} images)"] = lambda: _paper_procedure(cpu_model, xs, ts, n_samples,
                                                                                     SETTINGS[settings])
        impls[f"fastattr.aggregate one image at a time ({paper_images} images)"] = lambda: [
            aggregate(model, x[i:i + 1], t[i:i + 1], methods=methods, objective="opt", n_samples=n_samples)
            for i in range(paper_images)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times, ratios = time_interleaved(impls, device, repeat=repeat, warmup=1)
    table = Table(name=f"aggregate(objective='opt'), digits CNN, 7 explainers ({settings} settings), B = {batch}, "
                       f"m = {n_samples}, {device.type}",
                  columns=["implementation", "ms", "time / floor", "per image ms"], machine=machine_info(device),
                  params={"batch": batch, "n_samples": n_samples, "paper_images": paper_images, "repeat": repeat,
                          "device": str(device), "settings": settings})
    for name, s in times.items():
        few = f"({paper_images} images)" in name
        table.add(name, s * 1e3, "-" if few else ratios[name], s / (paper_images if few else batch) * 1e3)
    paper = next((k for k in times if k.startswith("paper")), None)
    if paper:
        speed = times[paper] / paper_images / (times["fastattr.aggregate opt"] / batch)
        table.notes.append(f"speed-up over the paper's per-image procedure (per image): {speed:.1f}×")
    spec = SETTINGS[settings]
    sigma = "0.15 · (max x − min x)" if spec["stdev"] is None else spec["stdev"]
    table.notes.append(f"{repeat} round-robin rounds, medians; torch threads = {torch.get_num_threads()}; IG "
                       f"{spec['n_steps']} steps, SmoothGrad / VarGrad {spec['n_samples']} samples of σ = {sigma}")
    return table


def reproduction_table(batch: int = 64, n_samples: int = 50, n_eval: int = 200, device: Optional[str] = None) -> Table:
    """Tables 1–2 of the paper on held-out digits: squared average sensitivity (r = 0.1) and infidelity
    (20 % to the blurred image) over ``n_eval`` fresh draws, of every single method and of AGG_mean /
    var / robust / faith / opt (weights from ``n_samples`` optimisation draws)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_digits_cnn().to(device)
    x, _ = load_digits("test", 450)
    x = x[-batch:].to(device)
    t = model(x).argmax(1)
    rows = {}
    phi = None
    for objective in ("mean", "robust", "faith", "opt"):
        agg = aggregate(model, x, t, methods=SEVEN, objective=objective, n_samples=n_samples, generator=0)
        rows[f"AGG_{objective}"] = agg.weights.double()
        phi = agg.maps
    k = phi.shape[1]
    for i, name in enumerate(SEVEN):
        rows[name] = torch.nn.functional.one_hot(torch.full((batch,), i), k).double().to(device)
    fns = MethodSet(SEVEN)
    clean = model(x).gather(1, t[:, None])[:, 0].detach()
    common = dict(n_samples=n_eval, radius=0.1, fraction=0.2, baseline="blur", lam=(0.5, 0.5), chunk=512)
    _, g_sens = aggregation_matrices(model, x, t, clean, fns, phi, abs_max, objective="robust",
                                     generator=torch.Generator().manual_seed(12345), **common)
    _, g_infd = aggregation_matrices(model, x, t, clean, fns, phi, abs_max, objective="faith",
                                     generator=torch.Generator().manual_seed(54321), **common)
    table = Table(name=f"AGG on held-out digits (digits CNN, B = {batch}): squared SENS_avg and INFD over "
                       f"{n_eval} fresh draws (weights from {n_samples})",
                  columns=["explanation", "SENS_avg", "INFD"], machine=machine_info(device),
                  params={"batch": batch, "n_samples": n_samples, "n_eval": n_eval})
    for name, w in rows.items():
        sens = torch.einsum("bk,bkl,bl->b", w, g_sens, w).mean().item()
        infd = torch.einsum("bk,bkl,bl->b", w, g_infd, w).mean().item()
        table.add(name, sens, infd)
    # AGG_var is not a convex combination of the maps: score its own map, |φ|/max|φ| like the others, on the
    # same draws (its G[0, 0])
    var_fn = lambda m, z, tz: aggregate(m, z, tz, methods=SEVEN, objective="var").attribution  # noqa: E731
    var_map = var_fn(model, x, t)
    pair = torch.stack([abs_max(var_map)] * 2, 1)
    same = {"var": var_fn, "again": var_fn}
    sens = aggregation_matrices(model, x, t, clean, same, pair, abs_max, objective="robust",
                                generator=torch.Generator().manual_seed(12345), **common)[1][:, 0, 0].mean().item()
    infd = aggregation_matrices(model, x, t, clean, same, pair, abs_max, objective="faith",
                                generator=torch.Generator().manual_seed(54321), **common)[1][:, 0, 0].mean().item()
    table.add("AGG_var", sens, infd)
    table.notes.append("the same evaluation draws for every row (seeded), distinct from the optimisation draws; "
                       "single methods and AGG_mean / robust / faith / opt scored as ωᵀGω with G from the "
                       "evaluation draws; AGG_var's own map, preprocessed to |φ|/max|φ| like every other row, "
                       "scored on the same draws")
    return table


def default_tables(device: Optional[str] = None, repeat: int = 3) -> list[Table]:
    return [aggregate_table(device=device, repeat=repeat), reproduction_table(device=device)]


#: ``(case, input shape, kernel, stride, padding)`` of :func:`pool_table`: the digits CNN's pool on one IG chunk,
#: a VGG block's and ResNet's stem
POOL_SHAPES = (("digits CNN, one IG chunk", (1024, 32, 8, 8), 2, 2, 0),
               ("VGG block", (32, 64, 56, 56), 2, 2, 0),
               ("ResNet stem", (8, 64, 112, 112), 3, 2, 1))


#: ``(case, input shape, output channels, kernel, stride, padding, gradient)`` of :func:`conv_table`: the digits CNN's
#: first layer on one IG chunk, a LeNet-like first layer on MNIST-sized inputs, a two-channel input, and RGB first
#: layers (a CIFAR CNN's, ResNet's stem), where the dense kernel does not win and models keep torch's, all with dense
#: gradients (``"dense"``); then wide layers whose output gradient comes through a 2×2 max pool and a ReLU
#: (``"pooled"``: mostly zero), as the digits CNN's second layer's and a VGG block's do, where the sparse kernel runs,
#: and the digits CNN's second layer with a dense gradient (a layer no max pool follows keeps torch's)
CONV_SHAPES = (("digits CNN conv1, one IG chunk", (442, 1, 8, 8), 16, 3, 1, 1, "dense"),
               ("MNIST-sized, 5×5", (128, 1, 28, 28), 32, 5, 1, 2, "dense"),
               ("two channels", (32, 2, 16, 16), 8, 3, 1, 1, "dense"),
               ("RGB 32×32", (64, 3, 32, 32), 16, 3, 1, 1, "dense"),
               ("ResNet stem", (8, 3, 224, 224), 64, 7, 2, 3, "dense"),
               ("digits CNN conv2 behind its max pool, one IG chunk", (442, 16, 8, 8), 32, 3, 1, 1, "pooled"),
               ("VGG block behind its max pool", (16, 64, 56, 56), 64, 3, 1, 1, "pooled"),
               ("digits CNN conv2, dense gradient", (442, 16, 8, 8), 32, 3, 1, 1, "dense"))


def _conv_case(shape, co, k, s, p, gradient, gen):
    """Input, weight and output gradient of a :data:`CONV_SHAPES` case: a ``"pooled"`` gradient is the one a
    random upstream gradient gets through ``relu(max_pool2d(·, 2))``."""
    x = torch.randn(shape, generator=gen)
    w = torch.randn(co, shape[1], k, k, generator=gen) / (shape[1] * k * k) ** 0.5
    y = torch.nn.functional.conv2d(x, w, None, s, p).requires_grad_()
    if gradient == "dense":
        return x, w, torch.randn(y.shape, generator=gen)
    out = torch.nn.functional.max_pool2d(y, 2).relu()
    return x, w, torch.autograd.grad(out, y, torch.randn(out.shape, generator=gen))[0]


def conv_table(device: Optional[str] = None, repeat: int = 9, shapes=CONV_SHAPES) -> Table:
    """The input gradient of a convolution: torch's ``convolution_backward`` (oneDNN on CPU) against
    :func:`fastattr.ops.conv2d_input_grad` on the C++ backend (checked to agree to 1e-5 first; the dense kernel for
    at most ``MAX_CHANNELS`` input channels, the sparse one for more), and whether
    :func:`fastattr.ops.conv.conv_beats_torch` routes a model's layer of that shape to it."""
    from ..ops import conv2d_input_grad
    from ..ops.conv import MAX_CHANNELS, sparse_kernel_fits

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    table = Table(name=f"conv2d input gradient, float32, {device.type}",
                  columns=["case", "implementation", "ms", "speed-up vs torch"], machine=machine_info(device),
                  params={"shapes": [[list(c[1]), *c[2:]] for c in shapes], "repeat": repeat, "device": str(device),
                          "max_channels": MAX_CHANNELS})
    if device.type != "cpu":
        table.notes.append("CUDA keeps torch's (cuDNN) kernel: conv2d_input_grad has no Triton kernel to time")
        return table
    for case, shape, co, k, s, p, gradient in shapes:
        x, w, g = _conv_case(shape, co, k, s, p, gradient, torch.Generator().manual_seed(0))
        args = (list(x.shape[2:]), [s, s], [p, p])

        def torch_grad(g=g, x=x, w=w, s=s, p=p):
            return torch.ops.aten.convolution_backward(g, x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], 1,
                                                       [True, False, False])[0]

        expected, got = torch_grad(), conv2d_input_grad(g, w, *args, backend="cpp")
        if not torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max())):
            raise AssertionError(f"conv2d_input_grad differs from torch on {case}")
        impls = {"torch convolution_backward": torch_grad,
                 "fastattr cpp": lambda g=g, w=w, args=args: conv2d_input_grad(g, w, *args, backend="cpp")}
        times, ratios = time_interleaved(impls, device, repeat=repeat)
        density = float((g != 0).float().mean())
        if shape[1] <= MAX_CHANNELS:
            routed = "routed (dense kernel)"
        elif sparse_kernel_fits(shape[1], co) and gradient == "pooled":
            routed = "routed (sparse kernel)"
        else:
            routed = "kept on torch's"
        shape_text = "×".join(map(str, shape)) + f" → {co}, {k}×{k} / {s}, pad {p}; {density:.0%} nonzero; {routed}"
        for name, t in times.items():
            table.add(f"{case} ({shape_text})", name, t * 1e3, 1.0 / ratios[name])
    table.notes.append(f"{repeat} round-robin rounds; times are medians, speed-ups medians of per-round ratios; "
                       f"torch threads = {torch.get_num_threads()}; a model's Conv2d runs the dense kernel inside "
                       f"fastattr's calls when its input has at most {MAX_CHANNELS} channels, the sparse one (float32, "
                       "channel counts multiples of 8) when it feeds a max pool in an nn.Sequential")
    return table


def pool_table(device: Optional[str] = None, repeat: int = 9, shapes=POOL_SHAPES) -> Table:
    """``max_pool2d`` without gradients: torch's kernel on contiguous (NCHW) inputs (what a model runs, the
    first column of ratios), torch's on the same data in channels-last, and :func:`fastattr.ops.max_pool2d` on
    every backend, each checked to return torch's values and indices first."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    table = Table(name=f"max_pool2d with indices, float32, {device.type}",
                  columns=["case", "implementation", "ms", "speed-up vs torch NCHW"], machine=machine_info(device),
                  params={"shapes": [[list(c[1]), *c[2:]] for c in shapes], "repeat": repeat,
                          "device": str(device)})
    for case, shape, k, s, p in shapes:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
        xl = x.contiguous(memory_format=torch.channels_last)
        expected = torch.ops.aten.max_pool2d_with_indices(x, [k, k], [s, s], [p, p])
        impls = {"torch (NCHW)": lambda x=x: torch.ops.aten.max_pool2d_with_indices(x, [k, k], [s, s], [p, p]),
                 "torch (channels-last copy)": lambda: torch.ops.aten.max_pool2d_with_indices(xl, [k, k], [s, s],
                                                                                              [p, p])}
        for name in _backend.available_backends(device):
            got = max_pool2d(x, k, s, p, backend=name)
            if not (torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])):
                raise AssertionError(f"max_pool2d[{name}] differs from torch on {case}")
            impls[f"fastattr {name}"] = lambda name=name, x=x: max_pool2d(x, k, s, p, backend=name)
        with torch.no_grad():
            times, ratios = time_interleaved(impls, device, repeat=repeat)
        shape_text = "×".join(map(str, shape)) + f", {k}×{k} / {s}" + (f", pad {p}" if p else "")
        for name, t in times.items():
            table.add(f"{case} ({shape_text})", name, t * 1e3, 1.0 / ratios[name])
    table.notes.append(f"{repeat} round-robin rounds; times are medians, speed-ups medians of per-round ratios; "
                       f"torch threads = {torch.get_num_threads()}")
    return table
