"""Layer Integrated Gradients and Grad-CAM on several layers and on layers with several tensors: a
list of layers gives a list, a tuple-valued layer (output, or positional inputs) a tuple; one path
moves every layer tensor at once (Captum's joint path, checked against Captum), chunking does not
change results, ``grad_kwargs`` reach ``torch.autograd.grad``, and the model is left as it was."""
import pytest
import torch
from torch import nn

from fastattr.attribution import grad_cam, layer_integrated_gradients
from tests.attribution.test_layer import hook_count
from tests.conftest import assert_same_nested
from tests.models import rand

captum_attr = pytest.importorskip("captum.attr")
pytestmark = pytest.mark.filterwarnings("ignore:Multiple layers provided:UserWarning")


class Split(nn.Module):
    """``h → (tanh(h₁), sigmoid(h₂))``: a layer whose output is a tuple."""

    def forward(self, h):
        a, b = h.chunk(2, dim=1)
        return torch.tanh(a), torch.sigmoid(b)


class Mix(nn.Module):
    """``(a, b) → Linear([a ⊙ b, a + b])``: a layer called with two tensors."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 5)

    def forward(self, a, b):
        return self.lin(torch.cat([a * b, a + b], 1))


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.split = Split()
        self.mix = Mix()
        self.head = nn.Linear(5, 3)
        self.side = nn.Linear(6, 3)
        self.unused = nn.Tanh()

    def forward(self, x):
        h = self.inp(x)
        a, b = self.split(h)
        self.unused(h)
        return self.head(torch.tanh(self.mix(a, b))) + torch.sin(self.side(x))


def branchy(seed=0):
    torch.manual_seed(seed)
    return Branchy().double().eval()


def same(ours, theirs, tol=1e-5):
    assert_same_nested(ours, theirs, tol)


def test_tuple_output_and_several_positional_inputs_match_captum():
    model, x, base = branchy(), rand(5, 6, seed=1), rand(5, 6, seed=2)
    t = torch.tensor([0, 1, 2, 1, 0])
    for layer, to_input in ((model.split, False), (model.mix, True)):
        kw = dict(baselines=base, n_steps=16, return_convergence_delta=True, attribute_to_layer_input=to_input)
        ours, delta = layer_integrated_gradients(model, x, t, layer=layer, **kw)
        theirs, their_delta = captum_attr.LayerIntegratedGradients(model, layer).attribute(x, target=t, **kw)
        assert isinstance(ours, tuple) and [a.shape for a in ours] == [(5, 4), (5, 4)]
        same(ours, theirs)
        torch.testing.assert_close(delta, their_delta, rtol=0, atol=1e-7)
    # The mixer's inputs are the splitter's outputs: the same tensors, the same attributions.
    into = layer_integrated_gradients(model, x, t, layer="mix", baselines=base, n_steps=16,
                                      attribute_to_layer_input=True)
    out_of = layer_integrated_gradients(model, x, t, layer="split", baselines=base, n_steps=16)
    same(into, out_of, 1e-12)


def test_a_list_of_layers_shares_one_path_and_sums_to_the_gap():
    model, x = branchy(1), rand(4, 6, seed=3)
    t = torch.tensor([2, 0, 1, 1])
    layers = [model.side, "split"]
    ours, delta = layer_integrated_gradients(model, x, t, layer=layers, n_steps=24, return_convergence_delta=True)
    theirs, their_delta = captum_attr.LayerIntegratedGradients(model, [model.side, model.split]).attribute(
        x, target=t, n_steps=24, return_convergence_delta=True)
    assert isinstance(ours, list) and len(ours) == 2 and isinstance(ours[1], tuple)
    same(ours, theirs)
    torch.testing.assert_close(delta, their_delta, rtol=0, atol=1e-7)
    total = ours[0].sum(1) + ours[1][0].sum(1) + ours[1][1].sum(1)
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x)))[torch.arange(4), t]
    torch.testing.assert_close(total - delta, gap)
    # A layer that only feeds another listed layer is cut off from the target, as in Captum.
    with pytest.raises(ValueError, match="'inp'"):
        layer_integrated_gradients(model, x, t, layer=["inp", "split"], n_steps=4)
    for max_batch in (1, 5, 1000):
        chunked = layer_integrated_gradients(model, x, t, layer=layers, n_steps=24, max_batch=max_batch)
        same(chunked, ours, 1e-12)
    one = layer_integrated_gradients(model, x, t, layer=["mix"], n_steps=24)
    assert isinstance(one, list) and len(one) == 1
    same(one[0], layer_integrated_gradients(model, x, t, layer="mix", n_steps=24), 1e-12)


def test_layers_of_different_dtypes_keep_their_dtype():
    class Halves(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = nn.Linear(6, 3).double()
            self.second = nn.Linear(6, 3).float()

        def forward(self, x):
            return torch.tanh(self.first(x)) * self.second(x.float()).double()

    torch.manual_seed(2)
    model, x = Halves().eval(), rand(3, 6, seed=4)
    ours = layer_integrated_gradients(model, x, 1, layer=["first", "second"], n_steps=8)
    theirs = captum_attr.LayerIntegratedGradients(model, [model.first, model.second]).attribute(x, target=1, n_steps=8)
    assert [a.dtype for a in ours] == [torch.float64, torch.float32]
    same(ours, theirs)


def test_grad_kwargs_and_an_unused_layer():
    model, x = branchy(2), rand(3, 6, seed=5)
    with pytest.raises(ValueError, match="materialize_grads"):
        layer_integrated_gradients(model, x, 0, layer=["inp", "unused"], n_steps=4)
    assert hook_count(model) == 0 and all(p.requires_grad for p in model.parameters())
    used, unused = layer_integrated_gradients(model, x, 0, layer=["inp", "unused"], n_steps=6,
                                              grad_kwargs={"materialize_grads": True})
    assert unused.shape == (3, 8) and not unused.any()
    same(used, layer_integrated_gradients(model, x, 0, layer="inp", n_steps=6), 1e-12)
    alone = layer_integrated_gradients(model, x, 0, layer="unused", n_steps=4, grad_kwargs={"materialize_grads": True})
    assert alone.shape == (3, 8) and not alone.any()
    with pytest.raises(ValueError, match="grad_kwargs"):
        layer_integrated_gradients(model, x, 0, layer="inp", grad_kwargs={"grad_outputs": None})
    with pytest.raises(TypeError, match="grad_kwargs"):
        layer_integrated_gradients(model, x, 0, layer="inp", grad_kwargs=True)


def test_bad_layer_lists_and_non_tensor_layer_inputs():
    class Scaled(nn.Module):
        def forward(self, h, scale):
            return h * scale

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.scaled = nn.Linear(6, 3), Scaled()

        def forward(self, x):
            return self.scaled(self.lin(x), 2.0)

    model, x = Net().double().eval(), rand(2, 6, seed=6)
    before = x.clone()
    with pytest.raises(ValueError, match="empty list"):
        layer_integrated_gradients(model, x, 0, layer=[])
    with pytest.raises(ValueError, match="twice"):
        layer_integrated_gradients(model, x, 0, layer=[model.lin, "lin"])
    with pytest.raises(TypeError, match="positional inputs"):
        layer_integrated_gradients(model, x, 0, layer=["lin", "scaled"], attribute_to_layer_input=True)
    assert hook_count(model) == 0 and all(p.requires_grad for p in model.parameters())
    assert torch.equal(x, before)
    # Two same-typed modules of a plain function get their own entries.
    lin_a, lin_b = nn.Linear(6, 2).double().eval(), nn.Linear(6, 2).double().eval()
    out = layer_integrated_gradients(lambda z: lin_a(z) * lin_b(z), x, 1, layer=[lin_a, lin_b], n_steps=4)
    assert len(out) == 2 and [a.shape for a in out] == [(2, 2), (2, 2)]


def test_grad_cam_on_a_tuple_valued_layer_matches_captum():
    torch.manual_seed(3)
    model, x = branchy(3), rand(4, 6, seed=7)
    t = torch.tensor([0, 2, 1, 0])
    for layer, to_input in ((model.split, False), (model.mix, True)):
        ours = grad_cam(model, x, t, layer=layer, relu_attributions=False, upsample=False,
                        attribute_to_layer_input=to_input)
        theirs = captum_attr.LayerGradCam(model, layer).attribute(x, t, attribute_to_layer_input=to_input)
        assert isinstance(ours, tuple) and len(ours) == 2
        same(ours, tuple(c.detach()[:, 0] for c in theirs))
    assert hook_count(model) == 0
