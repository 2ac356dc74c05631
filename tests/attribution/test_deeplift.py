"""fastattr.deeplift (SPEC §10): the rescale rule against a layer-by-layer reference and a hand-computed
max-pooling case, summation to delta on ReLU networks (adjacent nonlinearities, skip connections, a
module called twice, overlapping pools), chunking, the model left as it was, and bad arguments.
Agreement with Captum is in tests/integrations/test_captum_deeplift.py."""
import warnings

import pytest
import torch
from torch import nn

import fastattr
import fastattr.attribution as A
from tests.integrations.models import digits
from tests.models import batchnorm_with_statistics, rand

ELEMENTWISE = [nn.ReLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Softplus]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors


def elementwise_mlp(act: type, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 24), act(), nn.Linear(24, 16), act(), nn.Linear(16, 10)
                         ).double().eval()


def reference_deeplift(model: nn.Sequential, x: torch.Tensor, base: torch.Tensor, t: torch.Tensor,
                       eps: float = 1e-10) -> torch.Tensor:
    """The multipliers layer by layer: a Linear multiplies by its weight; an elementwise nonlinearity by
    ``Δy/Δx`` (its derivative at x where ``|Δx| < eps``)."""
    a, b, steps = x.flatten(1), base.expand_as(x).flatten(1), []
    for layer in list(model)[1:]:
        if isinstance(layer, nn.Linear):
            steps.append((True, layer.weight))
        else:
            z = a.detach().requires_grad_(True)
            (slope,) = torch.autograd.grad(layer(z).sum(), z)
            dx, dy = a - b, layer(a) - layer(b)
            steps.append((False, torch.where(dx.abs() < eps, slope, dy / dx)))
        a, b = layer(a), layer(b)
    m = nn.functional.one_hot(t, a.shape[1]).to(x.dtype)
    for linear, step in reversed(steps):
        m = m @ step if linear else m * step
    return m.view_as(x).detach()


def baselines_of(x: torch.Tensor) -> list:
    """Zeros, a number, one map for all, and one per example: the first example's is the input itself
    (every nonlinearity sees Δx = 0 and keeps its own gradient), the others equal x on a third of the
    pixels."""
    g = torch.Generator().manual_seed(7)
    per = torch.rand(x.shape, generator=g, dtype=x.dtype)
    keep = torch.rand(x.shape, generator=g) < 1 / 3
    keep[0] = True
    return [None, 0.25, torch.rand(x.shape[1:], generator=g, dtype=x.dtype), torch.where(keep, x, per)]


@pytest.mark.parametrize("act", ELEMENTWISE, ids=lambda a: a.__name__)
def test_equals_a_layer_by_layer_reference(act):
    x, y = digits()
    model = elementwise_mlp(act)
    for base in baselines_of(x):
        b = fastattr.core.path_baselines(x, base)
        m = reference_deeplift(model, x, b, y)
        attr, delta = A.deeplift(model, x, y, baselines=base, return_convergence_delta=True)
        torch.testing.assert_close(attr, (x - b) * m, rtol=0, atol=1e-12)
        torch.testing.assert_close(A.deeplift(model, x, y, baselines=base, multiply_by_inputs=False), m,
                                   rtol=0, atol=1e-12)
        with torch.no_grad():
            gap = model(x).gather(1, y[:, None])[:, 0] - model(b.expand_as(x)).gather(1, y[:, None])[:, 0]
        torch.testing.assert_close(delta, attr.flatten(1).sum(1) - gap, rtol=0, atol=1e-12)
        assert delta.abs().max() < 1e-12  # summation to delta


def test_maxpool_rule_on_a_hand_computed_example():
    """Windows (1, 3) vs (2, 0): the input's larger maximum, Δy = 1 to the input's arg-max. Windows
    (0.5, 0) vs (0, 2.5): the baseline's larger maximum, Δy = −2 to the baseline's arg-max."""
    model = nn.Sequential(nn.MaxPool1d(2), nn.Flatten(), nn.Linear(2, 1, bias=False)).double().eval()
    nn.init.ones_(model[2].weight)
    x = torch.tensor([[[1.0, 3.0, 0.5, 0.0]]], dtype=torch.float64)
    base = torch.tensor([[[2.0, 0.0, 0.0, 2.5]]], dtype=torch.float64)
    attr, delta = A.deeplift(model, x, 0, baselines=base, return_convergence_delta=True)
    torch.testing.assert_close(attr, torch.tensor([[[0.0, 1.0, 0.0, -2.0]]], dtype=torch.float64))
    torch.testing.assert_close(A.deeplift(model, x, 0, baselines=base, multiply_by_inputs=False),
                               torch.tensor([[[0.0, 1 / 3, 0.0, 0.8]]], dtype=torch.float64))
    assert delta.abs().max() < 1e-15


class Block(nn.Module):
    """Conv → BN → in-place ReLU → MaxPool (adjacent to the ReLU), a skip connection reading the ReLU's
    input, one ReLU module called twice, an overlapping MaxPool1d, LeakyReLU and a linear head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.conv, self.bn = nn.Conv2d(1, 4, 3, padding=1), batchnorm_with_statistics(4, affine=True)
        self.relu, self.pool = nn.ReLU(inplace=True), nn.MaxPool2d(2)
        self.fc1, self.fc2 = nn.Linear(64, 32), nn.Linear(32, 32)
        self.pool1d, self.leaky = nn.MaxPool1d(3, stride=1), nn.LeakyReLU(0.2)
        self.shared, self.head = nn.ReLU(), nn.Linear(30, 10)

    def forward(self, x):
        h = self.bn(self.conv(x))
        h = self.pool(self.relu(h)).flatten(1)
        z = self.fc1(h)
        h = self.shared(z) + z  # the skip reads the ReLU's input
        h = self.shared(self.fc2(h))  # the same module again
        return self.head(self.leaky(self.pool1d(h[:, None]))[:, 0])


def test_summation_to_delta_holds_for_relu_networks():
    x, y = digits()
    model = Block().double().eval()
    for base in baselines_of(x):
        attr, delta = A.deeplift(model, x, y, baselines=base, return_convergence_delta=True)
        b = fastattr.core.path_baselines(x, base).expand_as(x)
        with torch.no_grad():
            gap = model(x).gather(1, y[:, None])[:, 0] - model(b).gather(1, y[:, None])[:, 0]
        assert gap[1:].abs().min() > 1e-3  # (the first per-example baseline is the input itself)
        torch.testing.assert_close(attr.flatten(1).sum(1), gap, rtol=0, atol=1e-12)
        assert delta.abs().max() < 1e-12


def test_a_module_called_twice_gets_the_rule_at_each_call():
    class Twice(nn.Module):
        def __init__(self, shared: bool):
            super().__init__()
            torch.manual_seed(5)
            self.fc1, self.fc2, self.head = nn.Linear(64, 16), nn.Linear(16, 16), nn.Linear(16, 10)
            self.act1 = nn.Tanh()
            self.act2 = self.act1 if shared else nn.Tanh()

        def forward(self, x):
            return self.head(self.act2(self.fc2(self.act1(self.fc1(x.flatten(1))))))

    x, y = digits()
    torch.testing.assert_close(A.deeplift(Twice(True).double().eval(), x, y, baselines=0.1),
                               A.deeplift(Twice(False).double().eval(), x, y, baselines=0.1), rtol=0, atol=0)


def test_batch_major_merges_and_parameter_gates():
    """A ReLU on ``[B·2, 32]`` (two halves of each example stacked batch-major) equals one on ``[B, 64]``;
    a Sigmoid on a parameter (not on a path from the inputs) is left alone."""
    class Split(nn.Module):
        def __init__(self, merge: bool):
            super().__init__()
            torch.manual_seed(14)
            self.merge, self.fc, self.act, self.head = merge, nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
            self.gate, self.alpha = nn.Sigmoid(), nn.Parameter(torch.randn(64))

        def forward(self, x):
            h = self.fc(x.flatten(1))
            h = self.act(h.reshape(-1, 32)).reshape(-1, 64) if self.merge else self.act(h)
            return self.head(h * self.gate(self.alpha))

    x, y = digits()
    attr, delta = A.deeplift(Split(True).double().eval(), x, y, baselines=0.1, return_convergence_delta=True)
    torch.testing.assert_close(attr, A.deeplift(Split(False).double().eval(), x, y, baselines=0.1), rtol=0, atol=0)
    assert delta.abs().max() < 1e-12


def test_functional_nonlinearities_keep_their_gradient():
    """``torch.relu`` in ``forward`` is not a module: no rule, a warning, and (x − x') ⊙ ∂f_t/∂x."""
    torch.manual_seed(6)
    fc1, fc2 = nn.Linear(64, 16).double().eval(), nn.Linear(16, 10).double().eval()

    def model(x):
        return fc2(torch.relu(fc1(x.flatten(1))))

    x, y = digits()
    with pytest.warns(UserWarning, match="no nonlinearity module"):
        attr = A.deeplift(model, x, y, baselines=0.2)
    z = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(z).gather(1, y[:, None]).sum(), z)
    torch.testing.assert_close(attr, (x - 0.2) * grad, rtol=0, atol=1e-15)


def test_multiply_by_inputs_false_gives_the_multipliers():
    x, y = digits()
    model = Block().double().eval()
    base = baselines_of(x)[3]
    m = A.deeplift(model, x, y, baselines=base, multiply_by_inputs=False)
    torch.testing.assert_close(A.deeplift(model, x, y, baselines=base), (x - base) * m, rtol=0, atol=0)


def softmax_cnn() -> nn.Module:
    torch.manual_seed(8)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(48, 10), nn.Sigmoid(), nn.Linear(10, 10), nn.Softmax(dim=1)).double().eval()


@pytest.mark.parametrize("make", [Block, softmax_cnn], ids=["block", "softmax"])
def test_results_do_not_depend_on_the_chunk_size(make):
    """Softmax's mean and the MaxPool fallback are per example, so chunks of any size agree."""
    x, y = digits(7)
    model = make().double().eval()
    for base in (None, baselines_of(x)[3]):
        whole, delta = A.deeplift(model, x, y, baselines=base, return_convergence_delta=True, max_batch=14)
        for limit in ({"max_batch": 1}, {"max_batch": 2}, {"max_batch": 5}, {"memory_budget": 30_000}, {}):
            got, d = A.deeplift(model, x, y, baselines=base, return_convergence_delta=True, **limit)
            torch.testing.assert_close(got, whole, rtol=0, atol=1e-13)
            torch.testing.assert_close(d, delta, rtol=0, atol=1e-13)
        one = torch.cat([A.deeplift(model, x[i:i + 1], y[i:i + 1], baselines=base if base is None else base[i:i + 1])
                         for i in range(x.shape[0])])
        torch.testing.assert_close(one, whole, rtol=0, atol=1e-13)


def test_the_baselines_run_without_gradients_once_and_the_inputs_alone_are_differentiated():
    x, y = digits(6)
    model = Block().double().eval()
    rows, graded = [], []

    def record(module, args):
        rows.append(args[0].shape[0])
        graded.append(args[0].requires_grad)

    handle = model.register_forward_pre_hook(record)
    try:
        A.deeplift(model, x, y, max_batch=4)                       # one baseline for all: one row, once
        assert (rows, graded) == ([1, 4, 2], [False, True, True])
        rows.clear(), graded.clear()
        A.deeplift(model, x, y, baselines=baselines_of(x)[3], max_batch=4)   # one per example: per chunk
        assert (rows, graded) == ([4, 4, 2, 2], [False, True, False, True])
        rows.clear(), graded.clear()
        with fastattr.use_model_mode("as_given"):  # training mode: Captum's one forward of inputs and baselines
            A.deeplift(model.train(), x, y, max_batch=4)
        assert (rows, graded) == ([12], [True])
    finally:
        handle.remove()


def test_a_forward_that_calls_other_modules_for_the_inputs_gets_a_clear_error():
    class Branches(nn.Module):
        """Tanh for the baselines (all zero), ReLU for the inputs: no call to pair with."""

        def __init__(self):
            super().__init__()
            self.fc, self.relu, self.tanh, self.head = nn.Linear(64, 8), nn.ReLU(), nn.Tanh(), nn.Linear(8, 3)

        def forward(self, z):
            h = self.fc(z.flatten(1))
            return self.head(self.relu(h) if bool(z.abs().sum() > 0) else self.tanh(h))

    x, _ = digits(3)
    with pytest.raises(ValueError, match="ReLU"):
        A.deeplift(Branches().double().eval(), x, 0)


def test_targets_int_list_tensor_and_none():
    x, y = digits()
    model = Block().double().eval()
    per = A.deeplift(model, x, y)
    assert torch.equal(A.deeplift(model, x, y.tolist()), per)
    three = A.deeplift(model, x, 3)
    assert torch.equal(A.deeplift(model, x, torch.tensor([3])), three)
    assert torch.equal(A.deeplift(model, x, torch.full((6,), 3)), three)
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert torch.equal(A.deeplift(model, x), A.deeplift(model, x, pred))


def test_other_layouts_dtypes_and_wrapped_models():
    x, y = digits()
    model = Block().double().eval()
    expected = A.deeplift(model, x, y, baselines=0.1)
    torch.testing.assert_close(A.deeplift(lambda z: model(z), x, y, baselines=0.1), expected, rtol=0, atol=0)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    torch.testing.assert_close(A.deeplift(model, x.contiguous(memory_format=torch.channels_last), y, baselines=0.1),
                               expected, rtol=0, atol=1e-14)
    f32 = A.deeplift(Block().float().eval(), x.float(), y, baselines=0.1)
    assert f32.dtype == torch.float32
    torch.testing.assert_close(f32.double(), expected, rtol=1e-3, atol=1e-5)
    net = nn.Sequential(nn.Conv1d(1, 2, 3, padding=1), nn.MaxPool1d(2), nn.Conv1d(2, 2, 1), nn.ELU(),
                        nn.Flatten(), nn.Linear(64, 3)).double().eval()
    vol = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.MaxPool3d(2, return_indices=False), nn.Flatten(),
                        nn.Linear(16, 3)).double().eval()
    for m, z in ((net, x.reshape(6, 1, 64)), (vol, x.reshape(6, 1, 4, 4, 4))):
        _, delta = A.deeplift(m, z, 1, baselines=0.3, return_convergence_delta=True)
        assert delta.abs().max() < 1e-12


def test_a_pool_returning_indices_gets_the_rule():
    class Indices(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(9)
            self.conv, self.pool, self.head = nn.Conv2d(1, 3, 3, padding=1), nn.MaxPool2d(2, return_indices=True), \
                nn.Linear(48, 10)

        def forward(self, x):
            out, _ = self.pool(self.conv(x))
            return self.head(out.flatten(1))

    x, y = digits()
    _, delta = A.deeplift(Indices().double().eval(), x, y, baselines=0.1, return_convergence_delta=True)
    assert delta.abs().max() < 1e-12


def _state(model: nn.Module):
    return [(m.training, tuple(m._forward_hooks), tuple(m._forward_pre_hooks), tuple(m._backward_hooks),
             getattr(m, "inplace", None)) for m in model.modules()], \
        [(p.requires_grad, p.clone()) for p in model.parameters()]


def _same(a, b):
    assert a[0] == b[0]
    assert all(ra == rb and torch.equal(pa, pb) for (ra, pa), (rb, pb) in zip(a[1], b[1]))


def test_model_and_inputs_are_left_as_they_were_even_after_an_error():
    x, y = digits()
    model = Block().double().eval()
    model.relu.register_forward_hook(lambda *a: None)
    x_before = x.clone()
    before = _state(model)
    A.deeplift(model, x, y, baselines=0.1)
    _same(before, _state(model))
    assert model.relu.inplace and torch.equal(x, x_before) and x.grad is None
    with pytest.raises(ValueError, match="target out of range"):  # after the forward, inside the hooks
        A.deeplift(model, x, 10, baselines=0.1)
    _same(before, _state(model))

    class Fails(nn.Module):
        def forward(self, z):
            raise RuntimeError("boom")

    broken = nn.Sequential(*list(Block().double().eval().children())[:4], Fails()).eval()
    before = _state(broken)
    with pytest.raises(RuntimeError, match="boom"):
        A.deeplift(broken, x, 0)
    _same(before, _state(broken))


def test_bad_arguments_get_errors_naming_them():
    x, y = digits()
    model = Block().double().eval()
    with pytest.raises(TypeError, match="inputs"):
        A.deeplift(model, (x * 16).long(), y)
    with pytest.raises(ValueError, match="baselines"):
        A.deeplift(model, x, y, baselines=torch.zeros(2, 1, 8, 8, dtype=x.dtype))
    with pytest.raises(ValueError, match="baselines"):
        A.deeplift(model, x, y, baselines=torch.full((1, 8, 8), float("nan"), dtype=x.dtype))
    with pytest.raises(TypeError, match="baselines"):
        A.deeplift(model, x, y, baselines="zeros")
    for eps in (0.0, -1e-10, float("nan"), "1e-10"):
        with pytest.raises(ValueError, match="eps"):
            A.deeplift(model, x, y, eps=eps)
    for flag in ("multiply_by_inputs", "return_convergence_delta"):
        with pytest.raises(TypeError, match=flag):
            A.deeplift(model, x, y, **{flag: 1})
    with pytest.raises(ValueError, match="target"):
        A.deeplift(model, x, y[:4], max_batch=2)
    with pytest.raises(TypeError, match="model"):
        A.deeplift(lambda z: (model(z), z), x, y)

    class SequenceFirst(nn.Module):
        """A nonlinearity applied to a [L, B, ...] tensor: the batch is not its first axis."""

        def __init__(self):
            super().__init__()
            self.fc, self.act, self.head = nn.Linear(8, 8), nn.Tanh(), nn.Linear(64, 3)

        def forward(self, z):
            return self.head(self.act(self.fc(z[:, 0].transpose(0, 1))).transpose(0, 1).flatten(1))

    with pytest.raises(ValueError, match="Tanh"):
        A.deeplift(SequenceFirst().double().eval(), x, 0)


def test_exported_flat_and_swept():
    assert fastattr.deeplift is A.deeplift and "deeplift" in fastattr.__all__
    assert hasattr(A.deeplift, "model_contract")
    assert set(A.DEEPLIFT_RULES) >= {nn.ReLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.MaxPool2d}


def test_warns_nothing_on_a_model_with_rules():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        A.deeplift(Block().double().eval(), rand(2, 1, 8, 8), 0)


class _PoolNet(nn.Module):
    """conv → ELU → a 3×3 stride-2 padded pool (windows overlap) → conv → ReLU → a 1-D pool over rows → linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(21)
        self.c1, self.act1, self.p1 = nn.Conv2d(1, 6, 3, padding=1), nn.ELU(), nn.MaxPool2d(3, 2, 1)
        self.c2, self.act2, self.p2 = nn.Conv2d(6, 4, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2)
        self.head = nn.Linear(4 * 4 * 2, 10)

    def forward(self, x):
        h = self.act2(self.c2(self.p1(self.act1(self.c1(x)))))
        return self.head(self.p2(h.flatten(2)).flatten(1))


@pytest.mark.parametrize("make", ["digits_cnn", "pool_net", "sigmoid_mlp"])
@pytest.mark.parametrize("eps", [1e-10, 0.05])
def test_the_rules_c_kernels_give_the_references_bits(make, eps):
    """DeepLift with the C++ multipliers (``fastattr.ops.deeplift_rules``) against the reference backend's torch
    expressions, for every kind of baseline and an ``eps`` that puts many elements on the local gradient (torch's
    convolution backward on both sides: the reference backend runs it)."""
    from fastattr.zoo import load_digits_cnn

    x, y = digits()
    model = {"digits_cnn": lambda: load_digits_cnn(), "pool_net": lambda: _PoolNet().eval(),
             "sigmoid_mlp": lambda: elementwise_mlp(nn.Sigmoid).float()}[make]()
    x = x.float()
    with fastattr.torch_convolution():
        fused = [A.deeplift(model, x, y, baselines=b, eps=eps) for b in baselines_of(x)]
        with fastattr.use_backend("reference"):
            for b, got in zip(baselines_of(x), fused):
                assert torch.equal(got, A.deeplift(model, x, y, baselines=b, eps=eps))
