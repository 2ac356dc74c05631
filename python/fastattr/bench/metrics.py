"""``fastattr bench metrics``: faithfulness metrics against the model-only floor and Quantus.

Table 1: a VGG-style CNN on 3×64×64, 8 images, saliency maps, 64 steps each for insertion and
deletion (64 pixels per step, 65 curve points). The floor is the model's plain forward over the same
number of inputs at its best batch size; Quantus ``PixelFlipping`` is the peer. Quantus counts its
step in elements and needs it to divide H·W, so ``features_in_step=64`` makes it run 192 steps; the
last row runs the same 192 steps through ``fastattr.integrations.quantus.PixelFlipping``.

Table 2: ``fastattr.evaluate`` with 5 attribution methods × {insertion, deletion, infidelity,
faithfulness correlation, Sensitivity-N} on the same CNN and images, against Quantus computing the
same metrics method by method, and against fastattr's Quantus drop-in doing what Quantus does. Model
calls are counted (Quantus's by wrapping the model's forward); the floor row is a plain forward over
as many inputs as ``evaluate`` runs.

Table 3: relative input, output and representation stability (Agarwal et al. 2022) of the same 5
methods on the same CNN and images, 50 perturbations each: one ``fastattr.metrics.relative_stability``
call for every method and kind (one set of perturbations, one hooked forward per chunk, every method
explaining each chunk) against Quantus 0.6's ``RelativeInputStability``, ``RelativeOutputStability`` and
``RelativeRepresentationStability`` run one after the other for each method, their ``explain_func`` the
same fastattr method.

Tables "impute" and "road" (:mod:`fastattr.bench.road`): the ``noisy_linear_impute`` op on 16 images of
3×224×224 against scipy's ``spsolve`` per image, and ROAD at 10 levels on 8 images of 3×64×64 against
Quantus 0.6.

Table 4 (CUDA only): insertion on ResNet-50, 16 images of 224², 224 steps: images/s as a fraction of
the model's own forward throughput at its best batch size, and the ratio to Quantus.

Everything is timed round-robin; ratios are medians of per-round ratios.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..attribution import METHODS, saliency
from ..metrics import deletion, evaluate, insertion, relative_stability
from ..metrics.evaluate import CountingModel
from . import Table, cuda_or_note, is_out_of_memory, machine_info, time_interleaved
from ..zoo.resnet import resnet50
from . import road
from .ig import vgg_style

EVALUATE_METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "guided_backprop")
EVALUATE_METRICS = ("deletion", "insertion", "infidelity", "faithfulness_correlation", "sensitivity_n")


@contextlib.contextmanager
def _step_check_lifted(quantus):
    """Quantus 0.6 asserts that ``features_in_step`` divides H·W, although its loop takes any step (the
    last one may be short). Lifting that check lets it run channel-shared pixel steps: with the map
    broadcast over C channels, ``C·s`` elements per step are the same ``s`` pixels as fastattr's step."""
    asserts = quantus.helpers.asserts
    check = asserts.assert_features_in_step
    asserts.assert_features_in_step = lambda features_in_step, input_shape: None
    try:
        yield
    finally:
        asserts.assert_features_in_step = check


def _quantus_deletion(model, x, y, attr, step, pixel_steps: bool = False):
    """Quantus ``PixelFlipping`` ("black" baseline, softmax) on the ``[B, H, W]`` map ``attr``: its
    curves ``[B, K]`` (integrated by the caller: Quantus 0.6's own AUC calls np.trapz, which numpy 2.4
    removed). ``step`` counts elements, as Quantus does; ``pixel_steps=True`` runs ``step`` pixels (all
    channels) per step, with the H·W check lifted (:func:`_step_check_lifted`)."""
    try:
        import quantus
    except ImportError:
        return None

    elements = step * x.shape[1] if pixel_steps else step
    metric = quantus.PixelFlipping(features_in_step=elements, perturb_baseline="black", normalise=False,
                                   return_auc_per_sample=False, disable_warnings=True)
    x_np, y_np, a_np = x.cpu().numpy(), y.cpu().numpy(), attr.unsqueeze(1).cpu().numpy()

    def run():
        with _step_check_lifted(quantus) if pixel_steps else contextlib.nullcontext():
            return np.asarray(metric(model=model, x_batch=x_np, y_batch=y_np, a_batch=a_np,
                                     device=str(x.device), softmax=True))

    return run


FLOOR_BATCHES = (8, 16, 24, 32, 40, 48, 64, 96, 128, 256, 512, 1024)


def forward_floor(model: Callable, shape: tuple, n_inputs: int, device: torch.device, *,
                  sizes: Sequence[int] = FLOOR_BATCHES, search_inputs: Optional[int] = None,
                  repeat: int = 5) -> tuple[Callable[[], None], int]:
    """The model-only floor: a plain forward over ``n_inputs`` distinct inputs of ``shape`` (a pool of at
    most 4096, reused cyclically) in batches of the size (among ``sizes``) that runs fastest, searched
    round-robin over ``search_inputs`` inputs (all of them by default). Sizes that run out of memory
    are left out. Returns ``(run, best size)``."""
    sizes = [bs for bs in sizes if bs <= n_inputs] or [n_inputs]
    n_pool = min(n_inputs, max(4096, max(sizes)))
    pool = torch.rand((n_pool,) + tuple(shape), generator=torch.Generator().manual_seed(3)).to(device)

    def forward_all(bs, n=n_inputs):
        with torch.no_grad():
            for i in range(0, n, bs):
                start = i % (n_pool - bs + 1)
                model(pool[start:start + min(bs, n - i)])

    usable = []
    for bs in sizes:
        try:
            forward_all(bs, bs)
            usable.append(bs)
        except RuntimeError as error:  # torch.cuda.OutOfMemoryError is one
            if not is_out_of_memory(error):
                raise
            torch.cuda.empty_cache()
    n_search = min(n_inputs, search_inputs or n_inputs)
    search, _ = time_interleaved({bs: (lambda bs=bs: forward_all(bs, n_search)) for bs in usable}, device,
                                 repeat=repeat)
    best = min(search, key=search.get)
    return (lambda: forward_all(best)), best


QUANTUS_ELEMENT_STEPS = "quantus PixelFlipping (deletion, its element steps)"
QUANTUS_PIXEL_STEPS = "quantus PixelFlipping (deletion, the same pixel steps)"
DROP_IN = "fastattr PixelFlipping drop-in (quantus's element steps)"


def run(n_images: int = 8, steps: int = 64, device: Optional[str] = None, repeat: int = 5) -> Table:
    """Table 1. Every deletion row uses Quantus's "black" baseline (each image's minimum), so fastattr's
    64-step curve and Quantus's pixel-step curve are the same curve, checked before timing."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = vgg_style().to(device)
    x = torch.rand(n_images, 3, 64, 64, generator=torch.Generator().manual_seed(2)).to(device)
    y = model(x).argmax(1)
    attr = saliency(model, x, y).sum(1)
    black = x.amin(dim=(1, 2, 3), keepdim=True)
    step = (64 * 64) // steps
    n_inputs = 2 * n_images * (steps + 1)
    floor, best_bs = forward_floor(model, (3, 64, 64), n_inputs, device)
    impls = {
        "model-only floor": floor,
        "fastattr insertion + deletion": lambda: (insertion(model, x, attr, y, step=step, baseline=black),
                                                  deletion(model, x, attr, y, step=step, baseline=black)),
        "fastattr deletion": lambda: deletion(model, x, attr, y, step=step, baseline=black),
    }
    by_elements = _quantus_deletion(model, x, y, attr, step)
    if by_elements is not None:
        from ..integrations.quantus import PixelFlipping

        by_pixels = _quantus_deletion(model, x, y, attr, step, pixel_steps=True)
        _, curve, _ = deletion(model, x, attr, y, step=step, baseline=black, curves=True)
        gap = np.abs(by_pixels() - curve[:, 1:].cpu().numpy()).max()
        if gap > (1e-5 if device.type == "cpu" else 1e-4):  # cuDNN may pick TF32 kernels per batch size
            raise RuntimeError(f"quantus's pixel-step curve differs from fastattr's deletion curve by {gap}")
        impls[QUANTUS_ELEMENT_STEPS] = by_elements
        impls[QUANTUS_PIXEL_STEPS] = by_pixels
        drop_in = PixelFlipping(features_in_step=step, perturb_baseline="black", normalise=False)
        x_np, y_np, a_np = x.cpu().numpy(), y.cpu().numpy(), attr.unsqueeze(1).cpu().numpy()
        impls[DROP_IN] = lambda: drop_in(model, x_np, y_np, a_np, device=str(x.device))
    times, vs_floor = time_interleaved(impls, device, repeat=repeat)
    table = Table(
        name=f"insertion + deletion, VGG-style CNN 3x64x64, {n_images} images, {steps} steps each, "
             f"{device.type}",
        columns=["implementation", "ms", "time / floor", "speed-up vs quantus, same steps",
                 "speed-up vs quantus, its element steps"],
        machine=machine_info(device),
        params={"n_images": n_images, "steps": steps, "inputs": n_inputs, "floor_batch": best_bs,
                "repeat": repeat, "device": str(device)},
    )
    same = {"fastattr deletion": QUANTUS_PIXEL_STEPS, QUANTUS_PIXEL_STEPS: QUANTUS_PIXEL_STEPS,
            DROP_IN: QUANTUS_ELEMENT_STEPS, QUANTUS_ELEMENT_STEPS: QUANTUS_ELEMENT_STEPS}
    for name, t in times.items():
        vs_same = vs_floor[same[name]] / vs_floor[name] if name in same and same[name] in times else "-"
        vs_elements = (vs_floor[QUANTUS_ELEMENT_STEPS] / vs_floor[name]
                       if QUANTUS_ELEMENT_STEPS in times and name in same else "-")
        table.add(name, t * 1e3, vs_floor[name], vs_same, vs_elements)
    table.notes.append(f"floor: plain forward over the same {n_inputs} inputs at its best batch size "
                       f"({best_bs}); {repeat} interleaved rounds; torch threads = {torch.get_num_threads()}; "
                       "baseline: each image's minimum (quantus's \"black\")")
    if QUANTUS_ELEMENT_STEPS in times:
        n_quantus = -(-x[0].numel() // step)
        table.notes.append(
            f"quantus counts features_in_step in elements and asserts that it divides H·W: "
            f"features_in_step={step} makes {n_quantus} steps of {step} elements (its element steps; the "
            f"drop-in row runs the same); features_in_step={3 * step} with that check lifted makes "
            f"{steps} steps of {step} pixels, the same curve as fastattr's (checked to 1e-5)")
    else:
        table.notes.append("quantus not installed: pip install quantus for the peer rows")
    return table


def _restore_from(x_flat: np.ndarray):
    """A Quantus ``perturb_func`` that puts ``x``'s values back at the indices: PixelFlipping started
    from the baseline image then traces the insertion curve (Quantus 0.6 has no insertion metric)."""

    def restore(arr, indices, **kwargs):
        out = arr.copy()
        rows = np.arange(arr.shape[0])[:, None]
        out[rows, indices] = x_flat[rows, indices]
        return out

    return restore


def _quantus_suite(quantus, model, x, y, attrs, *, step, n_subsets, subset_size, patch, device):
    """Quantus, method by method: deletion (PixelFlipping), insertion (PixelFlipping from the baseline,
    restoring x), Infidelity (one patch size, one sample: its default baseline is fixed), faithfulness
    correlation and Sensitivity-N, every one with the 0 baseline and no normalisation."""
    common = dict(perturb_baseline=0.0, normalise=False, disable_warnings=True)
    x_np, y_np = x.cpu().numpy(), y.cpu().numpy()
    start = np.zeros_like(x_np)
    metrics = [
        (quantus.PixelFlipping(features_in_step=step, **common), x_np, True),
        (quantus.PixelFlipping(features_in_step=step, perturb_func=_restore_from(x_np.reshape(len(x_np), -1)),
                               **common), start, True),
        (quantus.Infidelity(perturb_patch_sizes=[patch], n_perturb_samples=1, **common), x_np, False),
        (quantus.FaithfulnessCorrelation(nr_runs=n_subsets, subset_size=subset_size, return_aggregate=False,
                                         **common), x_np, False),
        (quantus.SensitivityN(features_in_step=step, return_aggregate=False, **common), x_np, True),
    ]

    def run(counted):
        np.random.seed(0)
        return {name: [m(model=counted, x_batch=xb, y_batch=y_np, a_batch=a.cpu().numpy(), softmax=sm,
                         device=device) for m, xb, sm in metrics] for name, a in attrs.items()}

    return run


def _drop_in_suite(model, x, y, attrs, *, step, n_subsets, subset_size, patch, device):
    """Quantus's definitions through fastattr's drop-in (insertion: fastattr.metrics.insertion)."""
    from ..integrations import quantus as fq

    common = dict(perturb_baseline=0.0, normalise=False)
    metrics = [fq.PixelFlipping(features_in_step=step, **common),
               fq.Infidelity(perturb_patch_sizes=[patch], n_perturb_samples=1, **common),
               fq.FaithfulnessCorrelation(nr_runs=n_subsets, subset_size=subset_size, return_aggregate=False,
                                          **common),
               fq.SensitivityN(features_in_step=step, return_aggregate=False, **common)]
    x_np, y_np = x.cpu().numpy(), y.cpu().numpy()

    def run(counted):
        return {name: [m(counted, x_np, y_np, a.cpu().numpy(), device=device) for m in metrics]
                + [insertion(counted, x, a, y, step=step)] for name, a in attrs.items()}

    return run


def run_evaluate(n_images: int = 8, step: int = 128, n_subsets: int = 128, ns=(64, 512, 4096), patch: int = 8,
                 device: Optional[str] = None, repeat: int = 3, methods=EVALUATE_METHODS) -> Table:
    """``fastattr.evaluate`` (5 methods × 5 metrics, shared passes) against Quantus method by method.

    Per-element attribution maps (the methods' own output, as Quantus ranks elements), ``step``
    elements per deletion / insertion step for both libraries, ``n_subsets`` random subsets of 20%
    of the elements for faithfulness correlation (and fastattr's subset infidelity, which reuses
    them), ``ns`` subset sizes for fastattr's Sensitivity-N; Quantus's Infidelity with ``patch``-sized
    patches, Quantus's Sensitivity-N with ``step`` elements per step."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = vgg_style().to(device)
    x = torch.rand(n_images, 3, 64, 64, generator=torch.Generator().manual_seed(2)).to(device)
    y = model(x).argmax(1)
    attrs = {name: METHODS[name](model, x, y).detach() for name in methods}
    n_el = x[0].numel()
    subset_size = round(0.2 * n_el)
    ns = [n for n in ns if n <= n_el]
    settings = dict(step=step, n_subsets=n_subsets, subset_size=subset_size, patch=patch, device=str(device))
    counted, impls = {}, {}

    def add(name, run):
        def timed():
            counted[name] = CountingModel(model)  # a fresh count per run; the last run's is reported
            run(counted[name])
        impls[name] = timed

    run_fastattr = lambda m: evaluate(  # noqa: E731
        m, x, y, attributions=attrs, metrics=EVALUATE_METRICS, n_subsets=n_subsets, ns=ns, step=step,
        subset_fraction=subset_size / n_el, generator=0)
    n_fastattr = run_fastattr(CountingModel(model)).forward_inputs
    floor, best_bs = forward_floor(model, tuple(x.shape[1:]), n_fastattr, device, sizes=(8, 16, 32, 64),
                                   search_inputs=1024, repeat=3)
    impls["model-only floor (fastattr's inputs)"] = floor
    add("fastattr.evaluate", run_fastattr)
    q = "quantus, method by method"
    try:
        import quantus
    except ImportError:
        quantus = None
    if quantus is not None:
        add(q, _quantus_suite(quantus, model, x, y, attrs, **settings))
        add("fastattr.integrations.quantus (quantus's definitions)",
            _drop_in_suite(model, x, y, attrs, **settings))
    rounds = min(repeat, 3)
    times, ratios = time_interleaved(impls, device, repeat=rounds, warmup=0)
    table = Table(
        name=f"evaluate: {len(attrs)} methods x {len(EVALUATE_METRICS)} metrics, VGG-style CNN 3x64x64, "
             f"{n_images} images, {device.type}",
        columns=["implementation", "ms", "forward calls", "forward inputs", "speed-up vs quantus"],
        machine=machine_info(device),
        params={"n_images": n_images, "methods": list(attrs), "metrics": list(EVALUATE_METRICS), "step": step,
                "n_subsets": n_subsets, "subset_size": subset_size, "ns": ns,
                "quantus_infidelity_patch": patch, "repeat": rounds, "device": str(device)},
    )
    for name, t in times.items():
        speedup = ratios[q] / ratios[name] if q in ratios else "-"
        calls, inputs = (counted[name].calls, counted[name].inputs) if name in counted else ("-", n_fastattr)
        table.add(name, t * 1e3, calls, inputs, speedup)
    table.notes.append(f"{rounds} interleaved rounds (no warm-up round; each is long); torch threads = "
                       f"{torch.get_num_threads()}; floor: plain forward over fastattr's {n_fastattr} inputs "
                       f"at the best of batch sizes 8-64 ({best_bs}), its quantus column the largest speed-up "
                       "possible at fastattr's forward count")
    if q in times:
        table.notes += [
            "same definitions in both: deletion, insertion (quantus: PixelFlipping from the 0 image "
            "restoring x, as quantus 0.6 has no insertion), faithfulness correlation (same subset size and "
            "count)",
            "different definitions: infidelity (fastattr: random 20% subsets, reusing the correlation's "
            f"passes; quantus: cumulative {patch}x{patch} patches in raster order), Sensitivity-N (fastattr: "
            f"random subsets of sizes {ns}; quantus: ranked deletion, correlation across the batch); the "
            "drop-in row runs quantus's definitions (its insertion: fastattr.metrics.insertion)"]
    else:
        table.notes.append("quantus not installed: pip install quantus for the peer rows")
    return table


STABILITY_CLASSES = {"input": "RelativeInputStability", "output": "RelativeOutputStability",
                     "representation": "RelativeRepresentationStability"}


class _ForwardCount:
    """Counts a model's forward calls and inputs with a forward pre-hook (removed by :meth:`close`), so
    the model keeps its own structure: Quantus reads the hidden layers of the module it is given."""

    def __init__(self, model: torch.nn.Module):
        self.calls = self.inputs = 0
        self._handle = model.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1
        self.inputs += args[0].shape[0]

    def close(self) -> None:
        self._handle.remove()


def _quantus_explain(name: str) -> Callable:
    """A Quantus ``explain_func`` running the fastattr method ``name`` (numpy in and out)."""
    def explain(model, inputs, targets, **kwargs):
        device = next(model.parameters()).device
        x = torch.as_tensor(inputs, dtype=torch.float32, device=device)
        return METHODS[name](model, x, torch.as_tensor(targets, device=device)).detach().cpu().numpy()

    return explain


def run_stability(n_images: int = 8, n_samples: int = 50, device: Optional[str] = None, repeat: int = 3,
                  methods=EVALUATE_METHODS) -> Table:
    """Relative input / output / representation stability of ``methods`` (their maps as ``e(x)``), every
    hidden layer as the representation (Quantus's default), Quantus's noise ``U[0.02, 0.2]`` and NaN on
    a prediction flip: fastattr's one shared call against Quantus's three metrics per method."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = vgg_style().to(device)
    x = torch.rand(n_images, 3, 64, 64, generator=torch.Generator().manual_seed(2)).to(device)
    y = model(x).argmax(1)
    attrs = {name: METHODS[name](model, x, y).detach() for name in methods}
    counts: dict[str, _ForwardCount] = {}

    def counted(name: str, run: Callable[[], object]) -> Callable[[], None]:
        def timed():  # a fresh count per run; the last run's is reported
            counts[name] = _ForwardCount(model)
            try:
                run()
            finally:
                counts[name].close()
        return timed

    impls = {"fastattr relative_stability, one call": counted("fastattr relative_stability, one call", lambda: (
        relative_stability(model, x, {name: name for name in methods}, y, n_samples=n_samples, attributions=attrs,
                           generator=0)))}
    q = "quantus, 3 metrics per method"
    try:
        import quantus
    except ImportError:
        quantus = None
    if quantus is not None:
        x_np, y_np = x.cpu().numpy(), y.cpu().numpy()
        metrics = [getattr(quantus, cls)(nr_samples=n_samples, disable_warnings=True)
                   for cls in STABILITY_CLASSES.values()]

        def run_quantus():
            np.random.seed(0)
            return {name: [m(model=model, x_batch=x_np, y_batch=y_np, a_batch=attrs[name].cpu().numpy(),
                             explain_func=_quantus_explain(name), device=str(device)) for m in metrics]
                    for name in methods}

        impls[q] = counted(q, run_quantus)
    times, ratios = time_interleaved(impls, device, repeat=repeat, warmup=0)
    table = Table(
        name=f"relative input + output + representation stability: {len(methods)} methods, VGG-style CNN 3x64x64, "
             f"{n_images} images, {n_samples} samples, {device.type}",
        columns=["implementation", "ms", "forward calls", "forward inputs", "speed-up vs quantus"],
        machine=machine_info(device),
        params={"n_images": n_images, "n_samples": n_samples, "methods": list(methods),
                "kinds": list(STABILITY_CLASSES), "repeat": repeat, "device": str(device)},
    )
    for name, t in times.items():
        table.add(name, t * 1e3, counts[name].calls, counts[name].inputs,
                  ratios[q] / ratios[name] if q in ratios else "-")
    table.notes.append(f"{repeat} interleaved rounds (no warm-up round; each is long), ratio: median of per-round "
                       f"ratios; torch threads = {torch.get_num_threads()}; model calls counted with a forward "
                       "hook, the explain methods' own included")
    if q in times:
        table.notes.append("same definitions in both (tests/integrations/test_quantus_stability.py: equal on replayed "
                           f"noise); fastattr: one set of perturbations for the {len(methods)} methods and 3 kinds, one "
                           "forward per chunk for h, L and the prediction flips; quantus: per method and metric its "
                           "own perturbations and per sample one explain call, the logits' or the representation's "
                           "forward (ROS, RRS) and two prediction forwards (x and x')")
    else:
        table.notes.append("quantus not installed: pip install quantus for the peer row")
    return table


def resnet_insertion(n_images: int = 16, steps: int = 224, size: int = 224, device: str = "cuda",
                     repeat: int = 5, arch: Callable[..., torch.nn.Module] = resnet50) -> Table:
    """Insertion on a ResNet (random weights, eval mode): images/s against the model's own forward
    throughput at its best batch size, and against Quantus.

    Saliency summed over the channels ranks the pixels; ``steps`` steps of ``size²/steps`` pixels
    (224 steps of one row's worth for 224², Petsiuk et al.'s protocol) from the 0 image. Quantus 0.6
    has no insertion metric: ``PixelFlipping`` started from the 0 image, putting x back in the same
    order, traces the curve (as in :func:`run_evaluate`); it counts its step in elements, so it runs
    3× the steps, and the comparison is in model inputs per second."""
    device = torch.device(device)
    model = arch().to(device).eval()
    x = torch.rand(n_images, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    attr = saliency(model, x, y).detach().sum(1)
    if (size * size) % steps:
        raise ValueError(f"steps ({steps}) must divide the {size * size} pixels of an input")
    step = size * size // steps
    floor, best_bs = forward_floor(model, tuple(x.shape[1:]), n_images * (steps + 1), device,
                                   sizes=(16, 32, 64, 128, 256, 512), repeat=3)
    runs = {"fastattr insertion": lambda m: insertion(m, x, attr, y, step=step)}
    try:
        import quantus
    except ImportError:
        quantus = None
    q = "quantus PixelFlipping from the 0 image (insertion)"
    if quantus is not None:
        x_np, y_np = x.cpu().numpy(), y.cpu().numpy()
        metric = quantus.PixelFlipping(features_in_step=step, perturb_baseline=0.0, normalise=False,
                                       perturb_func=_restore_from(x_np.reshape(n_images, -1)),
                                       disable_warnings=True)
        start, a_np = np.zeros_like(x_np), attr.unsqueeze(1).cpu().numpy()
        runs[q] = lambda m: metric(model=m, x_batch=start, y_batch=y_np, a_batch=a_np, softmax=True,
                                   device=str(device))
    inputs = {"model-only floor": n_images * (steps + 1)}
    for name, fn in runs.items():  # one counted call each: the model inputs behind the rates
        counted = CountingModel(model)
        fn(counted)
        inputs[name] = counted.inputs
    impls = {"model-only floor": floor, **{name: (lambda fn=fn: fn(model)) for name, fn in runs.items()}}
    times, vs_floor = time_interleaved(impls, device, repeat=repeat)
    # throughput relative to the floor, from per-round time ratios
    relative = {name: inputs[name] / inputs["model-only floor"] / vs_floor[name] for name in times}
    table = Table(
        name=f"insertion, {arch.__name__} {size}x{size}, {n_images} images, {steps} steps, {device.type}",
        columns=["implementation", "ms", "model inputs", "images/s", "fraction of forward throughput",
                 "throughput vs quantus"],
        machine=machine_info(device),
        params={"arch": arch.__name__, "n_images": n_images, "steps": steps, "size": size,
                "inputs": n_images * (steps + 1), "floor_batch": best_bs, "device": str(device),
                "repeat": repeat},
    )
    for name, t in times.items():
        vs_quantus = relative[name] / relative[q] if q in times else "-"
        table.add(name, t * 1e3, inputs[name], inputs[name] / t, relative[name], vs_quantus)
    table.notes.append(f"images/s = model inputs per second (counted by wrapping the model); floor: plain "
                       f"forward at its best batch size ({best_bs}); {repeat} interleaved rounds, ratios from "
                       "the medians of per-round time ratios")
    if quantus is None:
        table.notes.append("quantus not installed: pip install quantus for the peer row")
    else:
        table.notes.append(f"quantus counts features_in_step={step} in elements: "
                           f"{x[0].numel() // step} steps against fastattr's {steps}")
    return table


def gpu_tables(device: Optional[str] = None, repeat: int = 5) -> list[Table]:
    """The ResNet-50 insertion case (224², 16 images, 224 steps) when CUDA is there; otherwise a note."""
    device = cuda_or_note(device, "ResNet-50 insertion benchmark")
    return [] if device is None else [resnet_insertion(device=device, repeat=repeat)]


#: the tables of ``fastattr bench metrics``, by the names ``--tables`` picks
TABLES: dict[str, Callable[..., list[Table]]] = {
    "flipping": lambda device, repeat: [run(device=device, repeat=repeat)],
    "evaluate": lambda device, repeat: [run_evaluate(device=device, repeat=repeat)],
    "stability": lambda device, repeat: [run_stability(device=device, repeat=min(repeat, 3))],
    "impute": lambda device, repeat: [road.impute_table(device, repeat=min(repeat, 3))],
    "road": lambda device, repeat: [road.road_table(device, repeat=min(repeat, 3))],
    "resnet": gpu_tables,
}


def default_tables(device: Optional[str] = None, repeat: int = 5, tables: Optional[Sequence[str]] = None) -> list[Table]:
    """Every table of :data:`TABLES`, or those named in ``tables``, in that order."""
    out = []
    for name in tables or TABLES:
        out += TABLES[name](device, repeat)
    return out
