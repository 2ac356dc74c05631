"""fastattr.metrics.model_randomisation (Adebayo et al. 2018; Quantus 0.6 MPRT): spearman equals
scipy per example, the layers and their order follow Quantus, the user's model is never changed, and
bad arguments are named."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import fastattr
from fastattr.metrics import model_randomisation
from fastattr.metrics.randomisation import spearman, ssim
from tests.models import batchnorm_with_statistics


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), batchnorm_with_statistics(3, affine=True), nn.Softplus(),
                         nn.Flatten(), nn.Linear(3 * 6 * 6, 4)).double().eval()


def data(n: int = 5):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 6, 6, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0])[:n]


def test_spearman_equals_scipy_with_ties_and_constant_rows():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (5, 30), generator=g).double()
    b = torch.randn(5, 30, generator=g, dtype=torch.float64)
    b[1] = b[1].round()
    a[3] = 2.0
    with np.errstate(all="ignore"), pytest.warns(stats.ConstantInputWarning):
        ref = [stats.spearmanr(a[i].numpy(), b[i].numpy())[0] for i in range(5)]
    np.testing.assert_allclose(spearman(a, b).numpy(), ref, rtol=1e-12, atol=1e-14, equal_nan=True)


def _by_hand(model, x, y, order, mode, seed, sim):
    """The test written out: Quantus's layer rule and seeding, saliency as the explanation."""
    e0 = fastattr.saliency(model, x, y)
    m = copy.deepcopy(model)
    layers = [(n, l) for n, l in m.named_modules() if hasattr(l, "reset_parameters")]
    layers = layers[::-1] if order == "top_down" else layers
    start = copy.deepcopy(m.state_dict())
    out = {}
    for name, layer in layers:
        if mode == "independent":
            m.load_state_dict(start)
        torch.manual_seed(seed)
        layer.reset_parameters()
        out[name] = sim(e0.flatten(1), fastattr.saliency(m, x, y).flatten(1))
    return out


@pytest.mark.parametrize("mode", ["cascading", "independent"])
@pytest.mark.parametrize("order", ["top_down", "bottom_up"])
@pytest.mark.parametrize("similarity", ["spearman", "ssim"])
def test_equals_the_test_written_out(mode, order, similarity):
    x, y = data()
    model = net()
    want = _by_hand(net(), x, y, order, mode, 7, {"spearman": spearman, "ssim": ssim}[similarity])
    rng = torch.get_rng_state()
    got = model_randomisation(model, x, fastattr.saliency, y, mode=mode, layer_order=order, generator=7,
                              similarity=similarity, max_batch=2)
    assert torch.equal(torch.get_rng_state(), rng)
    assert list(got) == list(want) == (["4", "1", "0"] if order == "top_down" else ["0", "1", "4"])
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-12, atol=1e-14, equal_nan=True)
        assert got[k].shape == (5,) and got[k].dtype == torch.float64


def test_model_unchanged_and_train_mode_restored():
    x, y = data()
    model = net().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    req = [p.requires_grad for p in model.parameters()]
    with pytest.warns(UserWarning, match="training mode"):
        out = model_randomisation(model, x, "saliency", similarity=lambda a, b: (a - b).abs().sum(1))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert flags == [m.training for m in model.modules()] and req == [p.requires_grad for p in model.parameters()]
    assert all(v.shape == (5,) for v in out.values())


def test_attributions_given_are_the_reference():
    x, y = data()
    a = fastattr.saliency(net(), x, y)
    ours = model_randomisation(net(), x, fastattr.saliency, y, attributions=a)
    default = model_randomisation(net(), x, fastattr.saliency, y)
    for k in default:
        torch.testing.assert_close(ours[k], default[k])


def test_bad_arguments_named():
    x, y = data()
    with pytest.raises(ValueError, match="mode"):
        model_randomisation(net(), x, fastattr.saliency, y, mode="sideways")
    with pytest.raises(ValueError, match="layer_order"):
        model_randomisation(net(), x, fastattr.saliency, y, layer_order="independent")
    with pytest.raises(ValueError, match="similarity"):
        model_randomisation(net(), x, fastattr.saliency, y, similarity="hog")
    with pytest.raises(ValueError, match="explain"):
        model_randomisation(net(), x, lambda m, z, t: torch.zeros(z.shape[0] + 1, 3), y)
    calls = []

    def shifty(m, z, t):  # the right shape for the original model only
        calls.append(1)
        return torch.zeros(z.shape[0], 36 if len(calls) == 1 else 35, dtype=z.dtype)
    with pytest.raises(ValueError, match="explain returns"):
        model_randomisation(net(), x, shifty, y)
    with pytest.raises(ValueError, match="attributions"):
        model_randomisation(net(), x, fastattr.saliency, y, attributions=torch.zeros(2, 36))
    with pytest.raises(TypeError, match="model"):
        model_randomisation(lambda z: net()(z), x, fastattr.saliency, y)


def test_a_dict_of_methods_randomises_each_layer_once(monkeypatch):
    from fastattr.metrics import randomisation

    x, y = data()
    model = net()
    methods = {"saliency": fastattr.saliency, "ixg": "input_x_gradient",
               "ig": lambda m, z, t: fastattr.integrated_gradients(m, z, t, n_steps=3)}
    resets, forwards = [], []
    reinitialise = randomisation._reinitialise
    monkeypatch.setattr(randomisation, "_reinitialise", lambda layer, seed: (resets.append(seed),
                                                                            reinitialise(layer, seed)))
    handle = model.register_forward_pre_hook(lambda m, args: forwards.append(args[0].shape[0]))  # copies too
    try:
        for mode in ("cascading", "independent"):
            resets.clear()
            forwards.clear()
            shared = model_randomisation(model, x, methods, y, mode=mode, generator=torch.Generator().manual_seed(4))
            n_shared, r_shared = len(forwards), len(resets)
            forwards.clear()
            alone = {name: model_randomisation(model, x, fn, y, mode=mode, generator=torch.Generator().manual_seed(4))
                     for name, fn in methods.items()}
            assert r_shared == 3 and len(resets) == 3 + 3 * len(methods)  # one re-initialisation per layer
            assert len(forwards) - n_shared == len(methods) - 1  # the target check, once
            assert list(shared) == list(methods)
            for name in methods:
                assert list(shared[name]) == list(alone[name]) == ["4", "1", "0"]
                for layer in alone[name]:
                    torch.testing.assert_close(shared[name][layer], alone[name][layer], rtol=0, atol=0,
                                               equal_nan=True)
    finally:
        handle.remove()
    with pytest.raises(ValueError, match=r"explain\['short'\] returns"):
        model_randomisation(model, x, {"s": "saliency", "short": lambda m, z, t: z.flatten(1)[:, :36 - (m is not model)]},
                            y)
    with pytest.raises(ValueError, match=r"attributions\['s'\] must be e\(x\)"):
        model_randomisation(model, x, {"s": "saliency"}, y, attributions={"s": x[:2]})
