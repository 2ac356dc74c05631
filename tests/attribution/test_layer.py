"""Layer Integrated Gradients and the critical-pathway methods: closed forms, completeness, token
inputs through an embedding, agreement with Captum, chunk-size independence, the Pathway Gradient
convention, model-state restoration and bad input."""
import pytest
import torch
from torch import nn

import fastattr.attribution as A
from fastattr.attribution.layer import (layer_integrated_gradients, neuron_integrated_gradients, neuron_mct,
                                        pathway_gradient, select_pathway)
from tests.conftest import rel_err
from tests.models import rand


class BagClassifier(nn.Module):
    """Embedding → mean over tokens → Linear → tanh → Linear."""

    def __init__(self, vocab=30, dim=8, classes=3):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim, padding_idx=0)
        self.hidden = nn.Linear(dim, 16)
        self.out = nn.Linear(16, classes)

    def forward(self, ids):
        return self.out(torch.tanh(self.hidden(self.embedding(ids).mean(1))))


class LSTMClassifier(nn.Module):
    """Embedding → LSTM → last hidden state → Linear."""

    def __init__(self, vocab=30, dim=8, classes=3):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, 12, batch_first=True)
        self.out = nn.Linear(12, classes)

    def forward(self, ids):
        h, _ = self.lstm(self.embedding(ids))
        return self.out(h[:, -1])


def text_model(kind, seed=0):
    torch.manual_seed(seed)
    return (BagClassifier() if kind == "bag" else LSTMClassifier()).double().eval()


def token_ids(batch=4, length=7, vocab=30, seed=0):
    return torch.randint(1, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def relu_mlp(seed=0, d=10, classes=4):
    torch.manual_seed(seed)
    layers = [nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, classes)]
    return nn.Sequential(*layers).double().eval()


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def zeroed(model, layer, x):
    """``f(x)`` with ``layer``'s output replaced by zeros."""
    handle = layer.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    try:
        with torch.no_grad():
            return model(x)
    finally:
        handle.remove()


# ---------------------------------------------------------------- Layer Integrated Gradients

def test_layer_ig_closed_form_on_a_linear_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.Linear(16, 3)).double().eval()
    x, base = rand(5, 12, seed=1), rand(5, 12, seed=2)
    t = torch.tensor([0, 1, 2, 1, 0])
    w1, w2 = model[0].weight.detach(), model[1].weight.detach()
    expected = ((x - base) @ w1.T) * w2[t]
    for layer in (model[0], "0"):
        attr = layer_integrated_gradients(model, x, t, layer=layer, baselines=base, n_steps=5)
        torch.testing.assert_close(attr, expected)
    bare = layer_integrated_gradients(model, x, t, layer="0", baselines=base, multiply_by_inputs=False,
                                      method="riemann_trapezoid", n_steps=4)
    torch.testing.assert_close(bare, sum(A.quadrature("riemann_trapezoid", 4)[1]) * w2[t])


def test_layer_ig_completeness_on_a_smooth_model():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)).double().eval()
    x = rand(6, 12, seed=3)
    attr, delta = layer_integrated_gradients(model, x, layer="2", n_steps=64, return_convergence_delta=True)
    assert attr.shape == (6, 16)
    with torch.no_grad():
        t = model(x).argmax(1)
        gap = model(x)[torch.arange(6), t] - model(torch.zeros_like(x))[torch.arange(6), t]
    torch.testing.assert_close(attr.sum(1) - gap, delta)
    assert (delta.abs() / gap.abs()).max() < 1e-8


@pytest.mark.parametrize("kind", ["bag", "lstm"])
def test_layer_ig_through_an_embedding_of_token_ids(kind):
    model, ids = text_model(kind), token_ids()
    before = ids.clone()
    attr, delta = layer_integrated_gradients(model, ids, target=1, layer="embedding", n_steps=64,
                                             return_convergence_delta=True)
    assert attr.shape == (4, 7, 8) and attr.dtype == torch.float64
    torch.testing.assert_close(ids, before)
    with torch.no_grad():
        gap = model(ids)[:, 1] - model(torch.zeros_like(ids))[:, 1]
    assert gap.abs().min() > 1e-4
    assert (delta.abs() / gap.abs()).max() < 1e-6
    pad = torch.full((7,), 5)
    ref = layer_integrated_gradients(model, ids, target=1, layer=model.embedding, baselines=pad, n_steps=6)
    for max_batch in (1, 3, 17):
        out = layer_integrated_gradients(model, ids, target=1, layer=model.embedding, baselines=pad, n_steps=6,
                                         max_batch=max_batch)
        assert rel_err(out, ref) < 1e-12


@pytest.mark.parametrize("kind", ["bag", "lstm"])
def test_layer_ig_matches_captum(kind):
    captum_attr = pytest.importorskip("captum.attr")
    model, ids = text_model(kind), token_ids(seed=1)
    base = torch.full_like(ids, 3)
    t = torch.tensor([0, 2, 1, 0])
    for method in ("gausslegendre", "riemann_trapezoid"):
        ours, delta = layer_integrated_gradients(model, ids, t, layer="embedding", baselines=base, n_steps=50,
                                                 method=method, return_convergence_delta=True)
        theirs, their_delta = captum_attr.LayerIntegratedGradients(model, model.embedding).attribute(
            ids, baselines=base, target=t, n_steps=50, method=method, return_convergence_delta=True)
        assert rel_err(ours, theirs) < 1e-5
        torch.testing.assert_close(delta, their_delta, atol=1e-8, rtol=1e-5)


def test_layer_ig_at_an_identity_first_layer_is_integrated_gradients():
    """Both run the same path loop; through an identity layer they are the same integral."""
    torch.manual_seed(6)
    body = relu_mlp(seed=6)
    model = nn.Sequential(nn.Identity(), *body).eval()
    x, base = rand(5, 10, seed=12), rand(1, 10, seed=13)
    for kw in (dict(method="riemann_middle"), dict(multiply_by_inputs=False), dict(max_batch=7)):
        lig = layer_integrated_gradients(model, x, 2, layer="0", baselines=base, n_steps=9, **kw)
        torch.testing.assert_close(lig, A.integrated_gradients(body, x, 2, baselines=base, n_steps=9, **kw))


def test_layer_ig_to_the_layer_input():
    """``attribute_to_layer_input``: IG w.r.t. what the layer receives, i.e. the previous layer's output."""
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)).double().eval()
    x = rand(6, 12, seed=14)
    into, d_into = layer_integrated_gradients(model, x, 1, layer="2", attribute_to_layer_input=True,
                                              n_steps=20, baselines=0.3, return_convergence_delta=True)
    out_of, d_out = layer_integrated_gradients(model, x, 1, layer="1", n_steps=20, baselines=0.3,
                                               return_convergence_delta=True)
    assert into.shape == (6, 16)
    torch.testing.assert_close(into, out_of)
    torch.testing.assert_close(d_into, d_out)
    assert rel_err(into, layer_integrated_gradients(model, x, 1, layer="2", n_steps=20, baselines=0.3)) > 0.01
    model_ids, ids = text_model("lstm"), token_ids()
    with pytest.raises(TypeError, match="floating"):
        layer_integrated_gradients(model_ids, ids, layer="embedding", attribute_to_layer_input=True)
    with pytest.raises(TypeError, match="attribute_to_layer_input"):
        layer_integrated_gradients(model, x, layer="2", attribute_to_layer_input=1)
    assert hook_count(model) == 0 and hook_count(model_ids) == 0


def test_layer_ig_restores_the_model_and_rejects_bad_layers():
    model, ids = text_model("lstm"), token_ids()
    flags = [p.requires_grad for p in model.parameters()]
    layer_integrated_gradients(model, ids, layer="embedding", n_steps=4)
    assert [p.requires_grad for p in model.parameters()] == flags and hook_count(model) == 0
    with pytest.raises(TypeError, match="tuple of tensors"):
        layer_integrated_gradients(model, ids, layer="lstm", n_steps=4)
    assert hook_count(model) == 0 and [p.requires_grad for p in model.parameters()] == flags
    with pytest.raises(ValueError, match="not found"):
        layer_integrated_gradients(model, ids, layer="encoder", n_steps=4)
    with pytest.raises(ValueError, match="not a submodule"):
        layer_integrated_gradients(model, ids, layer=nn.Linear(2, 2), n_steps=4)
    with pytest.raises(ValueError, match="method"):
        layer_integrated_gradients(model, ids, layer="embedding", method="simpson")


def test_in_place_relus_give_the_same_results():
    torch.manual_seed(5)
    in_place = nn.Sequential(nn.Linear(10, 16), nn.ReLU(inplace=True), nn.Linear(16, 12), nn.ReLU(inplace=True),
                             nn.Linear(12, 3)).double().eval()
    plain = relu_mlp(d=10, classes=3)
    plain.load_state_dict(in_place.state_dict())
    x = rand(4, 10, seed=11)
    torch.testing.assert_close(layer_integrated_gradients(in_place, x, 1, layer="0", n_steps=8),
                               layer_integrated_gradients(plain, x, 1, layer="0", n_steps=8))
    for fn in (neuron_mct, neuron_integrated_gradients):
        ours, ref = fn(in_place, x, 1), fn(plain, x, 1)
        for k in ref:
            torch.testing.assert_close(ours[k], ref[k])
    torch.testing.assert_close(pathway_gradient(in_place, x, 1, keep=0.3), pathway_gradient(plain, x, 1, keep=0.3))

# ---------------------------------------------------------------- NeuronMCT and NeuronIntGrad

def test_neuron_mct_equals_activation_times_gradient_by_hand():
    model, x = relu_mlp(), rand(5, 10, seed=4)
    t = torch.tensor([0, 3, 1, 2, 0])
    c = neuron_mct(model, x, t)
    assert list(c) == ["1", "3"]
    h, acts = x, {}
    for name, layer in model.named_children():
        h = layer(h)
        if isinstance(layer, nn.ReLU):
            acts[name] = h
    grads = torch.autograd.grad(h[torch.arange(5), t].sum(), list(acts.values()))
    for (name, a), g in zip(acts.items(), grads):
        torch.testing.assert_close(c[name], (a * g).abs().detach())
        assert (c[name][a == 0] == 0).all()
    for max_batch in (1, 2):
        chunked = neuron_mct(model, x, t, max_batch=max_batch)
        for name in c:
            torch.testing.assert_close(chunked[name], c[name])


def test_neuron_integrated_gradients_completeness_per_layer():
    model, x = relu_mlp(), rand(6, 10, seed=5)
    t = torch.tensor([1, 0, 2, 3, 1, 0])
    c = neuron_integrated_gradients(model, x, t, n_steps=256, method="riemann_middle")
    with torch.no_grad():
        full = model(x)[torch.arange(6), t]
    for name, tol in (("3", 1e-10), ("1", 2e-2)):   # exact where the rest of the network is linear
        gap = full - zeroed(model, model[int(name)], x)[torch.arange(6), t]
        assert ((c[name].sum(1) - gap).abs() / gap.abs().clamp_min(1e-3)).max() < tol
    with torch.no_grad():
        dead = model[:2](x) == 0
    assert dead.any() and (c["1"][dead] == 0).all()


def test_neuron_integrated_gradients_chunk_independence_and_batching_across_layers():
    model, x = relu_mlp(seed=2), rand(5, 10, seed=6)
    ref = neuron_integrated_gradients(model, x, 2, n_steps=12)
    for max_batch in (1, 4, 7, 25, 1000):
        out = neuron_integrated_gradients(model, x, 2, n_steps=12, max_batch=max_batch)
        assert all(rel_err(out[k], ref[k]) < 1e-6 for k in ref)
    for name in ref:   # one layer at a time gives the same as all layers batched together
        alone = neuron_integrated_gradients(model, x, 2, layers=[name], n_steps=12, max_batch=9)
        assert list(alone) == [name] and rel_err(alone[name], ref[name]) < 1e-6


def test_shared_relu_calls_get_their_own_keys():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.c(self.relu(self.b(self.relu(self.a(x)))))

    torch.manual_seed(0)
    model, x = Shared().double().eval(), rand(3, 6, seed=7)
    mct = neuron_mct(model, x, 0)
    ig = neuron_integrated_gradients(model, x, 0, n_steps=256, method="riemann_middle")
    assert list(mct) == list(ig) == ["relu", "relu#1"]
    with torch.no_grad():
        a2 = model.relu(model.b(model.relu(model.a(x))))
        gap = model(x)[:, 0] - model.c(torch.zeros_like(a2))[:, 0]
    torch.testing.assert_close(ig["relu#1"].sum(1), gap)
    g = pathway_gradient(model, x, 0, masks={k: torch.ones_like(v, dtype=torch.bool) for k, v in mct.items()})
    torch.testing.assert_close(g, A.saliency(model, x, 0, abs=False))


def test_neuron_methods_reject_bad_input():
    model = relu_mlp()
    with pytest.raises(TypeError, match="layer"):
        neuron_mct(model, torch.ones(2, 10, dtype=torch.long))
    with pytest.raises(TypeError, match="layer"):
        neuron_integrated_gradients(model, torch.ones(2, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="no nn.ReLU"):
        neuron_mct(nn.Sequential(nn.Linear(10, 2)).double().eval(), rand(2, 10))
    with pytest.raises(ValueError, match="not found"):
        neuron_mct(model, rand(2, 10), layers=["relu9"])
    with pytest.raises(ValueError, match="target"):
        neuron_mct(model, rand(3, 10), target=torch.tensor([0, 1]))


# ---------------------------------------------------------------- pathway selection and Pathway Gradient

def test_select_pathway_keeps_the_top_fraction_network_wide_and_never_dead_neurons():
    c = {"a": torch.tensor([[5.0, 0.0, 1.0, 3.0], [0.5, 0.2, 0.1, 0.0]]),
         "b": torch.tensor([[4.0, 2.0], [0.3, 0.9]])}
    masks = select_pathway(c, keep=0.5)
    assert masks["a"].tolist() == [[True, False, False, True], [True, False, False, False]]
    assert masks["b"].tolist() == [[True, False], [True, True]]
    acts = {"a": torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]]), "b": torch.ones(2, 2)}
    masks = select_pathway(c, keep=0.5, activations=acts)
    assert masks["a"][0].tolist() == [True, False, False, False]
    everything = select_pathway(c, keep=1.0)
    assert everything["a"].tolist() == (c["a"] != 0).tolist()
    for keep in (0, -0.1, 1.5, True):
        with pytest.raises(ValueError, match="keep"):
            select_pathway(c, keep=keep)
    with pytest.raises(ValueError, match="activations"):
        select_pathway(c, activations={"a": acts["a"]})


def test_pathway_gradient_with_every_neuron_kept_is_the_input_gradient():
    model, x = relu_mlp(), rand(5, 10, seed=8)
    ones = {k: torch.ones_like(v, dtype=torch.bool) for k, v in neuron_mct(model, x, 1).items()}
    torch.testing.assert_close(pathway_gradient(model, x, 1, masks=ones), A.saliency(model, x, 1, abs=False))
    zero_first = dict(ones, **{"1": torch.zeros(16, dtype=torch.bool)})
    assert (pathway_gradient(model, x, 1, masks=zero_first) == 0).all()


def test_pathway_gradient_convention_forward_unchanged_backward_masked():
    model, x = relu_mlp(seed=3), rand(4, 10, seed=9)
    before, flags = x.clone(), [p.requires_grad for p in model.parameters()]
    t = torch.tensor([0, 1, 2, 3])
    masks = select_pathway(neuron_mct(model, x, t), keep=0.3)
    seen = []
    handle = model.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    try:
        pg = pathway_gradient(model, x, t, masks=masks, max_batch=3)
    finally:
        handle.remove()
    with torch.no_grad():
        plain = torch.cat([model(x[:3]), model(x[3:])])   # the same chunks of 3 + 1
    torch.testing.assert_close(torch.cat(seen[-2:]), plain, rtol=0, atol=0)
    # The thesis's network: every non-pathway neuron is a constant equal to its original value (the masks of
    # the first rows for the target check's forward of two inputs).
    handles = [model[int(k)].register_forward_hook(
        lambda m, i, o, k=k: torch.where(masks[k][:o.shape[0]], o, o.detach())) for k in masks]
    try:
        expected = A.saliency(model, x, t, abs=False)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(pg, expected)
    assert not torch.equal(pg, A.saliency(model, x, t, abs=False))
    torch.testing.assert_close(x, before)
    assert hook_count(model) == 0 and [p.requires_grad for p in model.parameters()] == flags


@pytest.mark.parametrize("method", ["mct", "intgrad"])
def test_pathway_gradient_selects_its_own_pathway(method):
    model, x = relu_mlp(seed=4), rand(3, 10, seed=10)
    contributions = (neuron_mct(model, x, 2) if method == "mct"
                     else neuron_integrated_gradients(model, x, 2, n_steps=8))
    masks = select_pathway(contributions, keep=0.2)
    pg = pathway_gradient(model, x, 2, keep=0.2, method=method, n_steps=8)
    torch.testing.assert_close(pg, pathway_gradient(model, x, 2, masks=masks))
    assert pg.shape == x.shape and pg.abs().sum() > 0


def test_pathway_gradient_rejects_bad_input():
    model, x = relu_mlp(), rand(2, 10)
    with pytest.raises(ValueError, match="method"):
        pathway_gradient(model, x, method="shapley")
    with pytest.raises(ValueError, match="keep"):
        pathway_gradient(model, x, keep=0.0)
    with pytest.raises(ValueError, match="match no layer"):
        pathway_gradient(model, x, masks={"1#3": torch.ones(16, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        pathway_gradient(model, x, masks={"1": torch.ones(5, dtype=torch.bool)})
    assert hook_count(model) == 0
    with pytest.raises(TypeError, match="layer"):
        pathway_gradient(model, torch.ones(2, 10, dtype=torch.long))
