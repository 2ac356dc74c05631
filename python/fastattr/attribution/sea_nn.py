"""SEA-NN (SPEC §7; Manupriya et al., "Improving attribution methods by learning submodular functions",
§3 and supplement S2–S4): a deep submodular function (DSF) learned per image from ``m`` attribution maps,
then an attribution by greedy marginal gains.

- Pre-processing (§3.2 "Scaling to high-dimensional images"): each map ``|φ|`` summed over channels and
  scaled to [0, 1]; every segment (Felzenszwalb, or the given labels, or single pixels) scored by the mean
  of its pixels (the "normalised sum": the sum over the segment divided by its size, as XRAI's density),
  scaled to [0, 1]; (a) that segmented map averaged over a ``grid × grid`` partition of the image,
  scaled to [0, 1] (the heat maps ``H_i``), and (b) the segmented map thresholded at each percentile
  and sub-sampled (a cell is 1 when it holds at least the average count of selected pixels per cell,
  as the released code does) — the binary maps ``H_i^j`` with ``B_i^j`` ones.
- The DSF ``f(x) = W_L g(… g(W_1 x + b_1) …) + b_L`` over ``n = grid²`` features, all weights ≥ 0
  (projected after each step), ``g`` = sqrt (or log1p), initialised ``U(init)``; trained by Adam on Eq. 2

      ``λ/2 ‖w‖² + λ₁ Σ_i (f(1) − f(H_i)) + λ₂ Σ_ij (δ + f(Ā_i^j) − f(H_i^j))⁺``,

  ``Ā_i^j`` the first ``B_i^j`` greedy picks (one greedy run to ``max B_i^j`` per epoch).
- Algorithm 1: greedy maximisation of ``f``, the attribution of a cell the gain ``f(v | A)`` it had when
  picked, normalised to sum 1, and repeated over the cell's pixels.

All images train and select together as a batch of DSFs (each its own weights and Adam state: the same
result as one at a time). Gains come from the ``greedy_gains`` op (rank-1 first-layer update, difference
propagation); the lazy greedy re-scores the open candidates in the order of their last gains (upper
bounds by submodularity) and stops where no bound can reach the best gain found, so its picks are the plain
greedy's (on trained 784-cell DSFs it evaluates about 55–60 % of the candidates).
"""
from __future__ import annotations

import numbers
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..core import Target, check_count, check_inputs, check_number, example_draws, model_entry, resolve_clean
from ..ops import greedy_gains
from ..ops.greedy_gains import activation as _activation
from .aggregate import explainers, map_batch

__all__ = ["DeepSubmodular", "sea_nn", "sea_nn_inputs"]

ACTIVATIONS = ("sqrt", "log1p")


class DeepSubmodular(nn.Module):
    """A batch of ``batch`` deep submodular functions on ``n_features`` (Dolhansky & Bilmes 2016; SEA-NN S2):
    ``f(x) = W_L g(… g(W_1 x + b_1) …) + b_L`` with ``hidden`` widths, all weights and biases ≥ 0 and
    ``g`` = ``"sqrt"`` or ``"log1p"`` (concave, monotone), so ``f`` restricted to ``{0, 1}^n`` is monotone
    submodular. Parameters drawn ``U(init)`` from ``generator`` (a seed or generator, or one per DSF, so that
    a DSF starts the same whatever batch it is in); the first layer is stored as its
    columns, ``columns[b, v] = W_1[:, v]``, the others ``[batch, h_in, h_out]`` (applied as ``u W + b``).

    Example::

        >>> dsf = fastattr.DeepSubmodular(64, (32, 16), batch=4)
        >>> order, gains = dsf.greedy(10)          # [4, 10] picks and their marginal gains
    """

    def __init__(self, n_features: int, hidden: Sequence[int] = (512, 256, 32), *, batch: int = 1,
                 activation: str = "sqrt", init: Sequence[float] = (2.0, 2.25), generator=0,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        n_features = check_count(n_features, "n_features")
        batch = check_count(batch, "batch")
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence) or not hidden:
            raise ValueError(f"hidden must be a non-empty sequence of layer widths, got {hidden!r}")
        hidden = tuple(check_count(h, "hidden") for h in hidden)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        low, high = _init_range(init)
        sample = example_draws(generator, batch, per="DSF")  # one per DSF: each drawn as it would be alone
        widths = (n_features,) + hidden + (1,)

        def draw(*shape):
            u = sample(torch.rand, shape, dtype=torch.float64)
            return nn.Parameter((low + (high - low) * u).to(dtype=dtype, device=device))

        self.activation, self.hidden = activation, hidden
        self.columns = draw(batch, n_features, hidden[0])
        self.bias = draw(batch, hidden[0])
        self.weights = nn.ParameterList([draw(batch, widths[i], widths[i + 1]) for i in range(1, len(widths) - 1)])
        self.biases = nn.ParameterList([draw(batch, widths[i + 1]) for i in range(1, len(widths) - 1)])

    @property
    def n_features(self) -> int:
        return self.columns.shape[1]

    @property
    def batch(self) -> int:
        return self.columns.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``f`` of each DSF at ``x`` ``[batch, m, n]`` (or ``[batch, n]``): returns ``[batch, m]`` (``[batch]``)."""
        if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3) or x.shape[0] != self.batch \
                or x.shape[-1] != self.n_features:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be [batch, m, n] or [batch, n] with batch = {self.batch} and n = "
                             f"{self.n_features}, got {got}")
        single = x.dim() == 2
        u = x.unsqueeze(1) if single else x
        u = _activation(torch.baddbmm(self.bias.unsqueeze(1), u.to(self.columns.dtype), self.columns),
                        self.activation)
        for i, (W, b) in enumerate(zip(self.weights, self.biases)):
            u = torch.baddbmm(b.unsqueeze(1), u, W)
            if i < len(self.weights) - 1:
                u = _activation(u, self.activation)
        out = u[..., 0]
        return out[:, 0] if single else out

    @torch.no_grad()
    def project(self) -> None:
        """Clamp every weight and bias at 0 (the projection of projected gradient descent)."""
        for p in self.parameters():
            p.clamp_(min=0)

    def _state(self, selected: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), selected.to(self.columns.dtype).unsqueeze(1), self.columns)[:, 0]

    @torch.no_grad()
    def marginal_gains(self, selected: torch.Tensor, candidates: Optional[torch.Tensor] = None, *,
                       backend: Optional[str] = None) -> torch.Tensor:
        """``f(v | A)`` ``[batch, n]`` (or ``[batch, K]`` for ``candidates``) for the sets ``A`` given as
        ``selected`` ``[batch, n]`` (bool); 0 for ``v ∈ A``. Uses the ``greedy_gains`` op."""
        if not isinstance(selected, torch.Tensor) or selected.dtype != torch.bool \
                or selected.shape != (self.batch, self.n_features):
            got = (tuple(selected.shape), selected.dtype) if isinstance(selected, torch.Tensor) \
                else type(selected).__name__
            raise ValueError(f"selected must be a bool tensor [{self.batch}, {self.n_features}], got {got}")
        return self._gains(self._state(selected), selected, candidates, backend)

    def _gains(self, z1, selected, candidates, backend, bounds: Optional[torch.Tensor] = None):
        return greedy_gains(z1, self.columns.detach(), [w.detach() for w in self.weights],
                            [b.detach() for b in self.biases], selected, candidates, bounds=bounds,
                            activation=self.activation, backend=backend)

    def fit(self, heat: torch.Tensor, binary: torch.Tensor, *, epochs: int = 20, delta: float = 1e-6,
            lambdas: Sequence[float] = (1e-5, 10.0, 0.01), lr: float = 1e-3, lazy: bool = True,
            backend: Optional[str] = None) -> list[float]:
        """Train on SEA-NN's Eq. 2 (module docstring) from the heat maps ``heat`` ``[batch, m, n]`` in [0, 1] and
        the binary maps ``binary`` ``[batch, m, k, n]`` (:func:`sea_nn_inputs`): Adam on every DSF at once (each
        its own loss term and, Adam being per element, trained as it would be alone), the weights projected on
        ≥ 0 after each step, ``Ā_i^j`` the first ``B_i^j`` picks of one greedy run per epoch. Returns the losses."""
        epochs = check_count(epochs, "epochs", minimum=0)
        delta = check_number(delta, "delta")
        lam, lam1, lam2 = _lambdas(lambdas)
        lr = check_number(lr, "lr")
        if not isinstance(heat, torch.Tensor) or heat.dim() != 3 or heat.shape[0] != self.batch \
                or heat.shape[2] != self.n_features:
            raise ValueError(f"heat must be [batch, m, n] with batch = {self.batch}, n = {self.n_features}")
        if not isinstance(binary, torch.Tensor) or binary.dim() != 4 or binary.shape[:2] != heat.shape[:2] \
                or binary.shape[3] != self.n_features:
            raise ValueError(f"binary must be [batch, m, k, n] matching heat {tuple(heat.shape)}")
        batch, m, k, n = binary.shape
        binary = binary.bool()
        sizes = binary.sum(3)  # B_i^j, [B, m, k]
        budget = int(sizes.max()) if sizes.numel() else 0
        dtype, device = self.columns.dtype, self.columns.device
        ones = torch.ones((batch, 1, n), dtype=dtype, device=device)
        heat = heat.to(device, dtype)
        hard = binary.reshape(batch, m * k, n).to(device, dtype)
        sizes = sizes.reshape(batch, m * k, 1).to(device)
        # λ/2 ‖w‖² enters as Adam's weight decay (its gradient λw); the loss reported includes it.
        optimiser = torch.optim.Adam(self.parameters(), lr=lr, weight_decay=lam)
        rank_of = torch.arange(budget, device=device).expand(batch, budget)
        fixed = torch.cat([ones, heat, hard], 1)  # the sets scored every epoch: 1, H_i, H_i^j
        losses = []
        for _ in range(epochs):
            order, _ = self.greedy(budget, lazy=lazy, backend=backend)
            rank = torch.full((batch, n), n, dtype=torch.int64, device=device).scatter_(1, order, rank_of)
            greedy_sets = (rank.unsqueeze(1) < sizes).to(dtype)  # Ā_i^j
            with torch.enable_grad():
                values = self(torch.cat([fixed, greedy_sets], 1))  # one pass: [B, 1 + m + 2 m k]
                top, f_heat = values[:, :1], values[:, 1:1 + m]
                f_hard, f_greedy = values[:, 1 + m:1 + m + m * k], values[:, 1 + m + m * k:]
                loss = lam1 * (top - f_heat).sum() + lam2 * torch.relu(delta + f_greedy - f_hard).sum()
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
            with torch.no_grad():
                decay = 0.5 * lam * sum(float((p * p).sum()) for p in self.parameters()) if lam else 0.0
            optimiser.step()
            self.project()
            losses.append(float(loss.detach()) + decay)
        return losses

    @torch.no_grad()
    def greedy(self, budget: Optional[int] = None, *, lazy: bool = True,
               backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy maximisation under ``|A| ≤ budget`` (all ``n`` when None), every DSF at once: returns the
        picks ``[batch, budget]`` in order and their marginal gains ``f(v | A)`` at the time of the pick.
        Ties go to the lowest index. ``lazy`` re-scores the open candidates in the order of their last gains
        (upper bounds, by submodularity) and stops where no bound can reach the best gain found (the
        ``greedy_gains`` op's ``bounds``), giving the same picks."""
        n = self.n_features
        budget = n if budget is None else check_count(budget, "budget", minimum=0)
        if budget > n:
            raise ValueError(f"budget must be <= n_features = {n}, got {budget}")
        batch = self.batch
        selected = torch.zeros((batch, n), dtype=torch.bool, device=self.columns.device)
        z1 = self.bias.detach().clone()
        columns = self.columns.detach()
        rows = torch.arange(batch, device=z1.device)
        order = torch.empty((batch, budget), dtype=torch.int64, device=z1.device)
        gains = torch.empty((batch, budget), dtype=z1.dtype, device=z1.device)
        bound: Optional[torch.Tensor] = None
        for step in range(budget):
            left = n - step
            if bound is None or not lazy:
                open_ = (~selected).nonzero()[:, 1].reshape(batch, left)  # the candidates not yet picked
                bound = torch.full((batch, n), -torch.inf, dtype=z1.dtype, device=z1.device)
                bound.scatter_(1, open_, self._gains(z1, selected, open_, backend))
            else:  # the open candidates by their last gains (upper bounds now), best first
                open_ = torch.sort(bound, dim=1, descending=True, stable=True).indices[:, :left].contiguous()
                bound.scatter_(1, open_, self._gains(z1, selected, open_, backend, bounds=bound.gather(1, open_)))
            best = bound.argmax(1)
            order[:, step] = best
            gains[:, step] = bound[rows, best]
            selected[rows, best] = True
            bound[rows, best] = -torch.inf
            z1 += columns[rows, best]
        return order, gains


def _init_range(init) -> tuple[float, float]:
    if isinstance(init, (str, bytes)) or not isinstance(init, Sequence) or len(init) != 2:
        raise ValueError(f"init must be (low, high) with 0 <= low <= high, got {init!r}")
    low, high = (check_number(v, "init") for v in init)
    if low > high:
        raise ValueError(f"init must be (low, high) with 0 <= low <= high, got {init!r}")
    return low, high


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Min–max scaling of each row of ``x`` ``[..., n]`` to [0, 1] (a constant row becomes 0)."""
    low = x.amin(-1, keepdim=True)
    span = x.amax(-1, keepdim=True) - low
    return torch.where(span > 0, (x - low) / torch.where(span > 0, span, 1.0), torch.zeros_like(x))


def _felzenszwalb(inputs: torch.Tensor, scale: float) -> torch.Tensor:
    try:
        from skimage.segmentation import felzenszwalb
    except ImportError as e:
        raise ImportError("segments='felzenszwalb' needs scikit-image (pip install scikit-image); or pass "
                          "segments=None (single pixels) or a label tensor [B, H, W]") from e
    labels = []
    for image in inputs.detach().to("cpu", torch.float64).numpy():
        if image.shape[0] == 1:
            labels.append(felzenszwalb(image[0], scale=scale, channel_axis=None))
        else:
            labels.append(felzenszwalb(np.moveaxis(image, 0, -1), scale=scale, channel_axis=-1))
    return torch.as_tensor(np.stack(labels), dtype=torch.int64, device=inputs.device)


def _segments(segments, inputs: torch.Tensor, scale: float) -> torch.Tensor:
    batch, height, width = inputs.shape[0], inputs.shape[-2], inputs.shape[-1]
    if isinstance(segments, str):
        if segments != "felzenszwalb":
            raise ValueError(f"segments must be 'felzenszwalb', None or a label tensor, got {segments!r}")
        return _felzenszwalb(inputs, scale)
    if segments is None:
        return torch.arange(height * width, device=inputs.device).reshape(1, height, width).expand(batch, -1, -1)
    if not isinstance(segments, torch.Tensor) or segments.is_floating_point() or segments.is_complex() \
            or segments.shape[-2:] != (height, width) or segments.dim() not in (2, 3) \
            or (segments.dim() == 3 and segments.shape[0] != batch):
        got = (tuple(segments.shape), segments.dtype) if isinstance(segments, torch.Tensor) else type(segments).__name__
        raise ValueError(f"segments must be an integer label tensor [B, H, W] or [H, W] matching the inputs' "
                         f"[{batch}, {height}, {width}], got {got}")
    if segments.numel() and int(segments.min()) < 0:
        raise ValueError("segments must hold labels >= 0")
    return segments.to(inputs.device, torch.int64).expand(batch, height, width)


def _grid(grid, window, height: int, width: int) -> int:
    if grid is None:
        grid = min(28, height, width) if window is None else height // check_count(window, "window")
    grid = check_count(grid, "grid")
    if grid > height or grid > width:
        raise ValueError(f"grid must be at most the input's size {height} x {width}, got {grid}")
    if window is not None:
        window = check_count(window, "window")
        if grid * window != height or grid * window != width:
            raise ValueError(f"window x grid must equal the input's size {height} x {width}, got window {window} "
                             f"and grid {grid}")
    return grid


def _cells(height: int, width: int, grid: int, device) -> torch.Tensor:
    """The cell of every pixel ``[H·W]`` in a ``grid × grid`` partition (row ``⌊h·grid/H⌋``, column likewise)."""
    rows = torch.arange(height, device=device) * grid // height
    cols = torch.arange(width, device=device) * grid // width
    return (rows[:, None] * grid + cols[None, :]).reshape(-1)


def _pool(x: torch.Tensor, cells: torch.Tensor, n: int, reduce: str) -> torch.Tensor:
    """Sum (or mean) of ``x`` ``[..., H·W]`` over each cell: ``[..., n]``."""
    out = torch.zeros(x.shape[:-1] + (n,), dtype=x.dtype, device=x.device).index_add_(-1, cells, x)
    if reduce == "mean":
        out = out / torch.bincount(cells, minlength=n).clamp(min=1).to(x.dtype)
    return out


def _check_percentiles(percentiles) -> torch.Tensor:
    if isinstance(percentiles, (str, bytes)) or not isinstance(percentiles, Sequence) or not percentiles \
            or any(isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 < p < 100 for p in percentiles):
        raise ValueError(f"percentiles must be a non-empty sequence of numbers in (0, 100), got {percentiles!r}")
    return torch.tensor([float(p) for p in percentiles], dtype=torch.float64)


def sea_nn_inputs(maps: torch.Tensor, segments: torch.Tensor, grid: int,
                  percentiles: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SEA-NN's pre-processing (module docstring) of ``maps`` ``[B, m, H, W]`` (≥ 0, e.g. ``|φ|`` summed over
    channels) with ``segments`` ``[B, H, W]``: returns the heat maps ``H_i`` ``[B, m, n]`` in [0, 1], the binary
    maps ``H_i^j`` ``[B, m, k, n]`` (``k`` percentiles) and the cell of every pixel ``[H·W]``, ``n = grid²``."""
    batch, m, height, width = maps.shape
    q = _check_percentiles(percentiles).to(maps.device) / 100
    flat = _unit(maps.reshape(batch, m, height * width).double())
    labels = segments.reshape(batch, 1, height * width)
    labels = torch.unique(labels, return_inverse=True)[1]  # 0..L-1 over the whole batch
    per_segment = torch.zeros((batch, m, int(labels.max()) + 1 if labels.numel() else 0), dtype=flat.dtype,
                              device=flat.device)
    per_segment.scatter_reduce_(2, labels.expand_as(flat), flat, "mean", include_self=False)
    segmented = _unit(torch.gather(per_segment, 2, labels.expand_as(flat)))
    n = grid * grid
    cells = _cells(height, width, grid, maps.device)
    heat = _unit(_pool(segmented, cells, n, "mean"))
    level = torch.quantile(segmented, q, dim=2).permute(1, 2, 0)  # [B, m, k]
    chosen = (segmented.unsqueeze(2) >= level.unsqueeze(3)).double()  # [B, m, k, H·W]
    counts = _pool(chosen, cells, n, "sum")
    binary = counts * n >= chosen.sum(3, keepdim=True)
    return heat.to(maps.dtype), binary, cells


def _lambdas(lambdas) -> tuple[float, float, float]:
    if isinstance(lambdas, (str, bytes)) or not isinstance(lambdas, Sequence) or len(lambdas) != 3:
        raise ValueError(f"lambdas must be (λ, λ1, λ2), three numbers >= 0, got {lambdas!r}")
    return tuple(check_number(v, "lambdas") for v in lambdas)


@model_entry
def sea_nn(model: Callable, inputs: torch.Tensor, target: Target = None, *, methods: Union[dict, Sequence],
           segments: Union[str, torch.Tensor, None] = "felzenszwalb", scale: float = 500.0, grid: Optional[int] = None,
           window: Optional[int] = None, percentiles: Sequence[float] = (97, 97.5, 98, 98.5, 99, 99.5),
           epochs: int = 20, hidden: Sequence[int] = (512, 256, 32), delta: float = 1e-6,
           lambdas: Sequence[float] = (1e-5, 10.0, 0.01), init: Sequence[float] = (2.0, 2.25), lr: float = 1e-3,
           activation: str = "sqrt", lazy: bool = True, generator=0, max_batch: Optional[int] = None,
           memory_budget: Optional[int] = None, backend: Optional[str] = None,
           return_dsf: bool = False) -> Union[torch.Tensor, tuple[torch.Tensor, DeepSubmodular]]:
    """SEA-NN (module docstring): a DSF learned per image from the maps of ``methods``, then Algorithm 1.

    Args:
        methods: at least two maps to ensemble: ``{name: method}`` or a sequence of methods, each a name in
            ``fastattr.attribution.METHODS`` or a ``(name, {settings})`` pair (those with model passes in
            common share them), a function ``fn(model, x, target)``, or a precomputed map
            ``[B, C, H, W]`` / ``[B, H, W]`` (``|φ|`` is summed over channels).
        segments: ``"felzenszwalb"`` (scikit-image, with ``scale``), None (single pixels: the paper's MNIST
            setting), or integer labels ``[B, H, W]`` / ``[H, W]``.
        grid: the DSF works on ``grid × grid`` cells (default 28, or the input's side when smaller);
            ``window``: the cell side, checked against ``grid`` (``grid · window = H = W``).
        percentiles: the thresholds of the binary maps (the paper's 97 … 99.5).
        epochs, lr: Adam on Eq. 2 (the paper's 20 epochs). hidden, init, activation: the DSF (S3).
        delta, lambdas: ``δ`` and ``(λ, λ₁, λ₂)`` of Eq. 2 (the paper's MNIST δ, ImageNet λ's).
        lazy: lazy greedy (same picks). generator: seed of the DSFs' initialisation, or one per image (then an
            image's map does not depend on the batch it is in).
        max_batch / memory_budget: for the named methods. backend: the ``greedy_gains`` backend.

    Returns ``[B, H, W]`` (each map sums to 1 over the cells; with ``return_dsf`` also the trained
    :class:`DeepSubmodular`). Example::

        >>> heat = fastattr.sea_nn(model, x, y, methods=["integrated_gradients", "deeplift", "input_x_gradient"])
    """
    check_inputs(inputs)
    if inputs.dim() < 3:
        raise ValueError(f"sea_nn attributes images: inputs must be [B, C, H, W] or [B, H, W], got shape "
                         f"{tuple(inputs.shape)}")
    if not isinstance(methods, dict):
        if isinstance(methods, (str, bytes, torch.Tensor)) or not isinstance(methods, Sequence):
            raise ValueError(f"methods must be a dict or a sequence of at least two methods, got {methods!r}")
        methods = {(m if isinstance(m, str) else f"method_{i}"): m for i, m in enumerate(methods)}
    epochs = check_count(epochs, "epochs", minimum=0)
    delta = check_number(delta, "delta")
    lam = _lambdas(lambdas)
    lr = check_number(lr, "lr")
    scale = check_number(scale, "scale")
    height, width = inputs.shape[-2], inputs.shape[-1]
    grid = _grid(grid, window, height, width)
    _check_percentiles(percentiles)
    fns = explainers(methods, dict(max_batch=max_batch, memory_budget=memory_budget))
    t, _ = resolve_clean(model, inputs, target, max_batch=max_batch, memory_budget=memory_budget)
    batch, maps = inputs.shape[0], []
    for name, out in fns(model, inputs, t).items():
        out = map_batch(out, name, batch, None)
        if out.shape[-2:] != (height, width) or out.dim() not in (3, 4):
            raise ValueError(f"methods[{name!r}] gave maps {tuple(out.shape)}; they must match the inputs: "
                             f"[{batch}, C, {height}, {width}] or [{batch}, {height}, {width}]")
        maps.append(out.abs().sum(1) if out.dim() == 4 else out.abs())
    stacked = torch.stack([m.to(inputs.device, torch.float32) for m in maps], 1)
    labels = _segments(segments, inputs, scale)
    heat, binary, cells = sea_nn_inputs(stacked, labels, grid, percentiles)
    dsf = DeepSubmodular(grid * grid, hidden, batch=batch, activation=activation, init=init, generator=generator,
                         device=inputs.device)
    dsf.fit(heat, binary, epochs=epochs, delta=delta, lambdas=lam, lr=lr, lazy=lazy, backend=backend)
    order, gains = dsf.greedy(lazy=lazy, backend=backend)
    value = torch.zeros((batch, grid * grid), dtype=gains.dtype, device=gains.device)
    value.scatter_(1, order, gains.clamp(min=0))
    value = value / value.sum(1, keepdim=True).clamp(min=torch.finfo(value.dtype).tiny)
    heatmap = value[:, cells].reshape(batch, height, width).to(inputs.dtype if inputs.is_floating_point()
                                                                  else torch.float32)
    return (heatmap, dsf) if return_dsf else heatmap
