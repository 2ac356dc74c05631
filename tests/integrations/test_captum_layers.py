"""LayerIntegratedGradients and LayerGradCam from fastattr.integrations.captum on what Captum's layer
API allows beyond one tensor: lists of layers (a list out), layers whose output or positional inputs
are several tensors (a tuple out), several input tensors, and ``grad_kwargs`` passed to
``torch.autograd.grad``; Captum's values in float64."""
import pytest
import torch
from torch import nn

captum = pytest.importorskip("captum")
from captum import attr as cattr  # noqa: E402

from fastattr.integrations import captum as fa  # noqa: E402
from tests.attribution.test_layer_several import branchy, same  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Multiple layers provided:UserWarning")


class TwoTexts(nn.Module):
    """Two token sequences through their own embeddings, a weighting vector as an extra argument."""

    def __init__(self, vocab=20, dim=6):
        super().__init__()
        self.emb_a, self.emb_b = nn.Embedding(vocab, dim), nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, 3)

    def forward(self, ids_a, ids_b, weight):
        pooled = torch.tanh(self.emb_a(ids_a)).mean(1) + torch.sigmoid(self.emb_b(ids_b)).mean(1)
        return self.out(pooled * weight)


def texts(seed=0):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    ids = (torch.randint(1, 20, (4, 5), generator=gen), torch.randint(1, 20, (4, 7), generator=gen))
    weight = torch.rand(4, 1, generator=gen, dtype=torch.float64) + 0.5
    return TwoTexts().double().eval(), ids, weight


def test_a_list_of_embeddings_over_several_token_inputs():
    model, ids, weight = texts()
    pads = tuple(torch.zeros_like(i) for i in ids)
    t = torch.tensor([0, 2, 1, 2])
    for size in (None, 8):
        kw = dict(baselines=pads, target=t, additional_forward_args=(weight,), n_steps=20,
                  internal_batch_size=size, return_convergence_delta=True)
        ours, delta = fa.LayerIntegratedGradients(model, [model.emb_a, model.emb_b]).attribute(ids, **kw)
        theirs, their_delta = cattr.LayerIntegratedGradients(model, [model.emb_a, model.emb_b]).attribute(ids, **kw)
        assert isinstance(ours, list) and [a.shape for a in ours] == [(4, 5, 6), (4, 7, 6)]
        same(ours, theirs)
        torch.testing.assert_close(delta, their_delta, rtol=0, atol=1e-7)


def test_tuple_valued_layers_and_mixed_lists():
    model, x = branchy(4), torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor([1, 0, 2, 2, 1])
    for layer, to_input, mbi in ((model.split, False, True), (model.mix, True, False),
                                 ([model.side, model.mix], True, True), ([model.split, model.side], False, False)):
        kw = dict(target=t, n_steps=12, attribute_to_layer_input=to_input, baselines=0.2)
        ours = fa.LayerIntegratedGradients(model, layer, multiply_by_inputs=mbi).attribute(x, **kw)
        same(ours, cattr.LayerIntegratedGradients(model, layer, multiply_by_inputs=mbi).attribute(x, **kw))


def test_grad_kwargs_reach_autograd_for_an_unused_layer():
    model, x = branchy(5), torch.randn(3, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    kw = dict(target=1, grad_kwargs={"materialize_grads": True})
    ours = fa.LayerIntegratedGradients(model, [model.side, model.unused]).attribute(x, n_steps=6, **kw)
    same(ours, cattr.LayerIntegratedGradients(model, [model.side, model.unused]).attribute(x, n_steps=6, **kw))
    assert not ours[1].any()
    cam = fa.LayerGradCam(model, model.unused).attribute(x, **kw)
    assert cam.shape == (3, 1) and not cam.any()
    same(cam, cattr.LayerGradCam(model, model.unused).attribute(x, **kw).detach())
    with pytest.raises(ValueError, match="materialize_grads"):
        fa.LayerGradCam(model, model.unused).attribute(x, target=1)
    with pytest.raises(ValueError, match="materialize_grads"):
        fa.LayerIntegratedGradients(model, model.unused).attribute(x, target=1, n_steps=4)


def test_layer_grad_cam_on_tuple_valued_layers():
    model, x = branchy(6), torch.randn(4, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for layer, to_input in ((model.split, False), (model.mix, True)):
        for summation in (True, False):
            kw = dict(target=2, attribute_to_layer_input=to_input, attr_dim_summation=summation,
                      relu_attributions=summation)
            ours = fa.LayerGradCam(model, layer).attribute(x, **kw)
            theirs = tuple(c.detach() for c in cattr.LayerGradCam(model, layer).attribute(x, **kw))
            same(ours, theirs)


class SplitConv(nn.Module):
    """A Conv1d whose output channels come back as two tensors."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1)

    def forward(self, x):
        return tuple(self.conv(x).chunk(2, 1))


def test_layer_grad_cam_on_a_conv_layer_with_two_outputs():
    torch.manual_seed(7)
    split = SplitConv().double().eval()
    head = nn.Linear(16, 3).double().eval()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.split, self.head = split, head

        def forward(self, z):
            a, b = self.split(z)
            return self.head(torch.relu(a * b).flatten(1))

    net, x = Net().eval(), torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ours = fa.LayerGradCam(net, net.split).attribute(x, target=1)
    assert isinstance(ours, tuple) and [c.shape for c in ours] == [(3, 1, 8), (3, 1, 8)]
    same(ours, tuple(c.detach() for c in cattr.LayerGradCam(net, net.split).attribute(x, target=1)))
    with pytest.raises(ValueError, match="one output tensor"):
        fa.GuidedGradCam(net, net.split).attribute(x, target=0)
