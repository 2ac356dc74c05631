"""Grad-CAM, Grad-CAM++, Guided Backprop and Guided Grad-CAM against closed forms and hand-written
references, chunk-size independence, model-state restoration, bad input, and Captum."""
import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastattr.attribution.cam import grad_cam, grad_cam_plus_plus, guided_backprop, guided_grad_cam
from tests.models import rand


def gap_cnn(seed=0, inplace=False):
    """conv → ReLU → global average pool → linear: the classic CAM architecture."""
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 6, 3, padding=1), relu1=nn.ReLU(inplace=inplace),
        conv=nn.Conv2d(6, 8, 3, padding=1), relu=nn.ReLU(inplace=inplace),
        pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(8, 5))).double().eval()


def pool_cnn(seed=0, inplace=False):
    """A CNN whose CAM layer ("conv", 4×4 for 8×8 inputs) is followed by ReLU, max pooling and a linear head."""
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 6, 3, padding=1), relu1=nn.ReLU(inplace=inplace), pool1=nn.MaxPool2d(2),
        conv=nn.Conv2d(6, 8, 3, padding=1), relu=nn.ReLU(inplace=inplace), pool=nn.MaxPool2d(2),
        flat=nn.Flatten(), fc=nn.Linear(8 * 2 * 2, 5))).double().eval()


def layer_and_grad(model, upto, x, target):
    """A = model[:upto](x) and ∂ Σ f_t / ∂A, computed by splitting the Sequential by hand."""
    a = model[:upto](x).detach().requires_grad_(True)
    out = model[upto:](a)
    (g,) = torch.autograd.grad(out[torch.arange(x.shape[0]), target].sum(), a)
    return a.detach(), g


def no_hooks(model):
    return all(not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks
               and not m._backward_pre_hooks for m in model.modules())


X = rand(5, 3, 8, 8, seed=1)
T = torch.tensor([0, 3, 1, 4, 2])


def test_grad_cam_is_the_classic_cam_on_a_gap_model():
    model = gap_cnn()
    a = model[:4](X).detach()
    w = model.fc.weight.detach()[T]
    raw = (w[:, :, None, None] * a).sum(1) / 64
    torch.testing.assert_close(grad_cam(model, X, T, layer="relu", upsample=False), raw.clamp(min=0))
    torch.testing.assert_close(grad_cam(model, X, T, layer="relu", upsample=False, relu_attributions=False), raw)
    assert (raw < 0).any() and (raw > 0).any()


def test_grad_cam_matches_a_hand_computation_through_relu_and_max_pooling():
    model = pool_cnn()
    a, g = layer_and_grad(model, 4, X, T)
    expected = (g.mean((2, 3), keepdim=True) * a).sum(1).clamp(min=0)
    torch.testing.assert_close(grad_cam(model, X, T, layer="conv", upsample=False), expected)


def test_upsampling_shapes_and_values():
    model = pool_cnn()
    small = grad_cam(model, X, T, layer="conv", upsample=False)
    big = grad_cam(model, X, T, layer="conv")
    assert small.shape == (5, 4, 4) and big.shape == (5, 8, 8)
    torch.testing.assert_close(big, F.interpolate(small[:, None], size=(8, 8), mode="bilinear",
                                                  align_corners=False)[:, 0])
    assert grad_cam(gap_cnn(), rand(2, 3, 12, 10, seed=2), layer="conv").shape == (2, 12, 10)


def test_interpolate_modes():
    model = pool_cnn()
    small = grad_cam(model, X, T, layer="conv", upsample=False)
    for mode in ("nearest", "bicubic", "area"):
        corners = False if mode == "bicubic" else None
        want = F.interpolate(small[:, None], size=(8, 8), mode=mode, align_corners=corners)[:, 0]
        torch.testing.assert_close(grad_cam(model, X, T, layer="conv", interpolate_mode=mode), want)
        torch.testing.assert_close(guided_grad_cam(model, X, T, layer="conv", interpolate_mode=mode),
                                   guided_backprop(model, X, T) * want[:, None])
    assert not torch.allclose(grad_cam(model, X, T, layer="conv", interpolate_mode="nearest"),
                              grad_cam(model, X, T, layer="conv"))
    for linear in ("linear", "trilinear"):  # every linear mode is linear along the map's own axes
        torch.testing.assert_close(grad_cam(model, X, T, layer="conv", interpolate_mode=linear),
                                   grad_cam(model, X, T, layer="conv"))
    with pytest.raises(ValueError, match="interpolate_mode"):
        grad_cam(model, X, T, layer="conv", interpolate_mode="spline")


def test_attribute_to_layer_input():
    """The CAM of a layer's input is the CAM of the previous layer's output."""
    model = pool_cnn()
    for fn in (grad_cam, grad_cam_plus_plus, guided_grad_cam):
        torch.testing.assert_close(fn(model, X, T, layer="conv", attribute_to_layer_input=True),
                                   fn(model, X, T, layer="pool1"))
    a, g = layer_and_grad(model, 3, X, T)
    expected = (g.mean((2, 3), keepdim=True) * a).sum(1)
    torch.testing.assert_close(grad_cam(model, X, T, layer=model.conv, attribute_to_layer_input=True,
                                        upsample=False, relu_attributions=False), expected)
    with pytest.raises(TypeError, match="attribute_to_layer_input"):
        grad_cam(model, X, T, layer="conv", attribute_to_layer_input="yes")
    assert no_hooks(model)


def test_layers_without_two_spatial_axes_need_upsample_false():
    """``[B, K]`` layers: α is the gradient itself (Captum's convention), so the map is Σ_k g_k A_k."""
    model = pool_cnn()
    a, g = layer_and_grad(model, 7, X, T)
    torch.testing.assert_close(grad_cam(model, X, T, layer="flat", upsample=False, relu_attributions=False),
                               (g * a).sum(1))
    alpha = torch.where(g != 0, 1 / (2 + a * g), torch.zeros_like(g))  # g² / (2 g² + A g³): no spatial sum
    out = grad_cam_plus_plus(model, X, T, layer="flat", upsample=False, relu_attributions=False)
    torch.testing.assert_close(out, (alpha * g.clamp(min=0) * a).sum(1))
    with pytest.raises(ValueError, match=r"\[B, K, \.\.\.\] with 1 to 3 spatial axes"):
        grad_cam(model, X, T, layer="flat")


def test_grad_cam_plus_plus_closed_form_on_a_gap_model():
    model = gap_cnn()
    a = model[:4](X).detach()
    g = (model.fc.weight.detach()[T] / 64)[:, :, None]  # ∂f_t/∂A is constant over positions: [B, K, 1]
    s = a.sum((2, 3))[:, :, None]
    alpha = 1 / (2 + s * g)  # g² / (2 g² + S g³)
    weights = (64 * alpha * g.clamp(min=0))[..., None]
    expected = (weights * a).sum(1).clamp(min=0)
    torch.testing.assert_close(grad_cam_plus_plus(model, X, T, layer="relu", upsample=False), expected)


def test_grad_cam_plus_plus_matches_the_formula_element_by_element():
    model = pool_cnn()
    x = X[:2]
    a, g = layer_and_grad(model, 4, x, T[:2])
    b, k, h, w = a.shape
    expected = torch.zeros(b, h, w, dtype=torch.float64)
    for n in range(b):
        for c in range(k):
            total = a[n, c].sum().item()
            wk = 0.0
            for i in range(h):
                for j in range(w):
                    gij = g[n, c, i, j].item()
                    denom = 2 * gij ** 2 + total * gij ** 3
                    alpha = gij ** 2 / denom if denom != 0 else 0.0
                    wk += alpha * max(gij, 0.0)
            expected[n] += wk * a[n, c]
    assert (g == 0).any()  # the max pooling leaves zero gradients: the 0/0 case is exercised
    out = grad_cam_plus_plus(model, x, T[:2], layer="conv", upsample=False, relu_attributions=False)
    torch.testing.assert_close(out, expected)


def test_layer_by_name_or_module_and_target_default():
    model = pool_cnn()
    torch.testing.assert_close(grad_cam(model, X, T, layer="conv"), grad_cam(model, X, T, layer=model.conv))
    with torch.no_grad():
        argmax = model(X).argmax(1)
    torch.testing.assert_close(grad_cam(model, X, layer="conv"), grad_cam(model, X, argmax, layer="conv"))
    torch.testing.assert_close(grad_cam(model, X, 2, layer="conv"), grad_cam(model, X, [2] * 5, layer="conv"))


@pytest.mark.parametrize("fn", [grad_cam, grad_cam_plus_plus, guided_grad_cam, guided_backprop])
@pytest.mark.parametrize("target", [None, T])
def test_result_does_not_depend_on_chunk_size(fn, target):
    model = pool_cnn()
    kw = {} if fn is guided_backprop else {"layer": "conv"}
    ref = fn(model, X, target, **kw)
    assert ref.abs().sum() > 0
    for mb in (1, 2, 3):
        torch.testing.assert_close(fn(model, X, target, max_batch=mb, **kw), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fn(model, X, target, memory_budget=1, **kw), ref, rtol=1e-12, atol=1e-12)


def test_in_place_relu_after_the_layer():
    plain, inplace = pool_cnn(), pool_cnn(inplace=True)
    for fn in (grad_cam, grad_cam_plus_plus, guided_grad_cam):
        torch.testing.assert_close(fn(inplace, X, T, layer="conv"), fn(plain, X, T, layer="conv"))
    torch.testing.assert_close(grad_cam(gap_cnn(inplace=True), X, T, layer="relu"),
                               grad_cam(gap_cnn(), X, T, layer="relu"))
    torch.testing.assert_close(guided_backprop(inplace, X, T), guided_backprop(plain, X, T))
    assert all(m.inplace for m in inplace.modules() if isinstance(m, nn.ReLU))


def test_bad_arguments():
    model = pool_cnn()
    with pytest.raises(ValueError, match="not a submodule"):
        grad_cam(model, X, layer="nope")
    with pytest.raises(ValueError, match="not a submodule"):
        grad_cam(model, X, layer=nn.Conv2d(6, 8, 3))
    with pytest.raises(TypeError, match="layer must be"):
        grad_cam(model, X, layer=3)
    with pytest.raises(ValueError, match=r"\[B, K, \.\.\.\] with 1 to 3 spatial axes"):
        grad_cam(model, X, layer="fc")
    with pytest.raises(ValueError, match="target out of range"):
        grad_cam(model, X, 7, layer="conv")
    with pytest.raises(ValueError, match="2 entries but inputs has batch size 5"):
        grad_cam(model, X, torch.tensor([0, 1]), layer="conv")
    with pytest.raises(TypeError, match="floating"):
        grad_cam(model, X.long(), layer="conv")
    with pytest.raises(TypeError, match="relu_attributions"):
        grad_cam(model, X, layer="conv", relu_attributions="yes")
    with pytest.raises(ValueError, match="max_batch"):
        grad_cam(model, X, layer="conv", max_batch=0)
    with pytest.raises(TypeError, match="nn.Module"):
        guided_backprop(lambda x: model(x), X)
    unused = nn.Conv2d(3, 3, 1).double()
    with pytest.raises(ValueError, match="did not run"):
        grad_cam(_Skip(model, unused).eval(), X, layer=unused)
    twice = _Twice().eval()
    with pytest.raises(ValueError, match="more than once"):
        grad_cam(twice, X, layer="conv")
    assert no_hooks(model) and no_hooks(twice) and no_hooks(unused)


class _Skip(nn.Module):
    """Holds a module it never calls."""

    def __init__(self, net, unused):
        super().__init__()
        self.net, self.unused = net, unused

    def forward(self, x):
        return self.net(x)


class _Twice(nn.Module):
    """Calls the same conv twice."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1).double()
        self.fc = nn.Linear(3, 2).double()

    def forward(self, x):
        return self.fc(self.conv(self.conv(x)).mean((2, 3)))


class _Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_model_state_restored_and_no_parameter_gradients():
    model = pool_cnn(inplace=True)
    model.conv.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    x = X.clone()
    for fn, kw in ((grad_cam, {"layer": "conv"}), (grad_cam_plus_plus, {"layer": model.conv}),
                   (guided_backprop, {}), (guided_grad_cam, {"layer": "conv"})):
        fn(model, x, T, max_batch=2, **kw)
        assert not model.training
        assert [p.requires_grad for p in model.parameters()] == flags
        assert all(p.grad is None for p in model.parameters())
        assert no_hooks(model)
        assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    torch.testing.assert_close(x, X, rtol=0, atol=0)


def test_state_restored_when_the_model_raises():
    model = pool_cnn(inplace=True)
    broken = nn.Sequential(*list(model.children())[:5], _Boom()).eval()
    for fn, kw in ((grad_cam, {"layer": "3"}), (guided_backprop, {}), (guided_grad_cam, {"layer": model.conv})):
        with pytest.raises(RuntimeError, match="boom"):
            fn(broken, X, T, **kw)
        assert no_hooks(broken)
        assert all(p.requires_grad for p in broken.parameters())
        assert all(m.inplace for m in broken.modules() if isinstance(m, nn.ReLU))


def test_training_mode_is_used_as_given_with_a_warning():
    model = pool_cnn().train()
    with pytest.warns(UserWarning, match="training mode"):
        grad_cam(model, X, T, layer="conv")
    assert model.training


class _GuidedReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0)


class _GuidedReLU(nn.Module):
    def forward(self, x):
        return _GuidedReLUFn.apply(x)


def hand_guided(model, x, target):
    guided = copy.deepcopy(model)
    for name, m in list(guided.named_children()):
        if isinstance(m, nn.ReLU):
            setattr(guided, name, _GuidedReLU())
    x = x.clone().requires_grad_(True)
    out = guided(x)
    (g,) = torch.autograd.grad(out[torch.arange(x.shape[0]), target].sum(), x)
    return g


def input_gradient(model, x, target):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x)[torch.arange(x.shape[0]), target].sum(), x)
    return g


def test_guided_backprop_is_the_gradient_without_relus():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).double().eval()
    torch.testing.assert_close(guided_backprop(model, X, T), input_gradient(model, X, T))


@pytest.mark.parametrize("inplace", [False, True])
def test_guided_backprop_matches_a_hand_written_guided_relu(inplace):
    model = pool_cnn(inplace=inplace)
    expected = hand_guided(pool_cnn(), X, T)
    out = guided_backprop(model, X, T)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, input_gradient(pool_cnn(), X, T))
    assert no_hooks(model)
    torch.testing.assert_close(input_gradient(model, X, T), input_gradient(pool_cnn(), X, T))


def test_guided_backprop_with_a_relu_module_used_twice():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.relu, self.fc = nn.ReLU(), nn.Linear(4, 5)

        def forward(self, x):
            return self.fc(self.relu(self.c2(self.relu(self.c1(x)))).mean((2, 3)))

    model = Shared().double().eval()
    ref = copy.deepcopy(model)
    ref.relu = _GuidedReLU()
    x = X.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(ref(x)[torch.arange(5), T].sum(), x)
    torch.testing.assert_close(guided_backprop(model, X, T), expected)
    assert no_hooks(model)


def test_guided_grad_cam_is_the_product():
    model = pool_cnn()
    out = guided_grad_cam(model, X, T, layer="conv")
    assert out.shape == X.shape
    expected = guided_backprop(model, X, T) * grad_cam(model, X, T, layer="conv")[:, None]
    torch.testing.assert_close(out, expected)
    assert out.abs().sum() > 0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_against_captum_layer_grad_cam():
    captum = pytest.importorskip("captum.attr")
    model = pool_cnn()
    for relu in (True, False):
        ref = captum.LayerGradCam(model, model.conv).attribute(X, T, relu_attributions=relu)[:, 0]
        out = grad_cam(model, X, T, layer="conv", upsample=False, relu_attributions=relu)
        assert (out - ref).norm() / ref.norm() < 1e-5
    ref = captum.LayerAttribution.interpolate(captum.LayerGradCam(model, model.conv).attribute(
        X, T, relu_attributions=True), (8, 8), interpolate_mode="bilinear")[:, 0]
    out = grad_cam(model, X, T, layer="conv")
    assert (out - ref).norm() / ref.norm() < 1e-5


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_against_captum_guided_backprop_and_guided_grad_cam():
    captum = pytest.importorskip("captum.attr")
    model = pool_cnn()
    ref = captum.GuidedBackprop(model).attribute(X, T)
    out = guided_backprop(model, X, T)
    assert (out - ref).norm() / ref.norm() < 1e-5
    ref = captum.GuidedGradCam(model, model.conv).attribute(X, T, interpolate_mode="bilinear")
    out = guided_grad_cam(model, X, T, layer="conv")
    assert (out - ref).norm() / ref.norm() < 1e-5
    assert no_hooks(model)
