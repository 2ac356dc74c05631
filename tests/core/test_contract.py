"""The model contract every entry point applies (issue 15, first part): inputs whose floating dtype
differs from the model's, inputs the model cannot run (wrong rank), models that return no tensor,
gradient methods under ``torch.inference_mode`` and empty batches get one clear error naming the
argument, and option values that used to be accepted silently are refused."""
import pytest
import torch
from torch import nn

import fastattr
import fastattr.metrics as M
from tests.models import rand, small_cnn


class TupleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = small_cnn()
        self.eval()

    def forward(self, x):
        return self.net(x), x.mean()


ENTRY_POINTS = {
    "saliency": lambda m, x: fastattr.saliency(m, x, 0),
    "integrated_gradients": lambda m, x: fastattr.integrated_gradients(m, x, 0, n_steps=4),
    "smoothgrad": lambda m, x: fastattr.smoothgrad(m, x, 0, n_samples=2),
    "grad_cam": lambda m, x: fastattr.grad_cam(m, x, 0, layer=m.net[0] if hasattr(m, "net") else m[0]),
    "occlusion": lambda m, x: fastattr.occlusion(m, x, 0),
    "feature_ablation": lambda m, x: fastattr.feature_ablation(m, x, 0),
    "rise": lambda m, x: fastattr.rise(m, x, 0, n_masks=4),
    "deletion": lambda m, x: M.deletion(m, x, torch.ones(x.shape[0], *x.shape[2:], dtype=x.dtype), 0),
    "infidelity": lambda m, x: M.infidelity(m, x, torch.ones(x.shape[0], *x.shape[2:], dtype=x.dtype), 0,
                                            n_subsets=4),
}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_float_inputs_of_another_dtype_than_the_model_are_named(name):
    model, x = small_cnn(), rand(2, 3, 8, 8).float()  # a float64 model, float32 inputs
    with pytest.raises(TypeError, match=r"inputs have dtype torch.float32 but the model's parameters are torch.float64"):
        ENTRY_POINTS[name](model, x)


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_inputs_the_model_cannot_run_are_named_with_their_shape(name):
    model, x = small_cnn(), rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"the model could not run inputs of shape \(3, 8, 8\)") as info:
        ENTRY_POINTS[name](model, x[0])
    assert info.value.__cause__ is not None  # chained to the model's own error
    assert isinstance(info.value, RuntimeError)  # still what the model raised, for code catching that



@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_a_model_that_returns_a_tuple_is_named(name):
    with pytest.raises(TypeError, match=r"model returned a tuple"):
        ENTRY_POINTS[name](TupleModel(), rand(2, 3, 8, 8))


@pytest.mark.parametrize("name", ["saliency", "integrated_gradients", "smoothgrad", "grad_cam"])
def test_gradient_methods_say_that_inference_mode_is_on(name):
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        ENTRY_POINTS[name](small_cnn(), rand(2, 3, 8, 8))


def test_integer_token_ids_stay_valid_for_the_perturbation_methods():
    emb = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(20, 3)).double().eval()
    ids = torch.randint(0, 10, (2, 5), generator=torch.Generator().manual_seed(0))
    a = fastattr.feature_ablation(emb, ids, 0)
    assert a.shape == (2, 5) and torch.isfinite(a).all()


def test_empty_batches_and_silently_accepted_options_are_refused():
    model, x = small_cnn(), rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="inputs must have a non-empty batch"):
        fastattr.trim(model, x[:0], 0)
    with pytest.raises(TypeError, match="abs must be a bool"):
        fastattr.saliency(model, x, 0, abs="no")
    with pytest.raises(TypeError, match="return_convergence_delta must be a bool"):
        fastattr.integrated_gradients(model, x, 0, n_steps=4, return_convergence_delta="yes")
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="stdev must be a finite number >= 0"):
            fastattr.smoothgrad(model, x, 0, n_samples=2, stdev=bad)
    with pytest.raises(ValueError, match="stdev_spread must be a finite number >= 0"):
        fastattr.smoothgrad(model, x, 0, n_samples=2, stdev_spread=-1.0)
    with pytest.raises(ValueError, match="references must be a tensor"):
        fastattr.expected_gradients(model, x, 0, references=torch.zeros(3, 3, 4, 4, dtype=x.dtype))


def test_batch_coupled_names_the_modules_that_couple_a_forwards_rows():
    """Batch statistics (training mode, or no running statistics) and dropout in training mode couple the
    examples of a forward; a model merely left in training mode does not."""
    assert not fastattr.core.batch_coupled(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    assert fastattr.core.batch_coupled(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    assert not fastattr.core.batch_coupled(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).eval())
    assert fastattr.core.batch_coupled(nn.BatchNorm1d(2, track_running_stats=False).eval())
    assert fastattr.core.batch_coupled(nn.Dropout(0.1)) and not fastattr.core.batch_coupled(nn.Dropout(0.0))
    assert not fastattr.core.batch_coupled(nn.Dropout(0.1).eval())
    assert fastattr.core.batch_coupled(nn.LSTM(3, 3, 2, dropout=0.2)) and not fastattr.core.batch_coupled(nn.LSTM(3, 3))
    with pytest.warns(UserWarning, match="dropout"):
        one_layer = nn.LSTM(3, 3, 1, dropout=0.2)   # torch applies an RNN's dropout between layers only
    assert not fastattr.core.batch_coupled(one_layer)
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    assert fastattr.core.batch_coupled(lambda z: net(z)[:, 0])   # the modules a function closes over


def test_modules_of_reads_what_a_function_loads_as_globals_not_attribute_names():
    """A function's globals are the names it loads as globals: ``net.fc`` names ``fc`` as an attribute, so an
    unrelated global ``fc`` is not the model's; a bound method of a holder that is not a module reaches the
    holder's attributes; an object that cannot be read (a dead weak proxy) is skipped."""
    import weakref

    from fastattr.core.contract import modules_of

    net = nn.Sequential(nn.Linear(2, 2))
    net.fc = nn.Linear(2, 2)
    gone = nn.Linear(2, 2)
    namespace = {"net": net, "fc": nn.Linear(2, 2), "dead": weakref.proxy(gone), "flag": False}
    exec("def through_attribute(x):\n    return net.fc(x)\n"
         "def with_dead(x):\n    return dead(x) if flag else net(x)\n", namespace)
    del gone
    assert modules_of(namespace["through_attribute"]) == [net]
    assert modules_of(namespace["with_dead"]) == [net]

    class Holder:
        def __init__(self, model):
            self.model = model

        def predict(self, x):
            return self.model(x)

    assert modules_of(Holder(net).predict) == [net]
    assert modules_of(net.forward) == [net]
