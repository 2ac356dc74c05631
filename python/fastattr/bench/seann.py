"""``fastattr bench seann`` (issue 19): SEA-NN's two loops against the released code's procedure
(github.com/Piyushi-0/SEA-NN, ``submod.py`` and ``dsf.py``), which runs one image at a time on a float64
DSF and, at every greedy step, scores all ``A ∪ {v}`` from scratch through the whole network (an
``n × n`` indicator matrix into the first layer) and copies the scores to the host:

- ``greedy``: Algorithm 1 on a 784-cell grid (28 × 28) for B DSFs — :meth:`DeepSubmodular.greedy`, all DSFs
  at once with the ``greedy_gains`` op (rank-1 first layer, only the open candidates), against that loop;
- ``training``: Eq. 2 for B images — :meth:`DeepSubmodular.fit` (a batch of DSFs) against the released
  training loop (per image: float64, the from-scratch greedy to ``max B_i^j`` every epoch, one forward per
  threshold and per map), and against :meth:`fit` called one image at a time;
- ``op``: the ``greedy_gains`` op against its reference;
- ``reproduction``: SEA-NN against the maps it ensembles and their mean on held-out digits (MDRS, AUPC).

The released-code loops are timed on ``baseline_images`` of the B DSFs (medians of ``repeat`` runs) and
scaled to B (they are loops over images, linear in B); the table says so. The DSFs are trained first on
generated heat maps (smooth blobs).
"""
from __future__ import annotations

import statistics
from typing import Optional, Sequence

import torch

from ..attribution import METHODS, DeepSubmodular, sea_nn, sea_nn_inputs
from ..metrics import aupc, mdrs
from ..ops import greedy_gains
from ..zoo import load_digits, load_digits_cnn
from . import Table, machine_info, time_interleaved, time_median

TABLES = ("greedy", "training", "op", "reproduction")
PERCENTILES = (97, 97.5, 98, 98.5, 99, 99.5)


def blob_maps(batch: int, m: int = 3, side: int = 28, seed: int = 0) -> torch.Tensor:
    """``[batch, m, side, side]`` smooth non-negative maps: three Gaussian blobs each, seeded."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32),
                            indexing="ij")
    params = torch.rand(batch, m, 3, 4, generator=g)
    cy, cx = params[..., 0, None, None] * side, params[..., 1, None, None] * side
    width = 1 + 3 * params[..., 2, None, None]
    blobs = params[..., 3, None, None] * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width ** 2))
    return blobs.sum(2)


def _dsf_forward(layers: Sequence[tuple[torch.Tensor, torch.Tensor]], sets: torch.Tensor) -> torch.Tensor:
    """The released code's DSF forward on a batch of sets ``[K, n]``: ``u ↦ √(u W + c)`` per layer, the last
    without the root; returns ``[K, 1]``."""
    u = sets
    for i, (W, c) in enumerate(layers):
        u = u @ W + c
        if i < len(layers) - 1:
            u = torch.sqrt(u)
    return u


def _released_dsf(dsf: DeepSubmodular, b: int):
    """DSF ``b`` of the batch as the released code holds it: float64 layers, ``f`` on a batch of sets."""
    layers = [(dsf.columns[b].detach().double(), dsf.bias[b].detach().double())]
    layers += [(W[b].detach().double(), c[b].detach().double()) for W, c in zip(dsf.weights, dsf.biases)]
    return (lambda sets: _dsf_forward(layers, sets)), layers


def released_greedy(f, n: int, budget: int) -> list[int]:
    """``submod.sea_nn`` / ``c_sb_mx`` of the released code: all ``n`` sets ``A ∪ {v}`` scored from scratch each
    step, the scores copied to the host, the first argmax added while it improves ``f``."""
    x = torch.eye(n, dtype=torch.float64)
    best = f(torch.zeros(1, n, dtype=torch.float64)).item()
    picks = []
    for _ in range(budget):
        outputs = f(x.t()).cpu().detach().numpy().reshape(-1)
        v = int(outputs.argmax())
        if outputs[v] <= best:
            break
        best = float(outputs[v])
        x[v, :] = 1
        picks.append(v)
    return picks


def released_training(dsf: DeepSubmodular, b: int, heat: torch.Tensor, binary: torch.Tensor, epochs: int,
                      lr: float, lambdas: Sequence[float], delta: float) -> None:
    """The released training loop for image ``b`` (``dsf.py``): float64 parameters, per epoch the
    from-scratch greedy to the largest threshold, then one forward per threshold set and per map."""
    _, layers = _released_dsf(dsf, b)
    params = [t.clone().requires_grad_() for pair in layers for t in pair]
    n = heat.shape[-1]
    lam, lam1, lam2 = lambdas
    optimiser = torch.optim.Adam(params, lr=lr)
    sizes = binary[b].sum(-1)  # [m, k]
    budget = int(sizes.max())

    def f(sets):
        return _dsf_forward(list(zip(params[::2], params[1::2])), sets)[:, 0]

    for _ in range(epochs):
        with torch.no_grad():
            picks = released_greedy(lambda s: f(s).unsqueeze(1), n, budget)
        loss = 0.5 * lam * sum((p * p).sum() for p in params)
        top = f(torch.ones(1, n, dtype=torch.float64))
        for i in range(heat.shape[1]):
            loss = loss + lam1 * (top - f(heat[b, i:i + 1].double())).sum()
            for j in range(binary.shape[2]):
                chosen = torch.zeros(1, n, dtype=torch.float64)
                chosen[0, picks[:int(sizes[i, j])]] = 1
                loss = loss + lam2 * torch.relu(delta + f(chosen) - f(binary[b, i, j:j + 1].double())).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            for p in params:
                p.clamp_(min=0)


def _setup(batch: int, device, side: int = 28, hidden: Sequence[int] = (512, 256, 32)):
    maps = blob_maps(batch, side=side)
    n = side * side
    heat, binary, _ = sea_nn_inputs(maps, torch.arange(n).reshape(1, side, side).expand(batch, -1, -1), side,
                                    PERCENTILES)
    dsf = DeepSubmodular(n, hidden, batch=batch, generator=0, device=device)
    dsf.fit(heat.to(device), binary.to(device), epochs=3, lr=1e-2)
    return dsf, heat, binary


def greedy_table(repeat: int = 3, device: Optional[str] = None, batch: int = 16, baseline_images: int = 2,
                 side: int = 28, hidden: Sequence[int] = (512, 256, 32)) -> Table:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n = side * side
    table = Table(name=f"seann greedy: Algorithm 1 on {n} cells, B = {batch} DSFs ({'-'.join(map(str, hidden))}), "
                       f"{device.type}",
                  columns=["implementation", "s for B maps", "speed-up"], machine=machine_info(device),
                  params={"repeat": repeat, "device": str(device), "batch": batch, "baseline_images": baseline_images,
                          "side": side, "hidden": list(hidden)})
    dsf, _, _ = _setup(batch, device, side, hidden)
    fast = time_median(lambda: dsf.greedy(), device, repeat=repeat, warmup=0)
    order, _ = dsf.greedy()
    released = []
    for b in range(baseline_images):
        f, _ = _released_dsf(dsf.cpu() if device.type != "cpu" else dsf, b)
        released.append(time_median(lambda: released_greedy(f, n, n), repeat=repeat, warmup=0))
        picks = released_greedy(f, n, n)
        ours = order[b].tolist()
        step = next((i for i, (u, v) in enumerate(zip(picks, ours)) if u != v), None)
        if step is not None:  # how close the two candidates were, in the released code's float64
            sel = torch.zeros(1, n, dtype=torch.float64)
            sel[0, picks[:step]] = 1
            base = f(sel)[0, 0]
            gain = [float(f(sel.index_fill(1, torch.tensor([v]), 1.0))[0, 0] - base) for v in (picks[step], ours[step])]
            table.notes.append(f"DSF {b}: the picks agree for {step} steps; at step {step + 1} the released code's "
                               f"float64 gains of its pick and fastattr's (float32) differ by "
                               f"{abs(gain[0] - gain[1]) / abs(gain[0]):.1e} relative, below float32's resolution")
        elif len(picks) != n:
            table.notes.append(f"DSF {b}: the released greedy stopped after {len(picks)} picks")
    scaled = statistics.median(released) * batch
    table.add("released code: per image, from scratch, float64", scaled, 1.0)
    table.add("fastattr DeepSubmodular.greedy (batched, greedy_gains op)", fast, scaled / fast)
    table.notes.append(f"the released loop timed on {baseline_images} of the DSFs, {repeat} runs each (the median "
                       f"per image × {batch}); fastattr (float32, lazy greedy): median of {repeat} runs; torch "
                       f"threads = {torch.get_num_threads()}")
    return table


def training_table(repeat: int = 3, device: Optional[str] = None, batch: int = 16, epochs: int = 5,
                   baseline_images: int = 2, side: int = 28, hidden: Sequence[int] = (512, 256, 32)) -> Table:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n = side * side
    table = Table(name=f"seann training: Eq. 2 for B = {batch} images, {epochs} epochs, {n} cells, {device.type}",
                  columns=["implementation", "s for B images", "speed-up"], machine=machine_info(device),
                  params={"repeat": repeat, "device": str(device), "batch": batch, "epochs": epochs,
                          "baseline_images": baseline_images, "percentiles": list(PERCENTILES), "side": side,
                          "hidden": list(hidden)})
    _, heat, binary = _setup(batch, "cpu", side, hidden)
    kw = dict(epochs=epochs, lr=1e-2, lambdas=(1e-5, 10.0, 0.01), delta=1e-6)

    def batched():
        dsf = DeepSubmodular(n, hidden, batch=batch, generator=1, device=device)
        dsf.fit(heat.to(device), binary.to(device), **kw)

    def one_by_one(images):
        def run():
            for b in range(images):
                dsf = DeepSubmodular(n, hidden, batch=1, generator=1, device=device)
                dsf.fit(heat[b:b + 1].to(device), binary[b:b + 1].to(device), **kw)
        return run

    fast = time_median(batched, device, repeat=repeat, warmup=0)
    alone = time_median(one_by_one(baseline_images), device, repeat=repeat, warmup=0) / baseline_images * batch
    start_dsf = DeepSubmodular(n, hidden, batch=batch, generator=1)
    released = [time_median(lambda b=b: released_training(start_dsf, b, heat, binary, **kw), repeat=repeat, warmup=0)
                for b in range(baseline_images)]
    scaled = statistics.median(released) * batch
    table.add("released code: per image, float64, from-scratch greedy", scaled, 1.0)
    table.add("fastattr DeepSubmodular.fit, one image at a time", alone, scaled / alone)
    table.add("fastattr DeepSubmodular.fit (a batch of DSFs)", fast, scaled / fast)
    table.notes.append(f"per-image rows timed on {baseline_images} images, {repeat} runs each, and scaled to {batch}; "
                       f"the batched row is the median of {repeat} runs; Adam lr 1e-2, λ = (1e-5, 10, 0.01), "
                       f"δ = 1e-6, percentiles {PERCENTILES} of generated blob maps; torch threads = "
                       f"{torch.get_num_threads()}")
    return table


def op_table(repeat: int = 3, device: Optional[str] = None, batch: int = 16, side: int = 28,
             hidden: Sequence[int] = (512, 256, 32)) -> Table:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n = side * side
    table = Table(name=f"seann op: greedy_gains for B = {batch} DSFs × {n} candidates ({'-'.join(map(str, hidden))}), "
                       f"{device.type}",
                  columns=["implementation", "ms", "speed-up"], machine=machine_info(device),
                  params={"repeat": repeat, "device": str(device), "batch": batch, "side": side,
                          "hidden": list(hidden)})
    dsf, _, _ = _setup(batch, device, side, hidden)
    g = torch.Generator().manual_seed(2)
    selected = (torch.rand(batch, n, generator=g) < 0.1).to(device)
    weights = [w.detach() for w in dsf.weights]
    biases = [b.detach() for b in dsf.biases]
    columns = dsf.columns.detach()
    z1 = torch.baddbmm(dsf.bias.detach().unsqueeze(1), selected.to(columns.dtype).unsqueeze(1), columns)[:, 0]
    impls = {"reference (float64, forward and subtract)": lambda: greedy_gains(
        z1, columns, weights, biases, selected, backend="reference"),
        "fused op": lambda: greedy_gains(z1, columns, weights, biases, selected)}
    times, _ = time_interleaved(impls, device, repeat=repeat, warmup=1)
    base = "reference (float64, forward and subtract)"
    for impl, s in times.items():
        table.add(impl, s * 1e3, times[base] / s)
    table.notes.append(f"{repeat} round-robin rounds, medians; torch threads = {torch.get_num_threads()}")
    return table


REPRODUCTION_METHODS = ("integrated_gradients", "deeplift", "input_x_gradient", "saliency", "guided_backprop")


def reproduction_table(n: int = 64, epochs: int = 100, lr: float = 1e-2, device: Optional[str] = None,
                       repeat: int = 1) -> Table:
    """SEA-NN on held-out digits in the paper's MNIST setting (single pixels, the DSF on the 8 × 8 grid),
    against each ensembled map and their mean: average MDRS and AUPC over the same pixels, zero baseline."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    percentiles = (80, 85, 90, 95)
    table = Table(name=f"seann reproduction: held-out digits, n = {n}, MDRS and AUPC (lower is better)",
                  columns=["method", "avg MDRS", "avg AUPC"], machine=machine_info(device),
                  params={"n": n, "epochs": epochs, "lr": lr, "percentiles": list(percentiles),
                          "methods": list(REPRODUCTION_METHODS)})
    model = load_digits_cnn().to(device)
    x, _ = load_digits("test", n)
    x = x.to(device)
    with torch.no_grad():
        t = model(x).argmax(1)
    maps = {}
    for name in REPRODUCTION_METHODS:
        maps[name] = METHODS[name](model, x, t).abs().sum(1)
    scaled = [m / m.flatten(1).amax(1).clamp(min=1e-30).view(-1, 1, 1) for m in maps.values()]
    maps["mean of the five (Agg-Mean)"] = torch.stack(scaled).mean(0)
    maps["SEA-NN"] = sea_nn(model, x, t, methods=list(REPRODUCTION_METHODS), segments=None, grid=8,
                            percentiles=percentiles, epochs=epochs, lr=lr)
    for name, heat in maps.items():
        attribution = heat.unsqueeze(1)
        table.add(name, float(mdrs(model, x, attribution, t).mean()), float(aupc(model, x, attribution, t).mean()))
    table.notes.append(f"the digits CNN's predictions as targets; MDRS / AUPC remove single pixels (set to 0) in the "
                       f"map's order; SEA-NN: DSF 512-256-32, Adam lr {lr}, {epochs} epochs, percentiles "
                       f"{percentiles}, λ = (1e-5, 10, 0.01), δ = 1e-6")
    return table


def default_tables(device: Optional[str] = None, repeat: int = 3, tables: Sequence[str] = TABLES) -> list[Table]:
    makers = {"greedy": lambda: greedy_table(repeat=repeat, device=device),
              "training": lambda: training_table(repeat=repeat, device=device),
              "op": lambda: op_table(repeat=repeat, device=device),
              "reproduction": lambda: reproduction_table(device=device)}
    return [makers[name]() for name in tables]
