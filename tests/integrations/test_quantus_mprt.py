"""fastattr.integrations.quantus.MPRT gives Quantus 0.6's MPRT scores on real digits
(tests/integrations/models.py) with a saliency explain_func: the same layers (modules with
``reset_parameters``) in the same order, the same re-initialisation (``torch.manual_seed(seed + 1)``
per layer), Quantus's abs / normalise per batch of ``batch_size`` and its Spearman similarity."""
import numpy as np
import pytest
import torch

from fastattr.integrations import quantus as fq
from tests.integrations.models import cnn, digits
from tests.integrations.test_quantus_more import saliency_explain, signed_explain

quantus = pytest.importorskip("quantus")


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("PYTEST", "1")  # Quantus's switch for its warnings


def close(ours, theirs):
    np.testing.assert_allclose(np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64),
                               rtol=1e-9, atol=1e-12, equal_nan=True)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("kw", [{}, dict(layer_order="bottom_up"), dict(layer_order="independent"),
                                dict(return_average_correlation=True), dict(return_last_correlation=True),
                                dict(skip_layers=True), dict(abs=False, normalise=False, seed=3),
                                dict(return_last_correlation=True, return_aggregate=True)])
def test_mprt_equals_quantus(kw):
    x, y = digits(10)
    x, y = x.numpy(), y.numpy()
    kw = dict(kw, disable_warnings=True)
    theirs = quantus.MPRT(**kw)(model=cnn(), x_batch=x, y_batch=y, explain_func=saliency_explain, batch_size=4)
    model = cnn()  # seeds the global RNG
    rng = torch.get_rng_state()
    ours = fq.MPRT(**kw)(model, x, y, explain_func=saliency_explain, batch_size=4)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is left alone (Quantus reseeds it)
    if isinstance(theirs, dict):
        assert list(ours) == list(theirs)
        for k in theirs:
            close(ours[k], theirs[k])
    else:
        close(ours, theirs)


@pytest.mark.filterwarnings("ignore")
def test_mprt_with_a_batch_and_custom_similarity_equals_quantus():
    x, y = digits(6)
    x, y = x.numpy(), y.numpy()
    a = signed_explain(cnn(), x, y)  # not what explain_func gives: "original" below 1
    sim = quantus.similarity_func.correlation_pearson
    kw = dict(disable_warnings=True, similarity_func=sim, abs=False)
    theirs = quantus.MPRT(**kw)(model=cnn(), x_batch=x, y_batch=y, a_batch=a.copy(), explain_func=saliency_explain)
    ours = fq.ModelParameterRandomisation(**kw)(cnn(), x, y, a, explain_func=saliency_explain)
    assert list(ours) == list(theirs)
    for k in theirs:
        close(ours[k], theirs[k])


@pytest.mark.filterwarnings("ignore")
def test_mprt_leaves_the_model_unchanged():
    x, y = digits(4)
    model = cnn()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    fq.MPRT(disable_warnings=True)(model, x.numpy(), y.numpy(), explain_func=saliency_explain)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert flags == [m.training for m in model.modules()]


def test_mprt_bad_arguments_named():
    with pytest.raises(ValueError, match="layer_order"):
        fq.MPRT(layer_order="sideways")
    with pytest.raises(ValueError, match="return_last_correlation"):
        fq.MPRT(return_average_correlation=True, return_last_correlation=True)
    x, y = digits(2)
    with pytest.raises(ValueError, match="explain_func"):
        fq.MPRT(disable_warnings=True)(cnn(), x.numpy(), y.numpy(), a_batch=np.arange(128.0).reshape(2, 1, 8, 8))
