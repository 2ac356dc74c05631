"""Several methods on the same inputs with their common passes shared (``explain_all``,
``smoothgrad_variants``, AGG's methods): every map equal to its method's own call, the passes
counted, the model and inputs untouched, bad methods named."""
import pytest
import torch

import fastattr
from fastattr.attribution import explain_all, smoothgrad_variants
from fastattr.attribution.shared import method_function
from tests.integrations.models import cnn, digits

SETTINGS = {"n_samples": 4, "stdev_spread": 0.2, "generator": 3}
METHODS = {
    "sal": "saliency",
    "signed": ("saliency", {"abs": False}),
    "ixg": "input_x_gradient",
    "ig": ("integrated_gradients", {"n_steps": 5}),
    "sg": ("smoothgrad", SETTINGS),
    "sg_sq": ("smoothgrad", {**SETTINGS, "variant": "smoothgrad_sq"}),
    "vg": ("smoothgrad", {**SETTINGS, "variant": "vargrad"}),
    "own": lambda m, x, t: fastattr.guided_backprop(m, x, t),
}


class Counting(torch.nn.Module):
    """A model that counts the rows it is run on."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.model(x)


def _setup(n=6):
    x, _ = digits(n, offset=40)
    model = cnn()
    return model, x, model(x).argmax(1)


def test_every_map_equals_its_own_call():
    model, x, t = _setup()
    maps = explain_all(model, x, t, methods=METHODS)
    assert list(maps) == list(METHODS)
    for name, method in METHODS.items():
        alone = method_function(name, method, {})(model, x, t)
        assert torch.equal(maps[name], alone), name
    assert not torch.equal(maps["sal"], maps["signed"]) and (maps["sal"] - maps["signed"].abs()).abs().max() == 0
    assert torch.equal(maps["ixg"], x * maps["signed"])
    torch.testing.assert_close(maps["vg"], maps["sg_sq"] - maps["sg"] ** 2)


def test_shared_passes_run_once():
    model, x, t = _setup()
    counted = Counting(model).eval()
    explain_all(counted, x, t, methods={"sal": "saliency", "ixg": "input_x_gradient",
                                        "sg": ("smoothgrad", SETTINGS),
                                        "vg": ("smoothgrad", {**SETTINGS, "variant": "vargrad"})})
    shared = counted.rows
    counted.rows = 0
    for method in ("saliency", "input_x_gradient"):
        fastattr.attribution.METHODS[method](counted, x, t)
    for variant in ("smoothgrad", "vargrad"):
        fastattr.smoothgrad(counted, x, t, variant=variant, **SETTINGS)
    separate = counted.rows
    b, draws = x.shape[0], SETTINGS["n_samples"]
    # each call checks the given target with one forward of two inputs; each gradient pass is one forward
    assert shared == 2 + (2 + b) + (2 + draws * b)
    assert separate == 2 * (2 + b) + 2 * (2 + draws * b)


def test_only_settings_that_give_the_same_passes_are_shared():
    model, x, t = _setup()
    counted = Counting(model).eval()
    explain_all(counted, x, t, methods={"a": ("smoothgrad", SETTINGS),
                                        "b": ("smoothgrad", {**SETTINGS, "n_samples": 3, "variant": "vargrad"})})
    b = x.shape[0]
    assert counted.rows == 2 + (2 + 4 * b) + (2 + 3 * b)
    # one torch.Generator: separate calls draw in turn, so sharing would change the second map
    gen = torch.Generator().manual_seed(0)
    maps = explain_all(model, x, t, methods={"a": ("smoothgrad", {"n_samples": 2, "generator": gen}),
                                             "b": ("smoothgrad", {"n_samples": 2, "generator": gen})})
    assert not torch.equal(maps["a"], maps["b"])
    again = torch.Generator().manual_seed(0)
    first = fastattr.smoothgrad(model, x, t, n_samples=2, generator=again)
    assert torch.equal(maps["a"], first)
    assert torch.equal(maps["b"], fastattr.smoothgrad(model, x, t, n_samples=2, generator=again))


def test_smoothgrad_variants_match_smoothgrad_and_their_definition():
    model, x, t = _setup()
    maps = smoothgrad_variants(model, x, t, abs=True, **SETTINGS)
    assert set(maps) == {"smoothgrad", "smoothgrad_sq", "vargrad"}
    for variant, m in maps.items():
        assert torch.equal(m, fastattr.smoothgrad(model, x, t, variant=variant, abs=True, **SETTINGS))
    # written out: one full-batch draw of N(0, σ²) per sample, σ = spread · (max x − min x) per example
    gen = torch.Generator().manual_seed(SETTINGS["generator"])
    flat = x.reshape(x.shape[0], -1)
    sigma = (SETTINGS["stdev_spread"] * (flat.amax(1) - flat.amin(1))).view(-1, 1, 1, 1)
    grads = []
    for _ in range(SETTINGS["n_samples"]):
        z = (x + sigma * torch.randn(x.shape, generator=gen, dtype=x.dtype)).requires_grad_(True)
        (g,) = torch.autograd.grad(model(z).gather(1, t[:, None]).sum(), z)
        grads.append(g)
    g = torch.stack(grads)
    torch.testing.assert_close(maps["smoothgrad"], g.abs().mean(0))
    torch.testing.assert_close(maps["smoothgrad_sq"], (g * g).mean(0))
    torch.testing.assert_close(maps["vargrad"], (g * g).mean(0) - g.abs().mean(0) ** 2)
    with pytest.raises(ValueError, match="variant must be one of"):
        smoothgrad_variants(model, x, t, variants=("smoothgrad", "var"))
    with pytest.raises(ValueError, match="variants must be a non-empty sequence"):
        smoothgrad_variants(model, x, t, variants="vargrad")


def test_aggregate_with_settings_equals_aggregate_with_functions():
    model, x, t = _setup(4)
    named = {"sal": "saliency", "ixg": "input_x_gradient", "sg": ("smoothgrad", SETTINGS),
             "vg": ("smoothgrad", {**SETTINGS, "variant": "vargrad"})}
    functions = {name: method_function(name, m, {}) for name, m in named.items()}
    a = fastattr.aggregate(model, x, t, methods=named, n_samples=3, generator=1)
    b = fastattr.aggregate(model, x, t, methods=functions, n_samples=3, generator=1)
    assert torch.equal(a.weights, b.weights) and torch.equal(a.G, b.G) and torch.equal(a.attribution, b.attribution)


def test_model_and_inputs_untouched_and_bad_methods_named():
    model, x, t = _setup()
    before_x, before_p = x.clone(), [p.clone() for p in model.parameters()]
    flags = [p.requires_grad for p in model.parameters()]
    explain_all(model, x, t, methods=METHODS)
    assert torch.equal(x, before_x) and all(torch.equal(a, b) for a, b in zip(model.parameters(), before_p))
    assert [p.requires_grad for p in model.parameters()] == flags
    with pytest.raises(ValueError, match=r"methods\['x'\] = 'smoothgrd' is not one of"):
        explain_all(model, x, t, methods={"x": ("smoothgrd", {})})
    with pytest.raises(TypeError, match=r"methods\['x'\] must be"):
        explain_all(model, x, t, methods={"x": ("smoothgrad", 3)})
    with pytest.raises(TypeError, match="abs must be a bool"):
        explain_all(model, x, t, methods={"a": ("saliency", {"abs": 1}), "b": "input_x_gradient"})
    with pytest.raises(ValueError, match="methods must be a non-empty dict"):
        explain_all(model, x, t, methods={})
    with pytest.raises(TypeError, match=r"methods\['m'\] must be a method name.*got a tensor"):
        explain_all(model, x, t, methods={"m": x})


def test_a_bad_setting_gets_its_methods_own_error_and_every_map_is_its_own():
    model, x, t = _setup()
    sg = ("smoothgrad", SETTINGS)
    bad = {"abs": ("smoothgrad", {**SETTINGS, "variant": "vargrad", "abs": 1}),
           "n_samples": ("smoothgrad", {**SETTINGS, "variant": "vargrad", "n_samples": 4.0}),
           "max_batch": ("input_x_gradient", {"max_batch": 4.0}),
           "variant": ("smoothgrad", {**SETTINGS, "variant": ["vargrad"]}),
           "variant name": ("smoothgrad", {**SETTINGS, "variant": "var_grad"})}
    errors = {"abs": "abs must be a bool", "n_samples": "n_samples must be an int",
              "max_batch": "max_batch must be a positive int", "variant": "variant must be one of",
              "variant name": "variant must be one of"}
    for key, method in bad.items():
        first = ("saliency", {"max_batch": 4}) if key == "max_batch" else sg
        with pytest.raises((TypeError, ValueError), match=errors[key]):
            explain_all(model, x, t, methods={"a": first, "b": method})
    with pytest.raises(TypeError, match=r"smoothgrad\(\) got an unexpected keyword argument 'n_sample'"):
        explain_all(model, x, t, methods={"a": ("smoothgrad", {"n_sample": 2}),
                                          "b": ("smoothgrad", {"n_sample": 2, "variant": "vargrad"})})
    maps = explain_all(model, x, t, methods={"a": sg, "b": sg, "s": ("saliency", {"abs": False}),
                                             "s2": ("saliency", {"abs": False}), "i": "input_x_gradient"})
    assert torch.equal(maps["a"], maps["b"]) and torch.equal(maps["s"], maps["s2"])
    assert len({id(m) for m in maps.values()}) == len(maps)
    maps["a"].add_(1.0)
    assert not torch.equal(maps["a"], maps["b"])
