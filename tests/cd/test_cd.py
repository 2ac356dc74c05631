"""contextual_decomposition: the β + γ invariant on every layer type and on random compositions,
β-only batched == pair reference one mask at a time, hand-computed cases, and bad input."""
import pytest
import torch
from torch import nn

from fastattr.cd import contextual_decomposition, register_rule
from fastattr.cd import rules as cd_rules

from .models import FunctionalNet, image_model, random_composition, text_lstm, vector_model

IMAGE_KINDS = ["relu", "leaky_relu", "tanh", "sigmoid", "maxpool", "maxpool_pad", "avgpool", "adaptive_avgpool",
               "batchnorm", "dropout", "identity", "sequential", "basic_block", "basic_block_down", "bottleneck"]


def _images(batch=2, seed=0):
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _masks(k, shape, seed=1):
    return (torch.rand((k,) + shape, generator=torch.Generator().manual_seed(seed)) > 0.5).double()


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _reference_one_at_a_time(model, x, masks, **kw):
    """The pair rules, one mask per call: the spec the batched β-only path must equal."""
    outs = [contextual_decomposition(model, x, masks[k:k + 1], mode="pair", **kw) for k in range(masks.shape[0])]
    return torch.cat([o[0] for o in outs], 1), torch.cat([o[1] for o in outs], 1)


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_invariant_and_batched_equals_reference_per_layer_type(kind):
    model = image_model(kind)
    x, masks = _images(), _masks(5, (1, 8, 8))
    logits = model(x)
    beta_ref, gamma_ref = _reference_one_at_a_time(model, x, masks)
    assert _rel(beta_ref + gamma_ref, logits[:, None].expand_as(beta_ref)) < 1e-12
    beta, gamma = contextual_decomposition(model, x, masks)
    assert beta.shape == (2, 5, 4)
    assert _rel(beta, beta_ref) < 1e-10
    assert _rel(gamma, gamma_ref) < 1e-10


@pytest.mark.parametrize("kind", ["mlp", "conv1d"])
def test_vector_models(kind):
    model = vector_model(kind)
    x = torch.randn(3, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    masks = _masks(4, (12,))
    beta_ref, gamma_ref = _reference_one_at_a_time(model, x, masks)
    assert _rel(beta_ref + gamma_ref, model(x)[:, None].expand_as(beta_ref)) < 1e-12
    assert _rel(contextual_decomposition(model, x, masks)[0], beta_ref) < 1e-10


@pytest.mark.parametrize("seed", range(8))
def test_random_compositions(seed):
    model = random_composition(seed)
    x, masks = _images(3, seed), _masks(6, (1, 8, 8), seed)
    beta_p, gamma_p = contextual_decomposition(model, x, masks, mode="pair")
    assert _rel(beta_p + gamma_p, model(x)[:, None].expand_as(beta_p)) < 1e-12
    beta, _ = contextual_decomposition(model, x, masks)
    assert _rel(beta, beta_p) < 1e-10


def test_float32_invariant_and_backends(backend_device, monkeypatch):
    backend, device = backend_device
    # float32 means float32 here: cuDNN convolutions default to TF32 (10-bit mantissa) on the GPU
    # (matmuls already default to full float32)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = image_model("basic_block").float().to(device)
    x, masks = _images().float().to(device), _masks(7, (1, 8, 8)).float().to(device)
    beta, gamma = contextual_decomposition(model, x, masks, backend=backend)
    beta_p, gamma_p = contextual_decomposition(model, x, masks, mode="pair")
    assert _rel(beta_p + gamma_p, model(x)[:, None].expand_as(beta_p)) < 1e-5
    assert _rel(beta, beta_p) < 1e-5


def test_functional_ops():
    torch.manual_seed(0)
    model = FunctionalNet().double().eval()
    x, masks = _images(), _masks(4, (1, 8, 8))
    beta_ref, gamma_ref = _reference_one_at_a_time(model, x, masks)
    assert _rel(beta_ref + gamma_ref, model(x)[:, None].expand_as(beta_ref)) < 1e-12
    assert _rel(contextual_decomposition(model, x, masks)[0], beta_ref) < 1e-10


def test_lstm_text_model_drops_the_output_bias():
    model = text_lstm()
    ids = torch.randint(0, 30, (2, 7), generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(3, 7, dtype=torch.float64)
    masks[0, 1:3] = 1
    masks[1, 4] = 1
    masks[2, :] = 1
    beta_ref, gamma_ref = _reference_one_at_a_time(model, ids, masks)
    logits_no_bias = model(ids) - model.fc.bias
    assert _rel(beta_ref + gamma_ref, logits_no_bias[:, None].expand_as(beta_ref)) < 1e-12
    beta, gamma = contextual_decomposition(model, ids, masks)
    assert _rel(beta, beta_ref) < 1e-10
    # The whole sentence as the phrase: γ only collects the (zero) initial state, so β is everything.
    assert _rel(beta[:, 2], logits_no_bias) < 1e-12
    split_beta, split_gamma = contextual_decomposition(model, ids, masks, output_bias="split")
    assert _rel(split_beta + split_gamma, model(ids)[:, None].expand_as(split_beta)) < 1e-12


def test_linear_model_by_hand():
    """f(x) = Wx + b: β = W(M⊙x) + b·(|W(M⊙x)|+ε)/(|W(M⊙x)| + |W((1−M)⊙x)|+2ε)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 2)).double().eval()
    x = torch.randn(1, 6, dtype=torch.float64)
    mask = torch.tensor([[1.0, 1, 0, 0, 1, 0]], dtype=torch.float64)
    w, b = model[0].weight, model[0].bias
    u, v = (x * mask) @ w.T, (x * (1 - mask)) @ w.T
    expected = u + b * u.abs() / (u.abs() + v.abs())
    beta, gamma = contextual_decomposition(model, x, mask)
    torch.testing.assert_close(beta[:, 0], expected)
    torch.testing.assert_close(gamma[:, 0], model(x) - expected)


def test_mask_layouts_fractional_masks_target_and_chunks():
    model = image_model("maxpool")
    x = _images(3)
    masks = _masks(6, (1, 8, 8))
    beta, gamma = contextual_decomposition(model, x, masks)
    per_example = masks[None].expand(3, -1, 3, -1, -1)
    torch.testing.assert_close(contextual_decomposition(model, x, per_example)[0], beta)
    torch.testing.assert_close(contextual_decomposition(model, x, masks[:, 0])[0], beta)   # [K, H, W]
    torch.testing.assert_close(contextual_decomposition(model, x, masks, max_batch=4)[0], beta)
    target = torch.tensor([0, 3, 1])
    bt, gt = contextual_decomposition(model, x, masks, target=target)
    torch.testing.assert_close(bt, beta[torch.arange(3), :, target])
    half = contextual_decomposition(model, x, torch.full((1, 1, 8, 8), 0.5, dtype=torch.float64), mode="pair")
    assert _rel(half[0] + half[1], model(x)[:, None].expand_as(half[0])) < 1e-12


def test_relevant_part_given_directly():
    model = image_model("relu")
    x, masks = _images(), _masks(3, (1, 8, 8))
    by_mask = contextual_decomposition(model, x, masks)[0]
    relevant = x[:, None] * masks[None]
    torch.testing.assert_close(contextual_decomposition(model, x, relevant=relevant)[0], by_mask)


def test_gradients_flow_to_parameters():
    from fastattr.cd import decompose

    model = image_model("batchnorm")
    x, masks = _images(), _masks(2, (1, 8, 8))
    beta, _ = decompose(model, x, masks[None].expand(2, -1, 3, -1, -1))
    beta.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_bad_input_and_unsupported_modules():
    model = image_model("relu")
    x = _images()
    with pytest.raises(ValueError, match="masks"):
        contextual_decomposition(model, x, torch.ones(2, 1, 5, 5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        contextual_decomposition(model, x, torch.full((1, 1, 8, 8), 2.0))
    with pytest.raises(ValueError, match="NaN"):
        contextual_decomposition(model, x, torch.full((1, 1, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="K = 0"):
        contextual_decomposition(model, x, torch.ones(0, 1, 8, 8))
    with pytest.raises(ValueError, match="mode"):
        contextual_decomposition(model, x, torch.ones(1, 1, 8, 8), mode="fast")
    gelu = nn.Sequential(nn.Conv2d(3, 2, 3), nn.GELU(), nn.Flatten(), nn.Linear(72, 2)).double().eval()
    with pytest.raises(TypeError, match="GELU.*register_rule"):
        contextual_decomposition(gelu, x, torch.ones(1, 1, 8, 8))

    class AddsConstant(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, v):
            return self.lin(v) + 1.0

    with pytest.raises(TypeError, match="constant"):
        contextual_decomposition(AddsConstant().double().eval(), torch.randn(2, 4, dtype=torch.float64), torch.ones(1, 4))


def test_register_rule_and_training_mode_restored():
    gelu = nn.Sequential(nn.Conv2d(3, 2, 3), nn.GELU(), nn.Flatten(), nn.Linear(72, 2)).double()
    x, masks = _images(), _masks(3, (1, 8, 8))
    saved = dict(cd_rules._RULES)
    try:
        register_rule(nn.GELU, lambda m, b, g: (m(b), m(b + g) - m(b)))
        with pytest.warns(UserWarning, match="training mode"):
            beta, gamma = contextual_decomposition(gelu.train(), x, masks, mode="pair")
        assert gelu.training
        assert _rel(beta + gamma, gelu.eval()(x)[:, None].expand_as(beta)) < 1e-12
        torch.testing.assert_close(contextual_decomposition(gelu, x, masks)[0], beta)
        with pytest.raises(TypeError, match="module_type"):
            register_rule("GELU", lambda m, b, g: (b, g))
    finally:
        cd_rules._RULES.clear()
        cd_rules._RULES.update(saved)


def test_inputs_not_modified():
    model = image_model("basic_block")
    x, masks = _images(), _masks(3, (1, 8, 8))
    x0, m0 = x.clone(), masks.clone()
    contextual_decomposition(model, x, masks)
    assert torch.equal(x, x0) and torch.equal(masks, m0)
