"""SEA-NN (SPEC §7): the DSF is monotone and submodular, greedy's guarantee against brute force, the fused and
lazy greedy pick what the from-scratch greedy of the released code picks, the pre-processing, and sea_nn on
the digits CNN (batch = one at a time, seeded, inputs untouched, segments, bad input)."""
import itertools
import math

import pytest
import torch

import fastattr
from fastattr.attribution.sea_nn import sea_nn_inputs
from fastattr.zoo import load_digits, load_digits_cnn

METHODS = ["integrated_gradients", "deeplift", "input_x_gradient"]


@pytest.fixture(scope="module")
def digits():
    model = load_digits_cnn()
    x, y = load_digits("test", n=6)
    return model, x, y


@pytest.fixture(scope="module")
def trained(digits):
    model, x, y = digits
    heat, dsf = fastattr.sea_nn(model, x, y, methods=METHODS, segments=None, grid=8, percentiles=(80, 90),
                                hidden=(32, 16, 4), epochs=15, lr=1e-2, return_dsf=True)
    return heat, dsf


def _scratch_greedy(dsf, budget):
    """The released code's greedy (SEA-NN repository, ``submod.sea_nn``), per DSF: every step scores all
    ``A ∪ {v}`` from scratch in float64 through the whole network and takes the first argmax."""
    orders = []
    for b in range(dsf.batch):
        n = dsf.n_features
        selected = torch.zeros(n, dtype=torch.float64)
        picks = []
        for _ in range(budget):
            sets = (selected.unsqueeze(0) + torch.eye(n, dtype=torch.float64)).clamp(max=1)
            with torch.no_grad():
                values = _f64(dsf, b, sets)
            values[selected.bool()] = -math.inf
            v = int(values.argmax())
            picks.append(v)
            selected[v] = 1
        orders.append(picks)
    return torch.tensor(orders)


def _f64(dsf, b, sets):
    u = torch.sqrt(sets @ dsf.columns[b].double() + dsf.bias[b].double())
    for i, (W, c) in enumerate(zip(dsf.weights, dsf.biases)):
        u = u @ W[b].double() + c[b].double()
        if i < len(dsf.weights) - 1:
            u = torch.sqrt(u)
    return u[:, 0]


def test_trained_dsf_is_monotone_and_submodular_on_random_chains(trained):
    _, dsf = trained
    assert all((p >= 0).all() for p in dsf.parameters())
    g = torch.Generator().manual_seed(0)
    n = dsf.n_features
    for b in range(dsf.batch):
        for _ in range(8):
            perm = torch.randperm(n, generator=g)
            chain = torch.zeros(n + 1, n, dtype=torch.float64)
            for i in range(1, n + 1):
                chain[i] = chain[i - 1]
                chain[i, perm[i - 1]] = 1
            values = _f64(dsf, b, chain)
            assert (values[1:] >= values[:-1] - 1e-9 * values.abs().max()).all()  # monotone along the chain
            v = int(perm[-1])  # the last element: its gain must shrink as the set grows
            without = chain[:-1]
            gains = _f64(dsf, b, without.index_fill(1, torch.tensor([v]), 1.0)) - _f64(dsf, b, without)
            assert (gains[1:] <= gains[:-1] + 1e-9 * values.abs().max()).all()
            assert (gains > 0).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_reaches_one_minus_one_over_e_of_brute_force(seed):
    n, budget = 12, 4
    dsf = fastattr.DeepSubmodular(n, (6, 3), batch=2, init=(0.0, 1.0), generator=seed, dtype=torch.float64)
    order, gains = dsf.greedy(budget)
    subsets = torch.tensor([[1.0 if i in s else 0.0 for i in range(n)]
                            for k in range(budget + 1) for s in itertools.combinations(range(n), k)],
                           dtype=torch.float64)
    with torch.no_grad():
        values = dsf(subsets.expand(2, -1, -1))
        empty = dsf(torch.zeros(2, n, dtype=torch.float64))
        chosen = torch.zeros(2, n, dtype=torch.float64).scatter_(1, order, 1.0)
        greedy_value = dsf(chosen)
    best = values.max(1).values
    assert ((greedy_value - empty) >= (1 - 1 / math.e) * (best - empty) - 1e-12).all()
    torch.testing.assert_close(gains.sum(1), greedy_value - empty)  # the gains add up to f(A) − f(∅)
    assert (best >= greedy_value - 1e-12).all()


@pytest.mark.parametrize("lazy", [False, True])
def test_fused_greedy_picks_equal_the_from_scratch_greedy(trained, lazy, backend_device):
    backend, device = backend_device
    _, dsf = trained
    budget = 10 if backend == "triton" and device == "cpu" else dsf.n_features  # the interpreter is slow
    order, gains = dsf.greedy(budget, lazy=lazy, backend=backend)
    assert torch.equal(order, _scratch_greedy(dsf, budget))
    if budget == dsf.n_features:
        assert torch.equal(torch.sort(order, 1).values, torch.arange(dsf.n_features).expand_as(order))
    assert (gains[:, 1:] <= gains[:, :-1] * (1 + 1e-5)).all()  # diminishing returns along the greedy path


def test_lazy_greedy_on_a_784_grid_matches_the_plain_greedy():
    dsf = fastattr.DeepSubmodular(784, (64, 16, 4), batch=2, generator=3)
    plain, plain_gains = dsf.greedy(60, lazy=False)
    lazy, lazy_gains = dsf.greedy(60, lazy=True)
    assert torch.equal(plain, lazy)
    torch.testing.assert_close(plain_gains, lazy_gains)
    assert torch.equal(plain, _scratch_greedy(dsf, 60))


def test_marginal_gains_match_the_forward(trained):
    _, dsf = trained
    g = torch.Generator().manual_seed(1)
    selected = torch.rand(dsf.batch, dsf.n_features, generator=g) < 0.3
    gains = dsf.marginal_gains(selected)
    with torch.no_grad():
        sets = (selected.unsqueeze(1) | torch.eye(dsf.n_features, dtype=torch.bool)).float()
        expected = dsf(sets) - dsf(selected.float())[:, None]
    torch.testing.assert_close(gains, expected.masked_fill(selected, 0.0), rtol=1e-4, atol=1e-3)
    assert (gains[selected] == 0).all()


def test_preprocessing_thresholds_segments_and_cells():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 3, 8, 8, generator=g)
    pixels = torch.arange(64).reshape(1, 8, 8).expand(2, -1, -1)
    heat, binary, cells = sea_nn_inputs(maps, pixels, 8, (75, 90))
    flat = maps.reshape(2, 3, 64)
    unit = (flat - flat.amin(-1, keepdim=True)) / (flat.amax(-1, keepdim=True) - flat.amin(-1, keepdim=True))
    torch.testing.assert_close(heat, unit)  # single pixels, a grid of the input's size: the scaled maps
    assert binary.shape == (2, 3, 2, 64) and torch.equal(binary.sum(-1), torch.tensor([16, 7]).expand(2, 3, 2))
    halves = (torch.arange(64).reshape(8, 8) // 4 % 2).reshape(1, 8, 8).expand(2, -1, -1)  # two column halves
    heat2, binary2, cells2 = sea_nn_inputs(maps, halves, 2, (60,))
    assert cells2.tolist() == [(r // 4) * 2 + c // 4 for r in range(8) for c in range(8)]
    means = torch.stack([flat.reshape(2, 3, 8, 2, 4)[..., i, :].mean((-1, -2)) for i in range(2)], -1)
    left_wins = means[..., 0] > means[..., 1]
    assert torch.equal(heat2[..., 0] == 1, left_wins) and torch.equal(heat2[..., 1] == 1, ~left_wins)
    assert torch.equal(binary2[:, :, 0, 0], left_wins) and torch.equal(binary2[:, :, 0, 1], ~left_wins)


def test_sea_nn_on_digits(digits, trained):
    model, x, y = digits
    heat, dsf = trained
    assert heat.shape == (6, 8, 8) and torch.isfinite(heat).all() and (heat >= 0).all()
    torch.testing.assert_close(heat.sum((1, 2)), torch.ones(6))
    saved = x.clone()
    again = fastattr.sea_nn(model, x, y, methods=METHODS, segments=None, grid=8, percentiles=(80, 90),
                            hidden=(32, 16, 4), epochs=15, lr=1e-2)
    assert torch.equal(again, heat) and torch.equal(x, saved)
    assert not torch.equal(heat[0], heat[1])


def test_one_seed_per_image_makes_a_map_independent_of_its_batch(digits):
    model, x, y = digits
    kw = dict(methods=METHODS, segments=None, grid=8, percentiles=(80, 90), hidden=(16, 8), epochs=4, lr=1e-2)
    batch = fastattr.sea_nn(model, x, y, generator=[10, 11, 12, 13, 14, 15], **kw)
    one = fastattr.sea_nn(model, x[2:3], y[2:3], generator=[12], **kw)
    torch.testing.assert_close(one[0], batch[2], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="one per DSF"):
        fastattr.sea_nn(model, x, y, generator=[1, 2], **kw)


def test_a_batch_of_dsfs_trains_as_each_alone():
    g = torch.Generator().manual_seed(4)
    maps = torch.rand(3, 2, 8, 8, generator=g)
    heat, binary, _ = sea_nn_inputs(maps, torch.arange(64).reshape(1, 8, 8).expand(3, -1, -1), 8, (80, 90))
    together = fastattr.DeepSubmodular(64, (16, 4), batch=3, generator=1)
    alone = fastattr.DeepSubmodular(64, (16, 4), batch=1, generator=1)
    with torch.no_grad():
        for p, q in zip(alone.parameters(), together.parameters()):
            p.copy_(q[1:2])
    losses = together.fit(heat, binary, epochs=8, lr=1e-2)
    alone.fit(heat[1:2], binary[1:2], epochs=8, lr=1e-2)
    assert losses[-1] < losses[0]
    for p, q in zip(alone.parameters(), together.parameters()):
        torch.testing.assert_close(p[0], q[1], rtol=1e-5, atol=1e-6)
    assert torch.equal(alone.greedy()[0][0], together.greedy()[0][1])


def test_sea_nn_segments_grid_and_precomputed_maps(digits):
    model, x, y = digits
    rgb = x.repeat(1, 3, 1, 1)
    wide = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 1), model).eval()
    maps = {"ig": fastattr.integrated_gradients(wide, rgb, y), "sal": fastattr.saliency(wide, rgb, y)}
    heat = fastattr.sea_nn(wide, rgb, y, methods=maps, segments="felzenszwalb", scale=1.0, grid=4, window=2,
                           hidden=(8, 4), epochs=3, percentiles=(70, 90))
    assert heat.shape == (6, 8, 8)
    blocks = heat.reshape(6, 4, 2, 4, 2)  # constant over each 2 x 2 cell
    assert torch.equal(blocks, blocks[:, :, :1, :, :1].expand_as(blocks))
    labels = (torch.arange(64).reshape(8, 8) // 16)
    heat2 = fastattr.sea_nn(model, x, y, methods=METHODS, segments=labels, grid=8, hidden=(8, 4), epochs=2,
                            percentiles=(50,))
    assert heat2.shape == (6, 8, 8) and torch.isfinite(heat2).all()


def test_sea_nn_bad_input(digits):
    model, x, y = digits
    kw = dict(segments=None, grid=8, hidden=(8, 4), epochs=1)
    with pytest.raises(ValueError, match="methods"):
        fastattr.sea_nn(model, x, y, methods=["saliency"], **kw)
    with pytest.raises(ValueError, match=r"methods\['bad'\]"):
        fastattr.sea_nn(model, x, y, methods={"sal": "saliency", "bad": torch.rand(6, 1, 4, 4)}, **kw)
    with pytest.raises(ValueError, match="grid"):
        fastattr.sea_nn(model, x, y, methods=METHODS, segments=None, grid=9)
    with pytest.raises(ValueError, match="delta"):
        fastattr.sea_nn(model, x, y, methods=METHODS, delta=-1.0, **kw)
    with pytest.raises(ValueError, match="percentiles"):
        fastattr.sea_nn(model, x, y, methods=METHODS, percentiles=(0, 100), **kw)
    with pytest.raises(ValueError, match="window"):
        fastattr.sea_nn(model, x, y, methods=METHODS, segments=None, grid=4, window=3)
    with pytest.raises(ValueError, match="segments"):
        fastattr.sea_nn(model, x, y, methods=METHODS, segments=torch.zeros(5, 5, dtype=torch.long), grid=8)
    with pytest.raises(ValueError, match="activation"):
        fastattr.DeepSubmodular(4, (3,), activation="relu")
    with pytest.raises(ValueError, match="budget"):
        fastattr.DeepSubmodular(4, (3,)).greedy(5)


def test_felzenszwalb_without_scikit_image_names_it(digits, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_skimage(name, *args, **kwargs):
        if name.startswith("skimage"):
            raise ImportError("No module named 'skimage'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_skimage)
    model, x, y = digits
    with pytest.raises(ImportError, match="scikit-image"):
        fastattr.sea_nn(model, x, y, methods=METHODS, segments="felzenszwalb", grid=8, hidden=(4, 2), epochs=1)
