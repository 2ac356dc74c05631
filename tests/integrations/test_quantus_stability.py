"""fastattr.integrations.quantus's RelativeInputStability, RelativeOutputStability and
RelativeRepresentationStability, and fastattr.metrics.relative_stability, give Quantus 0.6's scores
on real digits and the digits CNN (tests/integrations/models.py, in float32 as Quantus runs it;
explain = saliency).

Replayed draws: Quantus perturbs with ``np.random.uniform`` (``batch_uniform_noise``), one draw of
the whole batch per sample, batch after batch; fastattr draws the same shapes in the same order from
its torch generator (:func:`fastattr.metrics.robustness.uniform_noise`). The test replaces
``np.random.uniform`` by those draws, so both libraries run on identical perturbations."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fastattr
from fastattr.integrations import quantus as fq
from fastattr.metrics import relative_stability
from fastattr.metrics.robustness import uniform_noise
from tests.integrations.models import cnn, digits

quantus = pytest.importorskip("quantus")

KINDS = {"input": "RelativeInputStability", "output": "RelativeOutputStability",
         "representation": "RelativeRepresentationStability"}


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("PYTEST", "1")  # Quantus's switch for its warnings


def model32() -> nn.Module:
    return cnn().float()


def data(n: int = 6):
    x, _ = digits(n)
    x = x.float()
    return x.numpy(), model32()(x).argmax(1).numpy()


def saliency_explain(model, inputs, targets, **kwargs):
    return fastattr.saliency(model, torch.as_tensor(inputs, dtype=torch.float32), torch.as_tensor(targets)).numpy()


def replay(monkeypatch, seed: int) -> None:
    """``np.random.uniform`` returns fastattr's draws from ``seed`` (same shapes, same order)."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(low=0.0, high=1.0, size=None):
        return uniform_noise(gen, torch.empty(size, dtype=torch.float32), low, high).numpy().astype(np.float64)

    monkeypatch.setattr(np.random, "uniform", uniform)


def close(ours, theirs):
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    np.testing.assert_allclose(ours, theirs, rtol=2e-6, equal_nan=True)  # float32 round-off


@pytest.mark.parametrize("name,kw,call", [
    ("RelativeInputStability", {}, {}),
    ("RelativeOutputStability", {}, dict(batch_size=4)),
    ("RelativeOutputStability", {}, dict(softmax=True)),
    ("RelativeRepresentationStability", {}, {}),
    ("RelativeRepresentationStability", dict(layer_names=["4", "8"]), dict(batch_size=4)),
    ("RelativeRepresentationStability", dict(layer_indices=[0, -3]), {}),  # -3: of named_modules, unfiltered
    ("RelativeInputStability", dict(abs=True, normalise=True), dict(a_batch="given")),
    ("RelativeRepresentationStability", dict(normalise=True, normalise_func_kwargs={"normalise_axes": (1, 2, 3)}), {}),
    ("RelativeInputStability", dict(perturb_func_kwargs=dict(lower_bound=0.1, upper_bound=None)), {}),
    ("RelativeOutputStability", dict(perturb_func_kwargs=dict(lower_bound=-5.0, upper_bound=5.0)), {}),  # NaN
    ("RelativeInputStability", dict(perturb_func_kwargs=dict(lower_bound=-5.0, upper_bound=5.0),
                                    return_nan_when_prediction_changes=False, eps_min=1e-3), {}),
    ("RelativeInputStability", dict(return_aggregate=True), {}),
])
def test_equal_to_quantus_on_replayed_noise(monkeypatch, name, kw, call):
    x, y = data()
    kw = dict(nr_samples=8, disable_warnings=True, **kw)
    call = dict(dict(explain_func=saliency_explain), **call)
    if call.get("a_batch") == "given":
        call["a_batch"] = saliency_explain(model32(), x, y) - 0.01
    ours = getattr(fq, name)(**kw)(model32(), x, y, generator=5, max_batch=20, **call)
    replay(monkeypatch, 5)
    theirs = getattr(quantus, name)(**kw)(model=model32(), x_batch=x, y_batch=y, **call)
    assert len(ours) == (1 if kw.get("return_aggregate") else 6)
    close(ours, theirs)
    if kw.get("perturb_func_kwargs", {}).get("upper_bound") == 5.0:
        nan = kw.get("return_nan_when_prediction_changes", True)
        assert np.isnan(ours).any() == nan and not np.isnan(ours).all()


def test_one_call_of_relative_stability_equals_the_three_quantus_metrics(monkeypatch):
    x, y = data()
    ours = relative_stability(model32(), torch.as_tensor(x), fastattr.saliency, torch.as_tensor(y), n_samples=8,
                              generator=2, max_batch=16)
    for kind, name in KINDS.items():
        replay(monkeypatch, 2)
        theirs = getattr(quantus, name)(nr_samples=8, disable_warnings=True)(
            model=model32(), x_batch=x, y_batch=y, a_batch=None, explain_func=saliency_explain)
        close(ours[kind].numpy(), theirs)
        close(getattr(fq, name)(nr_samples=8)(model32(), x, y, explain_func=saliency_explain, generator=2), theirs)


class Scaled(nn.Module):
    """The CNN on ``scale · x``: a model taking ``model_predict_kwargs``."""

    def __init__(self):
        super().__init__()
        self.net = model32()

    def forward(self, z, scale=1.0):
        return self.net(z * scale)


@pytest.mark.parametrize("softmax", [True, False])
def test_a_model_ending_in_softmax_and_model_predict_kwargs(monkeypatch, softmax):
    x, y = data()
    kw = dict(nr_samples=6, disable_warnings=True)
    cases = [("RelativeOutputStability", {}, nn.Sequential(model32(), nn.Softmax(-1)).eval(), {}),
             ("RelativeRepresentationStability", dict(layer_names=["0.4", "0.8"]),
              nn.Sequential(model32(), nn.Softmax(-1)).eval(), {})]
    if not softmax:  # Quantus wraps the model in a Sequential with softmax=True, which takes no kwargs
        cases.append(("RelativeOutputStability", {}, Scaled().eval(), dict(model_predict_kwargs={"scale": 0.5})))
    for name, layers, model, call in cases:
        call = dict(call, explain_func=saliency_explain, softmax=softmax)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the drop-in's copy without the softmax runs in eval mode
            ours = getattr(fq, name)(**kw, **layers)(model, x, y, generator=1, **call)
        replay(monkeypatch, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Quantus warns on a model ending in softmax
            theirs = getattr(quantus, name)(**kw, **layers)(model=model, x_batch=x, y_batch=y, **call)
        close(ours, theirs)


def test_bad_input_is_named():
    x, y = data(3)
    with pytest.raises(ValueError, match="layer_names or layer_indices"):
        fq.RelativeRepresentationStability(layer_names=["4"], layer_indices=[0])
    with pytest.raises(ValueError, match="layer_names"):
        fq.RelativeRepresentationStability(layer_names=["conv9"])(model32(), x, y, explain_func=saliency_explain)
    with pytest.raises(NotImplementedError, match="perturb_func"):
        fq.RelativeInputStability(perturb_func=quantus.functions.perturb_func.gaussian_noise)
    with pytest.raises(ValueError, match="eps_min"):
        fq.RelativeOutputStability(eps_min=0)
    with pytest.raises(ValueError, match="nr_samples"):
        fq.RelativeInputStability(nr_samples=0)
    with pytest.raises(ValueError, match="explain_func"):
        fq.RelativeInputStability()(model32(), x, y, a_batch=saliency_explain(model32(), x, y))
    with pytest.raises(ValueError, match="explain_func"):
        fq.RelativeInputStability()(model32(), x, y, explain_func=lambda model, inputs, targets, **k: inputs[:, :, :4])
    with pytest.raises(TypeError, match="return_nan_when_prediction_changes"):
        fq.RelativeInputStability(return_nan_when_prediction_changes=1)


def test_directions_are_quantus_score_directions():
    for kind, name in KINDS.items():
        assert fastattr.metrics.BETTER[f"relative_{kind}_stability"] == \
            getattr(quantus, name).score_direction.value.lower()
