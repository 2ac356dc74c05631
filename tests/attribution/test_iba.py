"""iba_statistics and iba (SPEC §9; Schulz et al. 2020): the layer's per-element mean / std / active
elements over a data set, equal to torch's statistics of the stacked activations and to a Welford
loop one sample at a time (the public IBA code's), whatever the batching; the batched bottleneck equal
to the paper's one-image loop on the same noise draws; the model is left as found."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastattr
from fastattr.reference.bottleneck import gaussian_kernel
from fastattr.zoo import load_digits, load_digits_cnn


def _digits(n=300):
    model = load_digits_cnn().double().eval()
    x, y = load_digits("train", n)
    return model, x.double(), y


def _welford(rows: torch.Tensor):
    """Welford's update, one sample at a time."""
    mean, m2 = torch.zeros_like(rows[0]), torch.zeros_like(rows[0])
    for k, r in enumerate(rows, start=1):
        delta = r - mean
        mean = mean + delta / k
        m2 = m2 + delta * (r - mean)
    return mean, (m2 / (rows.shape[0] - 1)).sqrt()


def test_equals_the_stacked_activations_and_a_welford_loop():
    model, x, _ = _digits()
    stats = fastattr.iba_statistics(model, "net.3", x, max_batch=37, min_std=0.05)
    with torch.no_grad():
        r = model.net[:4](x)
    assert stats.count == 300 and stats.mean.shape == r.shape[1:] and stats.mean.dtype == torch.float64
    torch.testing.assert_close(stats.mean, r.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(stats.std, r.std(0).clamp(min=0.05), rtol=0, atol=1e-12)
    assert (stats.std == 0.05).any() and (stats.std > 0.05).any()  # the clamp acts on some elements only
    assert torch.equal(stats.active, (r != 0).double().mean(0) > 0.01)
    assert stats.active.any() and not stats.active.all()  # after a ReLU some elements are never active
    mean, std = _welford(r)
    torch.testing.assert_close(stats.mean, mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(stats.std, std.clamp(min=0.05), rtol=0, atol=1e-12)


def test_independent_of_batching_and_takes_loaders():
    model, x, y = _digits()
    whole = fastattr.iba_statistics(model, model.net[2], x)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=50)
    uneven = [x[:1], x[1:120], x[120:121], x[121:]]
    for data, kw in ((loader, {}), (uneven, {}), (x, {"max_batch": 7})):
        other = fastattr.iba_statistics(model, model.net[2], data, **kw)
        assert other.count == 300
        torch.testing.assert_close(other.mean, whole.mean, rtol=0, atol=1e-12)
        torch.testing.assert_close(other.std, whole.std, rtol=0, atol=1e-12)
    first = fastattr.iba_statistics(model, model.net[2], loader, n_samples=120)
    alone = fastattr.iba_statistics(model, model.net[2], x[:120])
    assert first.count == 120
    torch.testing.assert_close(first.mean, alone.mean, rtol=0, atol=1e-12)


def test_model_left_as_found_and_stops_at_the_layer():
    model, x, _ = _digits(40)
    model.train()
    calls = []
    later = model.net[6].register_forward_hook(lambda m, a, o: calls.append(1))
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.warns(UserWarning, match="training mode"):
        fastattr.iba_statistics(model, "net.3", x)
    assert calls == []  # the layers after the bottleneck never ran
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert len(model.net[3]._forward_hooks) == 0 and len(model.net[6]._forward_hooks) == 1
    later.remove()


class _TupleLayer(nn.Module):
    def forward(self, x):
        return x, x


class _UsesTuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.pair = _TupleLayer()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.pair(x)[0])


def test_bad_input():
    model, x, _ = _digits(10)
    with pytest.raises(ValueError, match="layer 'net.99' is not a module"):
        fastattr.iba_statistics(model, "net.99", x)
    with pytest.raises(ValueError, match="one tensor"):
        fastattr.iba_statistics(_UsesTuple().eval(), "pair", torch.rand(5, 4))
    with pytest.raises(ValueError, match="min_std"):
        fastattr.iba_statistics(model, "net.3", x, min_std=-1.0)
    with pytest.raises(ValueError, match="active_threshold"):
        fastattr.iba_statistics(model, "net.3", x, active_threshold=1.0)
    with pytest.raises(TypeError, match="data must"):
        fastattr.iba_statistics(model, "net.3", 3)
    with pytest.raises(ValueError, match="at least 2 samples"):
        fastattr.iba_statistics(model, "net.3", x[:1])
    with pytest.raises(ValueError, match="did not run"):
        fastattr.iba_statistics(model, nn.ReLU(), x)


def _paper_loop(model, x, t, module, stats, generator, *, steps=10, n_noise=10, beta=10.0, lr=1.0, inverse=False,
                loss="ce", label=None, return_alpha=False):
    """The IBA paper's loop (Schulz et al. 2020, Alg. 1 as the public code runs it): one image at a time,
    the whole network on a batch of n_noise copies each step, the bottleneck written out in torch (IBA's
    reflection-padded Gaussian), the same noise draws as the batched call (one [B, S, ...] draw per step).
    ``inverse``: the thesis's Inverse IBA (ch. 8 Eq. 4), ``β L_I − L(f(λε + (1 − λ)R))``; ``loss``: its
    regression losses on the score f_t (ch. 8 §2.2): mse (f_t − y)², rm −f_t², dv (f_t − f_t(x))²."""
    with torch.no_grad():
        R = {}
        h = module.register_forward_hook(lambda m, a, o: R.setdefault("r", o))
        clean = model(x).reshape(x.shape[0], -1)
        h.remove()
    R = R["r"]
    draws = [torch.randn((x.shape[0], n_noise) + tuple(R.shape[1:]), generator=generator, dtype=R.dtype)
             for _ in range(steps)]
    kernel = gaussian_kernel(1.0, R.dtype, "cpu")
    C = R.shape[1]
    active = stats.active.to(R.dtype)

    def lam_of(alpha):
        s = torch.sigmoid(alpha)
        return F.conv2d(F.pad(s, (2, 2, 2, 2), mode="reflect"), kernel.expand(C, 1, -1, -1), groups=C)

    maps, alphas = [], []
    for b in range(x.shape[0]):
        alpha = torch.full_like(R[b:b + 1], 5.0, requires_grad=True)
        opt = torch.optim.Adam([alpha], lr=lr)
        for k in range(steps):
            lam = lam_of(alpha)
            noise = stats.std * draws[k][b] + stats.mean
            z = lam * noise + (1 - lam) * R[b:b + 1] if inverse else lam * R[b:b + 1] + (1 - lam) * noise
            cap = -torch.log(1 - lam) + 0.5 * (1 - lam) ** 2 + 0.5 * lam ** 2 * ((R[b:b + 1] - stats.mean) /
                                                                                 stats.std) ** 2 - 0.5
            h = module.register_forward_hook(lambda m, a, o, z=z: z * active)
            out = model(x[b:b + 1].repeat(n_noise, 1, 1, 1)).reshape(n_noise, -1)
            h.remove()
            score = out[:, t[b]]
            task = {"ce": lambda: F.cross_entropy(out, t[b].repeat(n_noise)),
                    "mse": lambda: ((score - label[b]) ** 2).mean(), "rm": lambda: -(score ** 2).mean(),
                    "dv": lambda: ((score - clean[b, t[b]]) ** 2).mean()}[loss]()
            info = beta * (cap * active).mean()
            objective = info - task if inverse else task + info
            opt.zero_grad()
            objective.backward()
            opt.step()
        alphas.append(alpha.detach())
        lam = lam_of(alpha.detach())
        cap = -torch.log(1 - lam) + 0.5 * (1 - lam) ** 2 + 0.5 * lam ** 2 * ((R[b:b + 1] - stats.mean) /
                                                                             stats.std) ** 2 - 0.5
        bits = (cap * active).sum(1, keepdim=True) / math.log(2)
        maps.append(F.interpolate(bits, size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0])
    return (torch.cat(maps), torch.cat(alphas)) if return_alpha else torch.cat(maps)


def test_iba_equals_the_papers_one_image_loop():
    model, x_train, _ = _digits(400)
    x, y = load_digits("test", 4)
    x = x.double()
    stats = fastattr.iba_statistics(model, "net.2", x_train)
    heat = fastattr.iba(model, x, y, layer="net.2", statistics=stats, generator=torch.Generator().manual_seed(3))
    for p in model.parameters():
        p.requires_grad_(False)
    loop = _paper_loop(model, x, y, model.net[2], stats, torch.Generator().manual_seed(3))
    assert heat.shape == (4, 8, 8) and (heat >= 0).all()
    assert ((heat - loop).norm() / loop.norm()).item() < 1e-4
    assert not torch.allclose(heat[0], heat[1])  # a map per image


def test_iba_maps_beat_random_on_insertion_and_are_seeded():
    model, x_train, _ = _digits(400)
    x, y = load_digits("test", 8)
    x = x.double()
    stats = fastattr.iba_statistics(model, "net.2", x_train)
    a = fastattr.iba(model, x, y, layer="net.2", statistics=stats, generator=1, steps=5)
    b, cap = fastattr.iba(model, x, y, layer="net.2", statistics=stats, generator=1, steps=5, return_capacity=True)
    assert torch.equal(a, b) and cap.shape == (8, 32, 8, 8) and (cap >= 0).all()
    rand = torch.rand(8, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ins = fastattr.metrics.insertion(model, x, a, y).mean()
    assert ins > fastattr.metrics.insertion(model, x, rand, y).mean()


def test_iba_bad_input():
    model, x_train, _ = _digits(50)
    x = x_train[:2]
    stats = fastattr.iba_statistics(model, "net.2", x_train)
    with pytest.raises(ValueError, match="beta"):
        fastattr.iba(model, x, layer="net.2", statistics=stats, beta=-1.0)
    with pytest.raises(ValueError, match="steps"):
        fastattr.iba(model, x, layer="net.2", statistics=stats, steps=0)
    with pytest.raises(ValueError, match="layer 'net.42'"):
        fastattr.iba(model, x, layer="net.42", statistics=stats)
    with pytest.raises(ValueError, match="statistics are for a layer output"):
        fastattr.iba(model, x, layer="net.0", statistics=fastattr.iba_statistics(model, "net.4", x_train))
    with pytest.raises(TypeError, match="statistics must be"):
        fastattr.iba(model, x, layer="net.2", statistics=(stats.mean, stats.std))
    with pytest.raises(ValueError, match="one tensor \\[N, C, H, W\\]"):
        fastattr.iba(model, x, layer="net.6", statistics=stats)


def test_only_the_layers_after_the_bottleneck_run_and_the_fallback_agrees(monkeypatch):
    """The fx tail equals the model from the layer's output on (digits CNN, ResNet-18 at layer3); a layer
    with a skip connection across it has no tail; iba gives the same map with the whole-model fallback."""
    import importlib

    from fastattr.zoo.resnet import resnet18

    iba_module = importlib.import_module("fastattr.attribution.iba")  # the module, not the function

    model, x_train, _ = _digits(100)
    x = x_train[:3]
    tail = iba_module._tail(model, model.net[2])
    with torch.no_grad():
        torch.testing.assert_close(tail(model.net[:3](x)), model(x))
    resnet = resnet18(num_classes=10).double().eval()
    z = torch.rand(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        seen = {}
        hook = resnet.layer3.register_forward_hook(lambda m, a, o: seen.setdefault("r", o))
        expected = resnet(z)
        hook.remove()
        torch.testing.assert_close(iba_module._tail(resnet, resnet.layer3)(seen["r"]), expected)
    assert iba_module._tail(resnet, resnet.layer3[0].conv1) is None  # the block's skip connection crosses it
    stats = fastattr.iba_statistics(model, "net.2", x_train)
    fast = fastattr.iba(model, x, layer="net.2", statistics=stats, generator=2, steps=3)
    monkeypatch.setattr(iba_module, "_tail", lambda m, mod: None)
    whole = fastattr.iba(model, x, layer="net.2", statistics=stats, generator=2, steps=3)
    torch.testing.assert_close(fast, whole, rtol=1e-9, atol=1e-12)


def test_the_tail_folds_eval_batch_norms_into_copies_of_the_convs():
    """In eval mode each conv → BatchNorm pair of the tail runs as one conv with folded constants (no
    BatchNorm left, the same output, the model's parameters and buffers unchanged); in train mode the
    BatchNorms stay."""
    import importlib

    from fastattr.zoo.resnet import resnet18

    iba_module = importlib.import_module("fastattr.attribution.iba")
    g = torch.Generator().manual_seed(4)
    resnet = resnet18(num_classes=10).double().eval()
    with torch.no_grad():
        for m in resnet.modules():
            if isinstance(m, nn.BatchNorm2d):  # statistics and affine terms of a trained network
                m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=torch.float64))
                m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g, dtype=torch.float64))
                m.bias.copy_(torch.randn(m.num_features, generator=g, dtype=torch.float64))
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    z = torch.rand(2, 3, 64, 64, dtype=torch.float64, generator=g)
    seen = {}
    hook = resnet.layer3.register_forward_hook(lambda m, a, o: seen.setdefault("r", o))
    with torch.no_grad():
        expected = resnet(z)
    hook.remove()

    def norms(tail):
        return sum(n.op == "call_module" and isinstance(tail.get_submodule(n.target), nn.BatchNorm2d)
                   for n in tail.graph.nodes)

    tail = iba_module._tail(resnet, resnet.layer3)
    assert norms(tail) == 0 and sum(n.target is F.conv2d for n in tail.graph.nodes) == 5
    with torch.no_grad():
        torch.testing.assert_close(tail(seen["r"]), expected, rtol=1e-10, atol=1e-10)
    after = resnet.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert norms(iba_module._tail(resnet.train(), resnet.layer3)) == 5


def _frozen(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _digit_value(model):
    """A 1-output regressor made of the trained digits CNN: the expected digit Σ_k k·softmax_k."""
    head = nn.Linear(10, 1).double()
    with torch.no_grad():
        head.weight.copy_(torch.arange(10, dtype=torch.float64)[None])
        head.bias.zero_()
    return nn.Sequential(model, nn.Softmax(1), head).eval()


def _resnet(outputs):
    """A ResNet-18 (the zoo's, width 16, random weights) and generated 64×64 inputs: 10 for statistics, 2 to explain."""
    from fastattr.zoo.resnet import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=outputs, width=16).double().eval()
    gen = torch.Generator().manual_seed(1)
    data = torch.rand(12, 3, 64, 64, generator=gen, dtype=torch.float64)
    return model, data[:10], data[10:]


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_inverse_iba_equals_the_theses_one_image_loop():
    """Inverse IBA (thesis ch. 8 Eq. 4) on the digits CNN (net.2) and a ResNet-18 (layer3): the batched map
    equals the one-image loop on the same draws, and differs from IBA's."""
    model, x_train, _ = _digits(400)
    x, y = load_digits("test", 3)
    x = x.double()
    stats = fastattr.iba_statistics(model, "net.2", x_train)
    inv = fastattr.iba(model, x, y, layer="net.2", statistics=stats, inverse=True, generator=4)
    plain = fastattr.iba(model, x, y, layer="net.2", statistics=stats, generator=4)
    loop = _paper_loop(_frozen(model), x, y, model.net[2], stats, torch.Generator().manual_seed(4), inverse=True)
    assert _rel(inv, loop) < 1e-4 and (inv >= 0).all()
    assert _rel(inv, plain) > 0.05  # the deletion game keeps other elements than the preservation game
    resnet, data, z = _resnet(10)
    stats = fastattr.iba_statistics(resnet, resnet.layer3, data)
    inv = fastattr.iba(resnet, z, 3, layer=resnet.layer3, statistics=stats, inverse=True, steps=3, generator=5)
    loop = _paper_loop(_frozen(resnet), z, torch.tensor([3, 3]), resnet.layer3, stats,
                       torch.Generator().manual_seed(5), steps=3, inverse=True)
    assert inv.shape == (2, 64, 64) and _rel(inv, loop) < 1e-4


@pytest.mark.parametrize("loss", ["mse", "rm", "dv"])
def test_regression_iba_equals_the_theses_one_image_loop(loss):
    """Regression IBA (thesis ch. 8 §2.2) on 1-output models — the digits CNN's expected digit and a 1-output
    ResNet-18 — against the one-image loop on the same draws; Inverse IBA with a regression loss too."""
    model, x_train, _ = _digits(400)
    regressor = _digit_value(model)
    x, y = load_digits("test", 3)
    x = x.double()
    label = y.double() if loss == "mse" else None
    stats = fastattr.iba_statistics(regressor, "0.net.2", x_train)
    heat = fastattr.iba(regressor, x, layer="0.net.2", statistics=stats, loss=loss, label=label, generator=6)
    zero = torch.zeros(3, dtype=torch.long)
    loop = _paper_loop(_frozen(regressor), x, zero, model.net[2], stats, torch.Generator().manual_seed(6), loss=loss,
                       label=label)
    assert heat.shape == (3, 8, 8) and _rel(heat, loop) < 1e-4 and heat.abs().sum() > 0
    assert _rel(heat, fastattr.iba(model, x, y, layer="net.2", statistics=stats, generator=6)) > 0.01
    inv = fastattr.iba(regressor, x, layer="0.net.2", statistics=stats, loss=loss, label=label, inverse=True,
                       generator=6)
    loop = _paper_loop(regressor, x, zero, model.net[2], stats, torch.Generator().manual_seed(6), loss=loss,
                       label=label, inverse=True)
    assert _rel(inv, loop) < 1e-4
    resnet, data, z = _resnet(1)
    stats = fastattr.iba_statistics(resnet, resnet.layer3, data)
    label = torch.tensor([0.5, -1.0], dtype=torch.float64) if loss == "mse" else None
    heat = fastattr.iba(resnet, z, layer=resnet.layer3, statistics=stats, loss=loss, label=label, steps=2,
                        generator=7)
    loop = _paper_loop(_frozen(resnet), z, torch.zeros(2, dtype=torch.long), resnet.layer3, stats,
                       torch.Generator().manual_seed(7), steps=2, loss=loss, label=label)
    assert _rel(heat, loop) < 1e-4


def test_multi_layer_iba_is_the_intersection_of_the_one_image_loops():
    """Multi-layer IBA (thesis ch. 8 Eq. 5): each layer's map equals the one-image loop on the same draws
    (the layers drawing from one generator in order), and the result is the intersection of their top
    halves — on the digits CNN (net.0, net.2) and a ResNet-18 (layer2, layer3)."""
    model, x_train, _ = _digits(400)
    x, y = load_digits("test", 3)
    x = x.double()
    cases = [(model, ["net.0", "net.2"], [model.net[0], model.net[2]], x_train, x, y, 4),
             (*_resnet(10)[:1], ["layer2", "layer3"], None, None, None, torch.tensor([1, 7]), 2)]
    resnet, data, z = _resnet(10)
    cases[1] = (resnet, ["layer2", "layer3"], [resnet.layer2, resnet.layer3], data, z, torch.tensor([1, 7]), 2)
    for net, names, modules, train, inputs, t, steps in cases:
        stats = [fastattr.iba_statistics(net, name, train) for name in names]
        keep, maps = fastattr.multi_layer_iba(net, inputs, t, layers=names, statistics=stats, steps=steps,
                                              generator=8, return_maps=True)
        gen = torch.Generator().manual_seed(8)
        loops = [_paper_loop(_frozen(net), inputs, t, module, s, gen, steps=steps) for module, s in zip(modules, stats)]
        for got, want in zip(maps, loops):
            assert _rel(got, want) < 1e-4
        expected = torch.ones_like(loops[0], dtype=torch.bool)
        for loop in loops:
            flat = loop.flatten(1)
            expected &= (flat >= flat.quantile(0.5, dim=1, keepdim=True)).reshape(loop.shape)
        assert torch.equal(keep, expected.double())
        share = keep.flatten(1).mean(1)
        assert (share > 0).all() and (share <= 0.5 + 1e-9).all()
    again = fastattr.multi_layer_iba(resnet, z, torch.tensor([1, 7]), layers=["layer2", "layer3"], statistics=stats,
                                     steps=2, generator=8)
    assert torch.equal(again, keep)


def test_inverse_regression_and_multi_layer_bad_input():
    model, x_train, _ = _digits(50)
    x = x_train[:2]
    stats = fastattr.iba_statistics(model, "net.2", x_train)
    for loss in ("mse", "rm", "dv"):  # 10 outputs: a regression loss needs the output to read
        with pytest.raises(ValueError, match=f"loss='{loss}'.*10 outputs.*target="):
            fastattr.iba(model, x, layer="net.2", statistics=stats, loss=loss, label=1.0 if loss == "mse" else None)
    with pytest.raises(ValueError, match="loss must be one of"):
        fastattr.iba(model, x, layer="net.2", statistics=stats, loss="l1")
    with pytest.raises(ValueError, match="needs label="):
        fastattr.iba(model, x, 0, layer="net.2", statistics=stats, loss="mse")
    with pytest.raises(ValueError, match="label has 3 entries"):
        fastattr.iba(model, x, 0, layer="net.2", statistics=stats, loss="mse", label=torch.ones(3))
    with pytest.raises(ValueError, match="label is the regression label"):
        fastattr.iba(model, x, layer="net.2", statistics=stats, label=1.0)
    with pytest.raises(TypeError, match="inverse must be a bool"):
        fastattr.iba(model, x, layer="net.2", statistics=stats, inverse="yes")
    good = fastattr.iba(model, x, 0, layer="net.2", statistics=stats, loss="dv", steps=1)  # with a target it runs
    assert good.shape == (2, 8, 8)
    two = [stats, fastattr.iba_statistics(model, "net.0", x_train)]
    with pytest.raises(ValueError, match="layers\\[1\\]: layer 'net.42'"):
        fastattr.multi_layer_iba(model, x, layers=["net.2", "net.42"], statistics=two)
    with pytest.raises(ValueError, match="statistics\\[1\\] are for a layer output"):
        fastattr.multi_layer_iba(model, x, layers=["net.2", "net.2"], statistics=two, steps=1)
    with pytest.raises(ValueError, match="one IBAStatistics per layer"):
        fastattr.multi_layer_iba(model, x, layers=["net.2", "net.0"], statistics=two[:1])
    with pytest.raises(TypeError, match="statistics\\[0\\] must be"):
        fastattr.multi_layer_iba(model, x, layers=["net.2"], statistics=[(stats.mean, stats.std)])
    with pytest.raises(TypeError, match="layers must be a non-empty list"):
        fastattr.multi_layer_iba(model, x, layers="net.2", statistics=[stats])
    with pytest.raises(ValueError, match="beta"):
        fastattr.multi_layer_iba(model, x, layers=["net.2"], statistics=[stats], beta=-0.5)
    with pytest.raises(ValueError, match="steps"):
        fastattr.multi_layer_iba(model, x, layers=["net.2"], statistics=[stats], steps=0)
    with pytest.raises(ValueError, match="quantile"):
        fastattr.multi_layer_iba(model, x, layers=["net.2"], statistics=[stats], quantile=1.0)
