"""``nn.MaxPool2d`` through ``fastattr.ops.max_pool2d`` during fastattr's calls on CPU (``fastattr.core.pooling``):
every method's numbers are those of torch's kernel bit for bit, the op does run, and the model is left as it
was (no instance ``forward``, its own hooks run and stay), also when the call raises; subclasses, modules with a
forward of their own, small or half-precision batches and ``fastattr.torch_pooling()`` keep torch's kernel."""
import pytest
import torch
from torch import nn

import fastattr
import fastattr.core.pooling as pooling
import fastattr.metrics as M


class PoolNet(nn.Module):
    """conv → ReLU → a 2×2 pool → conv → ReLU → a 3×3 stride-2 padded pool → linear; the first pool's input is
    ``[N, 8, 16, 16]``: 2¹⁶ elements and more for N ≥ 32."""

    def __init__(self, pool=nn.MaxPool2d):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
        self.p1, self.p2 = pool(2), pool(3, 2, 1)
        self.fc = nn.Linear(16 * 4 * 4, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
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
