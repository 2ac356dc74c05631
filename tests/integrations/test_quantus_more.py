"""fastattr.integrations.quantus's Sparseness, Complexity and RandomLogit give Quantus 0.6's scores on
real digits (tests/integrations/models.py), with Quantus's preprocessing (abs / normalise, per batch of
``batch_size`` for explain_func's maps) and, for RandomLogit, Quantus's own off-target draws
(``np.random.seed(seed)`` before each batch, reproduced with a private RandomState), so no replay is
needed; :func:`fastattr.metrics.random_logit` takes those draws through ``classes=``."""
import numpy as np
import pytest
import torch

import fastattr
from fastattr.integrations import quantus as fq
from fastattr.metrics import random_logit
from tests.integrations.models import cnn, digits

quantus = pytest.importorskip("quantus")


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("PYTEST", "1")  # Quantus's switch for its warnings


def close(ours, theirs, rtol=1e-9, atol=1e-12):
    np.testing.assert_allclose(np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64),
                               rtol=rtol, atol=atol, equal_nan=True)


def signed_explain(model, inputs, targets, **kwargs):
    """A Quantus explain_func (numpy in and out): input × gradient, signed."""
    x = torch.as_tensor(inputs, dtype=next(model.parameters()).dtype)
    return fastattr.input_x_gradient(model, x, torch.as_tensor(targets)).numpy()


def saliency_explain(model, inputs, targets, **kwargs):
    x = torch.as_tensor(inputs, dtype=next(model.parameters()).dtype)
    return fastattr.saliency(model, x, torch.as_tensor(targets)).numpy()


def data(n: int = 10):
    x, y = digits(n)
    return x.numpy(), y.numpy(), signed_explain(cnn(), x.numpy(), y.numpy())


@pytest.mark.filterwarnings("ignore")  # Quantus warns on abs=False even with disable_warnings
@pytest.mark.parametrize("name", ["Sparseness", "Complexity"])
@pytest.mark.parametrize("kw", [{}, dict(abs=False), dict(normalise=False), dict(abs=False, normalise=False),
                                dict(return_aggregate=True),
                                dict(normalise_func_kwargs={"normalise_axes": (1, 2, 3)})])  # per example
def test_complexity_metrics_equal_quantus(name, kw):
    x, y, a = data()
    kw = dict(kw, disable_warnings=True)
    theirs = getattr(quantus, name)(**kw)(model=None, x_batch=x, y_batch=y, a_batch=a.copy())
    ours = getattr(fq, name)(**kw)(None, x, y, a)
    assert len(ours) == (1 if kw.get("return_aggregate") else 10)
    close(ours, theirs)
    if name == "Complexity" and kw.get("abs") is False:
        assert np.isnan(ours).all()  # signed maps: Quantus's log of negative contributions


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", ["Sparseness", "Complexity"])
def test_complexity_metrics_with_explain_func_channels_and_float32(name):
    x, y, a = data()
    model = cnn()
    kw = dict(explain_func=signed_explain, batch_size=4)  # normalised per batch of 4, as in Quantus
    theirs = getattr(quantus, name)(disable_warnings=True)(model=model, x_batch=x, y_batch=y, a_batch=None, **kw)
    ours = getattr(fq, name)()(model, x, y, None, **kw)
    close(ours, theirs)
    # channel-last inputs, a map without its channel axis, float32 maps (Quantus computes in float32)
    a32 = a[:, 0].astype(np.float32)
    theirs = getattr(quantus, name)(disable_warnings=True)(model=None, x_batch=np.moveaxis(x, 1, -1), y_batch=y,
                                                            a_batch=a32.copy(), channel_first=False)
    close(getattr(fq, name)()(None, np.moveaxis(x, 1, -1), y, a32, channel_first=False), theirs, rtol=1e-5,
          atol=1e-6)
    # the drop-in is fastattr.metrics' function on the normalised map, with Quantus's epsilon
    metric = getattr(fastattr.metrics, name.lower())
    eps = 1e-7 if name == "Sparseness" else 1e-12
    close(getattr(fq, name)()(None, x, y, a), metric(None, torch.as_tensor(x), torch.as_tensor(a / np.abs(a).max()),
                                                     eps=eps))


def quantus_draws(y, num_classes, seed, batch_size):
    """Quantus 0.6 RandomLogit.evaluate_batch's draw, line by line, per batch."""
    out = []
    for i in range(0, len(y), batch_size):
        yb = y[i:i + batch_size]
        n = len(yb)
        np.random.seed(seed)
        classes = np.stack([np.arange(num_classes) for _ in range(n)])
        mask = np.ones_like(classes)
        mask[np.arange(n)[None, :], yb] = 0
        idx = np.random.randint(0, num_classes - 1, n)
        out.append(classes[mask.astype(bool)].reshape(n, -1)[np.arange(n)[None, :], idx].flatten())
    return np.concatenate(out)


@pytest.mark.parametrize("kw,call", [
    (dict(num_classes=10), dict(a_batch=None)),
    (dict(num_classes=10, seed=7), dict(a_batch="given", batch_size=4)),
    (dict(num_classes=10, abs=True), dict(a_batch=None, batch_size=3, explain_func=saliency_explain)),
    (dict(num_classes=10, similarity_func=quantus.similarity_func.correlation_spearman), dict(a_batch=None)),
    (dict(num_classes=10, similarity_func=quantus.similarity_func.ssim, normalise=False), dict(a_batch="given")),
    (dict(num_classes=10, return_aggregate=True), dict(a_batch=None)),
])
def test_random_logit_equals_quantus(kw, call):
    x, y, a = data()
    model = cnn()
    call = dict(dict(explain_func=signed_explain), **call)
    call["a_batch"] = a if call["a_batch"] == "given" else None
    metric = fq.RandomLogit(**kw)
    state = np.random.get_state()[1].copy()
    ours = metric(model, x, y, **call)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # numpy's global state left alone
    theirs = quantus.RandomLogit(disable_warnings=True, **kw)(model=model, x_batch=x, y_batch=y, **call)
    close(ours, theirs)
    draws = quantus_draws(y, 10, kw.get("seed", 42), call.get("batch_size", 64))
    np.testing.assert_array_equal(metric.off_classes(y, call.get("batch_size", 64)), draws)
    assert (draws != y).all()


def test_random_logit_with_fewer_classes_and_the_function_on_replayed_draws():
    x, y, _ = data(40)
    keep = y < 6
    x, y = x[keep], y[keep]
    model = cnn()
    kw = dict(num_classes=6, normalise=False, disable_warnings=True)
    theirs = quantus.RandomLogit(**kw)(model=model, x_batch=x, y_batch=y, a_batch=None, explain_func=signed_explain)
    close(fq.RandomLogit(**kw)(model, x, y, None, explain_func=signed_explain), theirs)
    draws = quantus_draws(y, 6, 42, 64)
    assert draws.max() < 6
    # fastattr.metrics.random_logit on Quantus's draws (no normalisation: the raw maps)
    ours = random_logit(model, torch.as_tensor(x), fastattr.input_x_gradient, torch.as_tensor(y),
                        classes=torch.as_tensor(draws), max_batch=5)
    close(ours.numpy(), theirs)


def test_model_is_not_needed_or_changed():
    x, y, a = data(4)
    model = cnn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for cls in (fq.Sparseness, fq.Complexity):
        assert np.isfinite(cls()(model, x, y, a)).all() and np.isfinite(cls()(None, x, y, a)).all()
        with pytest.warns(UserWarning, match="training mode"):  # explain_func runs the model: guarded
            cls()(model, x, y, None, explain_func=signed_explain)
        assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def zero_explain(model, inputs, targets, **kwargs):
    return np.zeros(inputs.shape, dtype=inputs.dtype)


@pytest.mark.filterwarnings("ignore")
def test_bad_input_raises_where_quantus_does():
    x, y, a = data(4)
    model = cnn()

    def both(lib, ctor, call):
        return getattr(lib, ctor[0])(**({"disable_warnings": True} if lib is quantus else {}), **ctor[1])(
            model=model, x_batch=x, y_batch=call.get("y", y), a_batch=call.get("a", a),
            explain_func=call.get("explain", signed_explain))

    cases = [  # (metric, its keywords), call, what Quantus raises, what ours names
        (("RandomLogit", {}), {}, ValueError, "num_classes"),  # default 1000 classes: targets the model lacks
        (("RandomLogit", dict(num_classes=3)), {}, IndexError, "below num_classes"),  # labels 0..3
        (("RandomLogit", dict(num_classes=10, seed=-1)), {}, ValueError, "seed"),
        (("RandomLogit", dict(num_classes=10)), dict(explain=None), AssertionError, "explain_func"),
        (("RandomLogit", dict(num_classes=10)), dict(a=None, explain=zero_explain), AssertionError, "all zero"),
        (("Sparseness", {}), dict(a=0 * a), AssertionError, "a_batch is all zero"),
        (("Complexity", {}), dict(a=np.ones_like(a)), AssertionError, "a_batch has one value"),
        (("Sparseness", {}), dict(a=None, explain=None), AssertionError, "a_batch or explain_func"),
        (("Complexity", {}), dict(a=a[:, :, :4]), AssertionError, "a_batch of shape"),  # a plain ValueError here
    ]
    for ctor, call, theirs, names in cases:
        with pytest.raises(theirs):
            both(quantus, ctor, call)
        with pytest.raises(ValueError, match=names) as ours:
            both(fq, ctor, call)
        asserts = theirs is AssertionError and names != "a_batch of shape"
        assert isinstance(ours.value, AssertionError) == asserts, (ctor, names)


@pytest.mark.filterwarnings("ignore")
def test_bad_input_quantus_runs_with():
    """Quantus scores these (NaN, or any truthy flag); the drop-ins raise, naming the argument."""
    x, y, a = data(4)
    nan = a.copy()
    nan[0, 0, 0, 0] = np.nan
    assert np.isnan(quantus.Sparseness(disable_warnings=True)(model=None, x_batch=x, y_batch=y, a_batch=nan)[0])
    for cls in (fq.Sparseness, fq.Complexity):
        with pytest.raises(ValueError, match="a_batch contains NaN"):
            cls(normalise=False)(None, x, y, nan)
        with pytest.raises(TypeError, match="abs"):
            cls(abs="yes")
        with pytest.raises(TypeError, match="normalise"):
            cls(normalise=1)
        with pytest.raises(ValueError, match="unexpected keyword"):
            cls(nr_samples=3)
        with pytest.raises(ValueError, match="unexpected keyword"):
            cls()(None, x, y, a, generator=0)
        bad_x = x.copy()
        bad_x[1, 0, 0, 0] = np.inf
        with pytest.raises(ValueError, match="x_batch"):
            cls()(None, bad_x, y, a)
        with pytest.raises(ValueError, match="y_batch"):
            cls()(None, x, y[:2], a)
    with pytest.raises(TypeError, match="return_aggregate"):
        fq.RandomLogit(return_aggregate=0)
    with pytest.raises(ValueError, match="num_classes"):
        fq.RandomLogit(num_classes=1)
    with pytest.raises(ValueError, match="a_batch contains NaN"):
        fq.RandomLogit(num_classes=10, normalise=False)(cnn(), x, y, nan, explain_func=signed_explain)
