"""fastattr.deeplift and the drop-in ``DeepLift`` against Captum 0.9's ``DeepLift`` in float64 on real digits.

They agree to 1e-10 wherever Captum's hooks compose: every nonlinearity reads a tensor nothing else reads
(the MLP, the residual block with functional nonlinearities, and a model with ELU / LeakyReLU / Sigmoid /
Tanh / Softplus / MaxPool separated by linear layers). Where they do not, fastattr keeps summation to
delta and Captum loses it, and the tests show why:

- the test CNN's ``ReLU → MaxPool2d`` and ``Softplus → MaxPool2d``: Captum's hook on the shared tensor
  hands the first rule the second's plain gradient. With a copy between them (the same function),
  Captum's values are fastattr's on the original;
- where Captum mixes examples (the MaxPool fallback where ``|Δx| < eps`` reads the first example's
  gradient; Softmax subtracts a mean over the whole batch), fastattr equals Captum run one example at a
  time.
"""
import warnings

import pytest
import torch
from torch import nn

captum = pytest.importorskip("captum")
from captum import attr as cattr  # noqa: E402

import fastattr  # noqa: E402
from fastattr.integrations import captum as fa  # noqa: E402
from tests.integrations.models import cnn, digits, mlp, residual  # noqa: E402

ATOL = 1e-10


class Copy(nn.Module):
    """``x.clone()``: a new tensor between two nonlinearities, so Captum's tensor hooks compose."""

    def forward(self, x):
        return x.clone()


def separated() -> nn.Module:
    """ELU, MaxPool2d, LeakyReLU, MaxPool2d, Sigmoid, Tanh, Softplus, each after a linear layer."""
    torch.manual_seed(10)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ELU(), nn.Conv2d(4, 4, 1), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv2d(6, 6, 1), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(24, 16), nn.Sigmoid(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 16), nn.Softplus(), nn.Linear(16, 10)).double().eval()


def softmax_mlp() -> nn.Module:
    torch.manual_seed(11)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10), nn.Softmax(dim=1)
                         ).double().eval()


class Heads(nn.Module):
    """A Softmax over ``[B·2, 8]``: two groups per example, stacked batch-major."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(15)
        self.fc, self.softmax, self.head = nn.Linear(64, 16), nn.Softmax(dim=-1), nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.softmax(self.fc(x.flatten(1)).reshape(-1, 8)).reshape(-1, 16))


def case(name: str):
    if name == "residual":
        x = torch.randn(6, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        return residual(), x, torch.tensor([0, 1, 2, 3, 4, 0])
    x, y = digits()
    models = {"mlp": mlp, "separated": separated, "cnn": cnn, "softmax": softmax_mlp,
              "heads": lambda: Heads().double().eval()}
    return models[name](), x, y


def baselines(x: torch.Tensor) -> list:
    g = torch.Generator().manual_seed(4)
    return [None, 0.25, torch.rand((1,) + x.shape[1:], generator=g, dtype=x.dtype),
            torch.rand(x.shape, generator=g, dtype=x.dtype)]


def reference(model, x, base, target, one_at_a_time=False, **kwargs):
    """Captum's attributions and deltas; ``one_at_a_time``: each example alone."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns on every call that it sets hooks
        if not one_at_a_time:
            a, d = cattr.DeepLift(model, **kwargs).attribute(x, base, target=target, return_convergence_delta=True)
            return a.detach(), d.detach()
        parts = [cattr.DeepLift(model, **kwargs).attribute(
            x[i:i + 1], base[i:i + 1] if isinstance(base, torch.Tensor) and base.shape[0] > 1 else base,
            target=target[i:i + 1] if isinstance(target, torch.Tensor) else target, return_convergence_delta=True)
            for i in range(x.shape[0])]
        return torch.cat([p[0] for p in parts]).detach(), torch.cat([p[1] for p in parts]).detach()


def close(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype
    torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", ["mlp", "residual", "separated"])
@pytest.mark.parametrize("multiply", [True, False])
def test_equal_to_captum_where_its_hooks_compose(name, multiply):
    model, x, y = case(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the residual block's nonlinearities are functional: fastattr warns
        for base in baselines(x):
            for target in (y, 3):
                ours, delta = fastattr.deeplift(model, x, target, baselines=base, multiply_by_inputs=multiply,
                                                return_convergence_delta=True)
                # Captum's MaxPool fallback reads the first example's gradient: compare example by example
                ref, ref_delta = reference(model, x, base, target, one_at_a_time=name == "separated" and not multiply,
                                        multiply_by_inputs=multiply)
                close(ours, ref)
                close(delta, ref_delta)
                drop, drop_delta = fa.DeepLift(model, multiply_by_inputs=multiply).attribute(
                    x, base, target=target.tolist() if isinstance(target, torch.Tensor) else target,
                    return_convergence_delta=True)
                close(drop, ours)
                close(drop_delta, delta)


def test_captum_mixes_examples_at_the_maxpool_fallback_and_in_softmax():
    """Each example's multipliers as Captum computes them alone; Captum's batched ones differ."""
    for name, base in (("separated", None), ("softmax", None), ("softmax", 0.25), ("heads", 0.25)):
        model, x, y = case(name)
        ours = fastattr.deeplift(model, x, y, baselines=base, multiply_by_inputs=False)
        close(ours, reference(model, x, base, y, one_at_a_time=True, multiply_by_inputs=False)[0])
        assert (ours - reference(model, x, base, y, multiply_by_inputs=False)[0]).abs().max() > 1e-6


def test_cnn_equals_captum_with_adjacent_nonlinearities_separated():
    """The test CNN has ReLU → MaxPool2d and Softplus → MaxPool2d. Captum's rules do not compose there
    (its deltas are far from 0); with a copy between each pair (the same function) they do, and give
    fastattr's values on the original model."""
    model, x, y = case("cnn")
    layers = list(model)
    copied = nn.Sequential(*layers[:3], Copy(), *layers[3:6], Copy(), *layers[6:]).eval()
    with torch.no_grad():
        torch.testing.assert_close(copied(x), model(x), rtol=0, atol=0)
    for base in baselines(x):
        ours, delta = fastattr.deeplift(model, x, y, baselines=base, return_convergence_delta=True)
        ref, ref_delta = reference(copied, x, base, y)
        close(ours, ref)
        close(delta, ref_delta)
        assert delta.abs().max() < 1e-12
        assert reference(model, x, base, y)[1].abs().max() > 1e-3  # Captum on the original loses summation to delta
        close(fastattr.deeplift(model, x, y, baselines=base, multiply_by_inputs=False),
              reference(copied, x, base, y, one_at_a_time=True, multiply_by_inputs=False)[0])


def test_skip_connections_reused_modules_and_overlapping_pools_keep_summation_to_delta():
    """A skip connection reading a ReLU's input (Captum drops it), a ReLU module called twice (Captum
    raises) and overlapping max-pooling windows (Captum's unpooling keeps one window's term)."""
    torch.manual_seed(12)

    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.act, self.head = nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)

        def forward(self, x):
            h = self.fc(x.flatten(1))
            return self.head(self.act(h) + h)

    class Twice(Skip):
        def forward(self, x):
            return self.head(self.act(self.act(self.fc(x.flatten(1))) - 0.1))

    overlap = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(3, stride=1), nn.Conv2d(4, 4, 1), nn.ReLU(),
                            nn.Flatten(), nn.Linear(144, 10))
    x, y = digits()
    for model in (Skip(), Twice(), overlap):
        model = model.double().eval()
        _, delta = fastattr.deeplift(model, x, y, baselines=0.1, return_convergence_delta=True)
        assert delta.abs().max() < 1e-12
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if isinstance(model, Twice):
                with pytest.raises(RuntimeError, match="used more than once"):
                    cattr.DeepLift(model).attribute(x, 0.1, target=y)
            else:
                assert reference(model, x, 0.1, y)[1].abs().max() > 1e-3


def coupled(kind: str) -> nn.Module:
    """Models whose forward couples its rows: BatchNorm with batch statistics after a ReLU and before a Tanh
    (``train``) or after a max pool (``pool``), dropout in training mode (``dropout``), and a BatchNorm1d without running statistics, which
    uses batch statistics in eval mode too (``untracked``)."""
    torch.manual_seed(21)
    if kind == "train":
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1),
                             nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(), nn.Linear(256, 10)).double().train()
    if kind == "pool":  # a max pool before the batch statistics: Captum's pool rule mixes the halves' gradients
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(),
                             nn.Linear(64, 10)).double().train()
    if kind == "dropout":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 10)
                             ).double().train()
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16, track_running_stats=False), nn.Sigmoid(),
                         nn.Linear(16, 10)).double().eval()


@pytest.mark.parametrize("kind", ["train", "pool", "dropout", "untracked"])
def test_a_model_that_couples_its_rows_gives_captums_values(kind):
    """Captum runs inputs and baselines in one forward ``[x; x']`` and takes the delta from two more (the
    baselines', then the inputs'): with batch statistics (their gradient included) or dropout, the drop-in
    does the same, draw for draw, and leaves the model's buffers as they were (Captum's forwards update them)."""
    model = coupled(kind)
    x, y = digits(7)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for base in baselines(x):
        torch.manual_seed(5)
        ours, delta = fa.DeepLift(model).attribute(x, base, target=y.tolist(), return_convergence_delta=True)
        after = model.state_dict()
        assert all(torch.equal(after[k], v) for k, v in state.items())
        torch.manual_seed(5)
        ref, ref_delta = reference(model, x, base, y)
        close(ours, ref)
        close(delta, ref_delta)
        model.load_state_dict(state)
        if kind != "dropout":  # one forward of every input and baseline, whatever the chunk size
            with fastattr.use_model_mode("as_given"):
                close(fastattr.deeplift(model, x, y, baselines=base, max_batch=2), ours)


def test_drop_in_api():
    model, x, y = case("mlp")
    dl = fa.DeepLift(model)
    assert dl.has_convergence_delta() and dl.multiplies_by_inputs and dl.eps == 1e-10 and dl.model is model
    assert not fa.DeepLift(model, multiply_by_inputs=False).multiplies_by_inputs
    assert fa.DeepLift.get_name() == cattr.DeepLift.get_name()
    out = dl.attribute((x,), baselines=(0.25,), target=y)
    assert isinstance(out, tuple) and len(out) == 1
    close(out[0], fastattr.deeplift(model, x, y, baselines=0.25))
    close(dl.attribute(x, target=torch.tensor(3)), fastattr.deeplift(model, x, 3))
    close(fa.DeepLift(model, eps=1e-3).attribute(x, target=y), reference(model, x, None, y, eps=1e-3)[0])
    with pytest.raises(TypeError, match="nn.Module"):
        fa.DeepLift(lambda z: model(z))


def test_custom_attribution_func_and_additional_forward_args():
    model, x, y = case("separated")
    base = baselines(x)[3]
    funcs = [lambda m: tuple(2 * t for t in m),
             lambda m, i: tuple(t * v for t, v in zip(m, i)),
             lambda m, i, b: tuple(t * (v - w) ** 2 for t, v, w in zip(m, i, b))]
    for func in funcs:
        ours, delta = fa.DeepLift(model).attribute(x, base, target=y, custom_attribution_func=func,
                                                   return_convergence_delta=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref, ref_delta = cattr.DeepLift(model).attribute(x, base, target=y, custom_attribution_func=func,
                                                             return_convergence_delta=True)
        close(ours, ref.detach())
        close(delta, ref_delta.detach())
    with pytest.raises(ValueError, match="custom_attribution_func"):
        fa.DeepLift(model).attribute(x, base, target=y, custom_attribution_func=lambda: None)

    class Shifted(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(13)
            self.fc, self.act, self.head = nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)

        def forward(self, z, shift, scale=1.0):
            return self.head(self.act(self.fc(z.flatten(1)) + shift)) * scale

    shifted = Shifted().double().eval()
    shift = torch.randn(6, 16, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    for b in (base, None, baselines(x)[2]):  # per example, zeros, one row for all (the tiled shift needs whole batches)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = cattr.DeepLift(shifted).attribute(x, b, target=y, additional_forward_args=(shift, 2.0)).detach()
        close(fa.DeepLift(shifted).attribute(x, b, target=y, additional_forward_args=(shift, 2.0)), ref)


def test_hooks_and_flags_restored_after_an_error():
    model, x, y = case("cnn")
    model[2].inplace = True
    model[2].register_forward_hook(lambda *a: None)
    before = [(tuple(m._forward_hooks), tuple(m._forward_pre_hooks), tuple(m._backward_hooks),
               getattr(m, "inplace", None), m.training) for m in model.modules()]
    with pytest.raises(ValueError, match="target"):
        fa.DeepLift(model).attribute(x, target=[0, 1])
    with pytest.raises(ValueError, match="out of range"):
        fa.DeepLift(model).attribute(x, target=10)
    assert before == [(tuple(m._forward_hooks), tuple(m._forward_pre_hooks), tuple(m._backward_hooks),
                       getattr(m, "inplace", None), m.training) for m in model.modules()]
    assert all(p.requires_grad for p in model.parameters())
