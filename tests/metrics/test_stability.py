"""Relative stability (Agarwal et al. 2022) against a slow loop — one perturbation at a time, every
perturbed batch explained and run on its own, Quantus 0.6's formulas written out — on the digits CNN;
the three kinds from one perturbation set equal each computed alone; bad input is named. Agreement
with Quantus itself is in tests/integrations/test_quantus_stability.py."""
import math

import pytest
import torch
from torch import nn

import fastattr
from fastattr.metrics import relative_stability
from fastattr.metrics.stability import KINDS, hidden_layers
from tests.integrations.models import cnn, digits

EPS = 1e-6


def rel(a, b, relative=True):
    """``‖(a − b) ⊘ a‖₂`` per row, a zero divisor entry replaced by ε_min (Quantus's objectives)."""
    d = (a - b) / torch.where(a == 0, EPS, a) if relative else a - b
    return torch.linalg.vector_norm(d.flatten(1), dim=1)


def slow(model, x, t, layers, *, low, high, n, seed):
    """Per-sample objectives ``{kind: [B, n]}`` and the label flips ``[B, n]``."""
    gen = torch.Generator().manual_seed(seed)
    reps = []
    hooks = [m.register_forward_hook(lambda m, i, o: reps.append(o.detach().flatten(1))) for m in layers]

    def forward(z):
        reps.clear()
        with torch.no_grad():
            out = model(z)
        return out, torch.cat(reps, 1)

    h_x, l_x = forward(x)
    e_x = fastattr.saliency(model, x, t)
    out = {k: torch.empty(x.shape[0], n, dtype=torch.float64) for k in ("input", "output", "representation")}
    flips = torch.empty(x.shape[0], n, dtype=torch.bool)
    for j in range(n):
        xp = x + (low + (high - low) * torch.rand(x.shape, generator=gen, dtype=x.dtype))
        h, rep = forward(xp)
        num = rel(e_x, fastattr.saliency(model, xp, t))
        for kind, den in (("input", rel(x, xp)), ("output", rel(h_x, h, False)), ("representation", rel(l_x, rep))):
            out[kind][:, j] = num / torch.where(den == 0, EPS, den)
        flips[:, j] = h.argmax(1) != h_x.argmax(1)
    for hook in hooks:
        hook.remove()
    return out, flips


@pytest.fixture(scope="module")
def case():
    x, _ = digits(6)
    model = cnn()
    return model, x, model(x).argmax(1).roll(1)  # explain other classes than the predicted ones too


def test_matches_the_slow_loop_in_every_label_mode(case):
    model, x, t = case
    layers = [m for _, m in hidden_layers(model)]
    ref, flips = slow(model, x, t, layers, low=-5.0, high=5.0, n=6, seed=4)
    assert flips.any(1).sum() >= 2 and (~flips).any(1).all()  # some examples flip, none always
    for max_batch in (5, None):
        got = {mode: relative_stability(model, x, fastattr.saliency, t, n_samples=6, radius=5.0, generator=4,
                                        label_preserving=mode, max_batch=max_batch)
               for mode in ("quantus", "max_over_preserving", "all")}
        for kind, values in ref.items():
            kw = dict(rtol=1e-9, atol=0, equal_nan=True)
            torch.testing.assert_close(got["all"][kind], values.amax(1), **kw)
            torch.testing.assert_close(got["quantus"][kind], values.masked_fill(flips, math.nan).amax(1), **kw)
            torch.testing.assert_close(got["max_over_preserving"][kind],
                                       values.masked_fill(flips, -math.inf).amax(1), **kw)
            assert got["quantus"][kind].isnan().tolist() == flips.any(1).tolist()


def test_three_kinds_from_one_set_equal_each_alone(case):
    model, x, t = case
    kw = dict(n_samples=7, generator=9, layer=["4", model[8]])
    together = relative_stability(model, x, fastattr.saliency, t, max_batch=8, **kw)
    assert list(together) == ["input", "output", "representation"]
    for kind in together:
        alone = relative_stability(model, x, fastattr.saliency, t, kinds=kind, **kw)
        assert list(alone) == [kind]
        torch.testing.assert_close(alone[kind], together[kind], rtol=1e-12, atol=0, equal_nan=True)
    assert all(torch.isfinite(v).all() and (v > 0).all() for v in together.values())


def test_quantus_radius_default_layers_and_the_explain_calls(case):
    model, x, t = case
    sizes = []

    def explain(m, z, target):
        sizes.append(z.shape[0])
        return fastattr.saliency(m, z, target)

    a = fastattr.saliency(model, x, t)
    default = relative_stability(model, x, explain, t, n_samples=5, attributions=a, max_batch=12)
    assert sizes == [12, 12, 6]  # two copies of the batch of 6 per call
    every = relative_stability(model, x, fastattr.saliency, t, n_samples=5, radius=(0.02, 0.2),
                               layer=[name for name, _ in hidden_layers(model)])
    for kind in default:
        torch.testing.assert_close(default[kind], every[kind], rtol=1e-12, atol=0, equal_nan=True)
    by_module = relative_stability(model, x, "saliency", t, kinds=["representation"], n_samples=5, layer=model[4])
    by_name = relative_stability(model, x, "saliency", t, kinds=["representation"], n_samples=5, layer="4")
    torch.testing.assert_close(by_module["representation"], by_name["representation"], rtol=0, atol=0)
    assert not torch.allclose(by_name["representation"], default["representation"])


def test_bad_input_is_named(case):
    model, x, t = case
    call = lambda **kw: relative_stability(model, x, fastattr.saliency, t, n_samples=2, **kw)  # noqa: E731
    with pytest.raises(ValueError, match=r"attributions has \(1, 8, 8\) per example but explain returns"):
        relative_stability(model, x, lambda m, z, tt: fastattr.saliency(m, z, tt)[:, :, :4], t, n_samples=2,
                           attributions=fastattr.saliency(model, x, t))
    for wrong in (lambda m, z, tt: z[:1], lambda m, z, tt: z.tolist()):
        with pytest.raises(ValueError, match="explain returned"):
            relative_stability(model, x, wrong, t, n_samples=2)
    with pytest.raises(ValueError, match="explain returned .* for 12 inputs"):  # right for x, wrong for x'
        relative_stability(model, x, lambda m, z, tt: z[:, :, :4] if len(z) > 6 else z, t, n_samples=2)
    with pytest.raises(ValueError, match="layer 'conv9' is not a module"):
        call(layer="conv9")
    with pytest.raises(ValueError, match="layer did not run"):
        call(layer=nn.Linear(2, 2))
    with pytest.raises(TypeError, match="layer"):
        relative_stability(lambda z: model(z), x, fastattr.saliency, t, n_samples=2)
    for radius in (0, -0.1, math.inf, (0.2, 0.1), (0, math.nan), True):
        with pytest.raises(ValueError, match="radius"):
            call(radius=radius)
    with pytest.raises(ValueError, match="n_samples"):
        relative_stability(model, x, fastattr.saliency, t, n_samples=0)
    for kinds in ("inputs", ("input", "input"), (), ("output", "logits")):
        with pytest.raises(ValueError, match="kinds"):
            call(kinds=kinds)
    with pytest.raises(ValueError, match="label_preserving"):
        call(label_preserving="agarwal")
    with pytest.raises(ValueError, match="eps_min"):
        call(eps_min=0)
    with pytest.raises(ValueError, match="attributions"):
        call(attributions=fastattr.saliency(model, x, t)[:2])
    with pytest.raises(ValueError, match="unknown explain method"):
        relative_stability(model, x, "salience", t, n_samples=2)
    # a layer not needed is not resolved: RIS / ROS of a model given as a function
    out = relative_stability(lambda z: model(z), x, fastattr.saliency, t, kinds=("input", "output"), n_samples=2)
    assert set(out) == {"input", "output"}


def _counting_forwards(model):
    """A forward pre-hook counting the model's calls: ``(calls, handle)``."""
    calls = []
    return calls, model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))


def test_a_dict_of_methods_equals_each_alone_with_fewer_forwards(case):
    model, x, t = case
    methods = {"saliency": fastattr.saliency, "ixg": "input_x_gradient",
               "ig": lambda m, z, tt: fastattr.integrated_gradients(m, z, tt, n_steps=3)}
    kw = dict(n_samples=5, generator=torch.Generator().manual_seed(3), max_batch=12, layer=["4", model[8]])
    calls, handle = _counting_forwards(model)
    try:
        shared = relative_stability(model, x, methods, t, **{**kw, "generator": 3})
        n_shared = len(calls)
        calls.clear()
        alone = {name: relative_stability(model, x, fn, t, **{**kw, "generator": torch.Generator().manual_seed(3)})
                 for name, fn in methods.items()}
        n_alone = len(calls)
    finally:
        handle.remove()
    assert list(shared) == list(methods) and all(list(v) == list(KINDS) for v in shared.values())
    assert all(torch.isfinite(v).sum() >= 4 for by in shared.values() for v in by.values())
    for name in methods:
        for kind in KINDS:
            torch.testing.assert_close(shared[name][kind], alone[name][kind], rtol=0, atol=0, equal_nan=True)
    # per method alone: one clean forward and one hooked forward per chunk (3 chunks of 2 samples);
    # the explain calls' own forwards are the same in both
    assert n_alone - n_shared == (len(methods) - 1) * (1 + 3)
    a = {"ixg": fastattr.input_x_gradient(model, x, t)}
    given = relative_stability(model, x, methods, t, attributions=a, kinds="output", **{**kw, "generator": 3})
    torch.testing.assert_close(given["ixg"]["output"], shared["ixg"]["output"], rtol=0, atol=0, equal_nan=True)


def test_dict_call_bad_input_names_the_method(case):
    model, x, t = case
    call = lambda explain, **kw: relative_stability(model, x, explain, t, n_samples=2, **kw)  # noqa: E731
    with pytest.raises(ValueError, match=r"explain\['short'\] returned .* for 12 inputs"):
        call({"ok": fastattr.saliency, "short": lambda m, z, tt: z[:, :, :4] if len(z) > 6 else z})
    with pytest.raises(ValueError, match=r"attributions\['ok'\] has \(1, 8, 8\) per example but explain\['ok'\]"):
        call({"ok": lambda m, z, tt: z[:, :, :4]}, attributions={"ok": x})
    with pytest.raises(ValueError, match=r"attributions\['ok'\] must be e\(x\)"):
        call({"ok": fastattr.saliency}, attributions={"ok": x[:2]})
    with pytest.raises(ValueError, match="attributions has methods"):
        call({"ok": fastattr.saliency}, attributions={"other": x})
    with pytest.raises(TypeError, match="attributions must be a dict"):
        call({"ok": fastattr.saliency}, attributions=x)
    with pytest.raises(TypeError, match="only when explain is a dict"):
        call(fastattr.saliency, attributions={"ok": x})
    with pytest.raises(ValueError, match="non-empty dict"):
        call({})
    with pytest.raises(ValueError, match="unknown explain method"):
        call({"ok": "salience"})
