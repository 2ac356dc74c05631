"""A model's ``nn.Conv2d`` of one or two input channels, or of channel counts the sparse kernel fits, through
``fastattr.ops.conv.conv2d`` during fastattr's calls on CPU (``fastattr.core.layer_kernels``): the kernels do run, every gradient method's map equals the one with torch's
backward (``fastattr.torch_convolution()``) to rounding and the model's outputs bit for bit, the model is left as it
was (no instance ``forward``, hooks run and stay), and convolutions the kernel does not serve keep torch's call."""
import copy
import pickle

import pytest
import torch
from torch import nn

import fastattr
import fastattr.core.layer_kernels as layers
from fastattr.zoo import load_digits, load_digits_cnn


@pytest.fixture
def counted(monkeypatch):
    calls, op = [], layers.conv2d

    def counting(x, *args, **kwargs):
        calls.append(tuple(x.shape))
        return op(x, *args, **kwargs)

    monkeypatch.setattr(layers, "conv2d", counting)
    return calls


@pytest.fixture(scope="module")
def digits():
    x, _ = load_digits("test", 24)
    return load_digits_cnn(), x


METHODS = {
    "saliency": lambda m, x, t: fastattr.saliency(m, x, t),
    "integrated_gradients": lambda m, x, t: fastattr.integrated_gradients(m, x, t, n_steps=4),
    "smoothgrad": lambda m, x, t: fastattr.smoothgrad(m, x, t, n_samples=3, generator=0),
    "deeplift": lambda m, x, t: fastattr.deeplift(m, x, t),
    "guided_backprop": lambda m, x, t: fastattr.guided_backprop(m, x, t),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_maps_equal_torchs_backward_to_rounding(method, digits, counted):
    model, x = digits
    t = model(x).argmax(1)
    with fastattr.torch_convolution():
        expected = METHODS[method](model, x, t)
    assert not counted
    with fastattr.torch_pooling():                                    # one switch leaves the other kernel on
        torch.testing.assert_close(METHODS[method](model, x, t), expected, rtol=1e-5,
                                   atol=1e-5 * float(expected.abs().max()))
    assert counted
    counted.clear()
    got = METHODS[method](model, x, t)
    assert counted and {shape[1] for shape in counted} == {1, 16}     # the first layer and the second
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert "forward" not in model.net[0].__dict__


def test_the_second_layer_takes_the_sparse_kernel(digits, monkeypatch):
    """Behind the digits CNN's max pool most of the second convolution's output gradient is zero: its input gradient
    comes from the sparse kernel, and the map is torch's to rounding."""
    import fastattr.ops.conv as conv_module

    model, x = digits
    kernels = []
    run = conv_module.run_cpp
    monkeypatch.setattr(conv_module, "run_cpp", lambda name, *a, **k: (kernels.append(name), run(name, *a, **k))[1])
    got = fastattr.saliency(model, x, 3)
    assert kernels.count("conv2d_input_grad_sparse") == 1 and kernels.count("conv2d_input_grad") == 1
    with fastattr.torch_convolution():
        expected = fastattr.saliency(model, x, 3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_only_a_layer_that_feeds_a_max_pool_takes_the_sparse_kernel(monkeypatch):
    """Two 8-channel convolutions in a row: the first feeds a ReLU and a convolution (its gradient is not sparse),
    so it keeps torch's backward; the second feeds a ReLU and a max pool, so it takes the sparse kernel."""
    import fastattr.ops.conv as conv_module

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 3 * 3, 4)).eval()
    x = torch.randn(6, 8, 6, 6, generator=torch.Generator().manual_seed(1))
    kernels = []
    run = conv_module.run_cpp
    monkeypatch.setattr(conv_module, "run_cpp", lambda name, *a, **k: (kernels.append(name), run(name, *a, **k))[1])
    got = fastattr.saliency(model, x, 2, abs=False)
    assert kernels == ["conv2d_input_grad_sparse"]
    with fastattr.torch_convolution():
        expected = fastattr.saliency(model, x, 2, abs=False)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert all("forward" not in m.__dict__ for m in model)


def test_outputs_are_the_models_bit_for_bit(digits):
    """Inside a call the forward is torch's: the logits a gradient pass sees are ``model(x)``'s."""
    model, x = digits
    seen = []
    handle = model.net[-1].register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    try:
        fastattr.saliency(model, x, 0)
    finally:
        handle.remove()
    assert torch.equal(seen[-1], model(x))


class TwoInputs(nn.Module):
    """A one-channel conv with a hook, a two-channel conv with a forward of its own, and convolutions the kernel does
    not serve: grouped, 'same' padding, reflect padding, three channels, a subclass."""

    class Sub(nn.Conv2d):
        pass

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.a = nn.Conv2d(1, 2, 3, padding=1)
        self.b = nn.Conv2d(2, 2, 3, padding=1)
        self.grouped = nn.Conv2d(2, 2, 3, padding=1, groups=2)
        self.same = nn.Conv2d(2, 3, 3, padding="same")
        self.reflect = nn.Conv2d(3, 2, 3, padding=1, padding_mode="reflect")
        self.sub = TwoInputs.Sub(2, 2, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = self.grouped(torch.tanh(self.b(h)))
        return self.sub(self.reflect(self.same(h))).mean((2, 3))


def test_which_convolutions_run_the_kernel(counted):
    model = TwoInputs().eval()
    seen = []
    model.a.register_forward_hook(lambda m, a, out: seen.append(out.shape))
    own = model.b.forward
    model.b.forward = lambda h: own(h)
    x = torch.rand(5, 1, 7, 7, generator=torch.Generator().manual_seed(1))
    got = fastattr.saliency(model, x, 1, abs=False)
    assert counted == [(5, 1, 7, 7)] and seen[-1] == (5, 2, 7, 7)   # a only; its hook ran
    with fastattr.torch_convolution():
        expected = fastattr.saliency(model, x, 1, abs=False)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert list(model.a._forward_hooks) and model.b.forward is not own and "forward" not in model.a.__dict__


def test_copies_made_during_a_call_run_torchs_convolution(counted):
    """A deep copy or pickle of the model taken inside a call convolves as torch does outside fastattr's calls."""
    model = load_digits_cnn()
    made = []

    def method(m, x, t):
        made.append(copy.deepcopy(m))
        made.append(pickle.loads(pickle.dumps(m)))
        return fastattr.saliency(m, x, t)

    x, _ = load_digits("test", 4)
    fastattr.aggregate(model, x, 0, methods={"s": method, "g": "saliency"}, objective="mean")
    z = x.clone().requires_grad_()
    for copy_ in made:
        calls = len(counted)
        out = copy_(z)
        assert len(counted) == calls and torch.equal(out, model(x))
        assert type(out.grad_fn).__name__ != "_Conv2dBackward"


def test_a_dataset_guard_runs_the_kernel_in_its_calls(digits, counted, tmp_path):
    """``evaluate_dataset`` guards the model around its whole loop (its inputs a dataset, not a tensor): the methods
    it calls run the kernel as they do when called alone, so its maps are theirs bit for bit."""
    model, x = digits
    got = []

    def method(m, xx, t):
        got.append((fastattr.saliency(m, xx, t), xx, t))
        return got[-1][0]

    fastattr.evaluate_dataset(model, x[:6], {"s": method}, ["sparseness"], out=tmp_path / "r.jsonl", batch_size=3)
    assert len(counted) >= 2
    for maps, xx, t in got:
        assert torch.equal(maps, fastattr.saliency(model, xx, t))
