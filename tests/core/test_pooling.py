"""``nn.MaxPool2d`` through ``fastattr.ops.max_pool2d`` during fastattr's calls on CPU
(``fastattr.core.layer_kernels``):
every method's numbers are those of torch's kernel bit for bit, the op does run, and the model is left as it
was (no instance ``forward``, its own hooks run and stay), also when the call raises; subclasses, modules with a
forward of their own, small or half-precision batches and ``fastattr.torch_pooling()`` keep torch's kernel."""
import pytest
import torch
from torch import nn

import fastattr
import fastattr.core.layer_kernels as pooling
import fastattr.metrics as M


def _randomise(module: nn.Module, gen: torch.Generator) -> None:
    """Every parameter drawn from N(0, 0.3²)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


class PoolNet(nn.Module):
    """conv → ReLU → a 2×2 pool → conv → ReLU → a 3×3 stride-2 padded pool → linear; the first pool's input is
    ``[N, 8, 16, 16]``: 2¹⁶ elements and more for N ≥ 32."""

    def __init__(self, pool=nn.MaxPool2d):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
        self.p1, self.p2 = pool(2), pool(3, 2, 1)
        self.fc = nn.Linear(16 * 4 * 4, 5)
        _randomise(self, gen)
        self.eval()

    def forward(self, x):
        h = self.p1(torch.relu(self.c1(x)))
        return self.fc(self.p2(torch.relu(self.c2(h))).flatten(1))


@pytest.fixture
def counted(monkeypatch):
    calls, op = [], pooling.max_pool2d

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return op(*args, **kwargs)

    monkeypatch.setattr(pooling, "max_pool2d", counting)
    return calls


def _inputs(n=48):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


METHODS = {
    "saliency": lambda m, x: fastattr.saliency(m, x, 1),
    "integrated_gradients": lambda m, x: fastattr.integrated_gradients(m, x, 1, n_steps=3),
    "deeplift": lambda m, x: fastattr.deeplift(m, x, 1),
    "guided_backprop": lambda m, x: fastattr.guided_backprop(m, x, 1),
    "deletion": lambda m, x: M.deletion(m, x, x.abs().sum(1), 1, step=64),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_numbers_are_torchs_and_the_op_runs(counted, name):
    model, x = PoolNet(), _inputs()
    ours = METHODS[name](model, x)
    assert counted and all(shape[0] >= 32 for shape in counted)
    ran = len(counted)
    with fastattr.torch_pooling():
        theirs = METHODS[name](model, x)
    assert len(counted) == ran                                            # torch_pooling: the op never ran
    assert torch.equal(ours, theirs)
    assert "forward" not in model.p1.__dict__ and "forward" not in model.p2.__dict__


def test_the_model_is_left_as_it_was_and_its_hooks_run(counted):
    model, x = PoolNet(), _inputs()
    seen = []

    def record(mod, args, out):
        seen.append(out.shape)

    handle = model.p1.register_forward_hook(record)
    fastattr.saliency(model, x, 0)
    assert counted and seen[-1] == (48, 8, 8, 8)  # after the target check's forward of two inputs
    assert list(model.p1._forward_hooks.values()) == [record]
    handle.remove()

    def fail(mod, args, out):
        raise RuntimeError("boom")

    handle = model.fc.register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="boom"):
        fastattr.saliency(model, x, 0)
    handle.remove()
    assert "forward" not in model.p1.__dict__ and "forward" not in model.p2.__dict__
    torch.testing.assert_close(model(x[:2]), PoolNet()(x[:2]))


def test_modules_it_must_not_touch(counted):
    class OwnPool(nn.MaxPool2d):
        pass

    model, x = PoolNet(pool=OwnPool), _inputs()
    fastattr.saliency(model, x, 0)
    assert not counted                                                    # a subclass may pool otherwise

    model = PoolNet()
    own = model.p1.forward = lambda t: nn.functional.max_pool2d(t, 2)
    fastattr.saliency(model, x, 0)
    assert model.p1.__dict__["forward"] is own and not counted            # the model's own forward is kept

    fastattr.saliency(PoolNet(), x[:4], 0)                                # 4 inputs: torch's kernel is faster
    fastattr.saliency(PoolNet().half(), x.half(), 0)                      # half precision: torch's kernel
    assert not counted


def test_pooling_that_returns_indices():
    """A pool whose indices feed a ``MaxUnpool2d``: the op's indices are torch's."""
    class Unpool(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.pool, self.unpool = PoolNet(), nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2)

        def forward(self, x):
            out, idx = self.pool(x)
            return self.net(self.unpool(out, idx))

    model, x = Unpool().eval(), _inputs(64)
    ours = fastattr.saliency(model, x, 2)
    with fastattr.torch_pooling():
        theirs = fastattr.saliency(model, x, 2)
    assert torch.equal(ours, theirs) and ours.abs().sum() > 0


def test_copies_threads_and_the_switch_inside_a_call(counted):
    """A deep copy made during a call pools as torch does afterwards and survives pickling; a nested
    ``torch_pooling()`` and another thread running the same model keep torch's kernel."""
    import io
    import threading

    model, x = PoolNet(), _inputs()
    seen = {}

    def model_fn(t):
        if "copy" not in seen:
            seen["copy"] = __import__("copy").deepcopy(model)
            with fastattr.torch_pooling():
                before = len(counted)
                model(t)
                seen["nested"] = len(counted) - before
            before = len(counted)
            thread = threading.Thread(target=lambda: model(t))
            thread.start()
            thread.join()
            seen["thread"] = len(counted) - before
        return model(t)

    ours = fastattr.saliency(model_fn, x, 0)
    assert counted and seen["nested"] == 0 and seen["thread"] == 0
    with fastattr.torch_pooling():
        assert torch.equal(ours, fastattr.saliency(model, x, 0))
    copy, before = seen["copy"], len(counted)
    buffer = io.BytesIO()
    torch.save(copy, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for m in (copy, loaded):
        torch.testing.assert_close(m(x), model(x), rtol=0, atol=0)
    assert len(counted) == before                                         # outside a call: torch's kernel


def test_where_fastattr_pools():
    """``fast_pool_here`` (DeepLift's max-pool rule asks it too): only inside a guarded call on this thread,
    outside ``torch_pooling()``, on inputs the op beats torch's kernel on."""
    from fastattr.core import fast_pool_here, model_guard

    model, big = PoolNet(), torch.randn(64, 8, 16, 16)
    assert not fast_pool_here(big)
    with model_guard(model, _inputs()):
        assert fast_pool_here(big) and not fast_pool_here(big[:4])
        with fastattr.torch_pooling():
            assert not fast_pool_here(big)
    assert not fast_pool_here(big)


def _sequential(inplace=True, seed=2):
    """conv → ReLU → 2×2 pool → conv → ReLU (in place) → padded 3×3 stride-2 pool → linear, as one
    ``nn.Sequential``."""
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(3, 2, 1),
                        nn.Flatten(), nn.Linear(16 * 4 * 4, 5))
    _randomise(net, gen)
    return net.eval()


class _Seen(list):
    """Shapes, and in ``made_by`` the name of the autograd node that made each tensor."""

    def __init__(self):
        super().__init__()
        self.made_by = []

    def clear(self):
        super().clear()
        self.made_by.clear()


@pytest.fixture
def relu_inputs(monkeypatch):
    """The shape of every tensor an ``nn.ReLU`` module runs on (a class attribute, no hooks)."""
    shapes, forward = _Seen(), nn.ReLU.forward

    def recording(self, input):
        shapes.append(tuple(input.shape))
        shapes.made_by.append(type(input.grad_fn).__name__)
        return forward(self, input)

    monkeypatch.setattr(nn.ReLU, "forward", recording)
    return shapes


SEQUENTIAL_METHODS = dict(METHODS, smoothgrad=lambda m, x: fastattr.smoothgrad(m, x, 1, n_samples=3, generator=0))


@pytest.mark.parametrize("name", sorted(SEQUENTIAL_METHODS))
def test_a_sequential_pools_before_its_relus(relu_inputs, name):
    """Pool first, ReLU on the pooled tensor, every number torch's in the model's order bit for bit; DeepLift
    and guided backprop hook their ReLUs, which keeps the model's order."""
    model, x = _sequential(), _inputs()
    ours = SEQUENTIAL_METHODS[name](model, x)
    reordered = set(relu_inputs)
    relu_inputs.clear()
    with fastattr.torch_pooling():
        theirs = SEQUENTIAL_METHODS[name](model, x)
    assert torch.equal(ours, theirs) and ours.abs().sum() > 0
    assert {s[1:] for s in relu_inputs} == {(8, 16, 16), (16, 8, 8)}
    hooked = name in ("deeplift", "guided_backprop")
    assert {s[1:] for s in reordered} == ({(8, 16, 16), (16, 8, 8)} if hooked else {(8, 8, 8), (16, 4, 4)})
    assert "forward" not in model.__dict__


def test_pooling_first_with_ties_and_windows_without_a_positive_value(relu_inputs):
    """Integer weights and inputs: windows with several equal maxima, all negative or all zero; the gradient
    goes to the same element as in the model's order."""
    gen = torch.Generator().manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 4, 2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 2, padding=1),
                        nn.ReLU(), nn.AdaptiveMaxPool2d(2), nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randint(-1, 2, p.shape, generator=gen).float())
    net.eval()
    x = torch.randint(-1, 2, (64, 1, 9, 9), generator=gen).float()
    for method in (fastattr.saliency, fastattr.input_x_gradient,
                   lambda m, x, t: fastattr.integrated_gradients(m, x, t, n_steps=4)):
        relu_inputs.clear()
        ours = method(net, x, 0)
        assert {s[1:] for s in relu_inputs} == {(4, 4, 4), (4, 2, 2)}                  # pooled first
        with fastattr.torch_pooling():
            theirs = method(net, x, 0)
        assert torch.equal(ours, theirs) and ours.abs().sum() > 0


def test_sequentials_it_keeps_in_order(relu_inputs):
    """A hooked ReLU or pool, an in-place ReLU after a hooked child or first in its ``Sequential``, a global
    module hook and a subclass of ``Sequential`` keep the model's order, and the numbers are the same."""
    x = _inputs()

    def relus_ran_on(model):
        relu_inputs.clear()
        ours = fastattr.saliency(model, x, 0)
        with fastattr.torch_pooling():
            assert torch.equal(ours, fastattr.saliency(model, x, 0))
        return relu_inputs[2][1:], relu_inputs[3][1:]  # after the target check's forward of two inputs

    both, neither = ((8, 8, 8), (16, 4, 4)), ((8, 16, 16), (16, 8, 8))
    assert relus_ran_on(_sequential()) == both
    for hooked, order in ((0, both), (1, ((8, 16, 16), (16, 4, 4))), (2, ((8, 16, 16), (16, 4, 4))),
                          (3, ((8, 8, 8), (16, 8, 8))), (5, ((8, 8, 8), (16, 8, 8)))):
        model, seen = _sequential(), []
        model[hooked].register_forward_hook(lambda mod, args, out: seen.append(out))
        assert relus_ran_on(model) == order and seen
        if hooked == 3:
            assert (seen[-1] >= 0).all()          # the in-place ReLU updated the convolution's output, as ever
    handle = nn.modules.module.register_module_forward_hook(lambda mod, args, out: None)
    try:
        assert relus_ran_on(_sequential()) == neither
    finally:
        handle.remove()

    class Own(nn.Sequential):
        pass

    assert relus_ran_on(Own(*_sequential()).eval()) == neither
    parts = list(_sequential())
    nested = nn.Sequential(parts[0], nn.Sequential(nn.ReLU(inplace=True), parts[2]), *parts[3:]).eval()
    assert relus_ran_on(nested) == ((8, 16, 16), (16, 4, 4))


def test_a_sequential_copied_during_a_call_runs_in_order_afterwards(relu_inputs):
    import copy as copying
    import io

    model, x, seen = _sequential(), _inputs(), {}

    def model_fn(t):
        seen.setdefault("copy", copying.deepcopy(model))
        return model(t)

    fastattr.saliency(model_fn, x, 0)
    copy = seen["copy"]
    buffer = io.BytesIO()
    torch.save(copy, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for m in (copy, loaded, model):
        relu_inputs.clear()
        torch.testing.assert_close(m(x), _sequential()(x), rtol=0, atol=0)
        assert relu_inputs[0][1:] == (8, 16, 16)                          # outside a call: the model's order
    assert "forward" not in model.__dict__


def test_windows_out_of_range_and_tracing_keep_the_models_order(relu_inputs):
    """A pool with padding and dilation in one axis may have a window with no element in range (``−inf``, which a
    ReLU after it would make 0): its pair keeps its order, as does a ``Sequential`` that ``torch.fx`` traces
    inside a call (contextual decomposition walks the traced graph, IBA runs the traced tail after a layer)."""
    gen = torch.Generator().manual_seed(4)
    empty = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.MaxPool2d((2, 1), 1, (1, 0), (2, 1)), nn.Hardtanh(),
                          nn.Flatten(), nn.Linear(6, 3)).eval()
    dilated = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.MaxPool2d((2, 1), 1, 0, (2, 1)), nn.Flatten(),
                            nn.Linear(6, 3)).eval()
    x = torch.randn(4, 1, 3, 3, generator=gen)
    # the ReLU's input comes from the one-channel convolution (fastattr.ops.conv.conv2d) or from the pool
    for model, inputs, made_by in ((empty, x[:, :, :1], "_Conv2dBackward"),
                                   (dilated, x, "MaxPool2DWithIndicesBackward0")):
        relu_inputs.clear()
        ours = fastattr.saliency(model, inputs, 0)
        assert relu_inputs.made_by[-1] == made_by
        with fastattr.torch_pooling():
            assert torch.equal(ours, fastattr.saliency(model, inputs, 0))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                          nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
            self.fc = nn.Linear(4 * 2 * 2, 3)

        def forward(self, x):
            return self.fc(self.features(x).flatten(1))

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(4, 1, 8, 8, generator=gen)
    masks = (torch.rand(3, 1, 8, 8, generator=gen) > 0.5).float()
    stats = fastattr.iba_statistics(model, "features.1", torch.randn(16, 1, 8, 8, generator=gen))
    calls = {"cd": lambda: fastattr.contextual_decomposition(model, x, masks, 0)[0],
             "iba": lambda: fastattr.iba(model, x, 0, layer="features.1", statistics=stats, steps=2, n_noise=2,
                                         generator=0)}
    for name, call in calls.items():
        ours = call()
        with fastattr.torch_pooling():
            assert torch.equal(ours, call()), name
