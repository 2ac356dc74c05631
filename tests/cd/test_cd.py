"""contextual_decomposition: the β + γ invariant on every layer type and on random compositions,
β-only batched == pair reference one mask at a time, hand-computed cases, and bad input."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastattr
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
    with fastattr.use_backend(backend):
        beta, gamma = contextual_decomposition(model, x, masks)
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


class AuxHead(nn.Module):
    """Returns ``(logits, aux)`` in training mode (like GoogLeNet / Inception), the logits in eval mode."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.aux = nn.Linear(6, 5), nn.Linear(5, 3), nn.Linear(5, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, v):
        h = torch.relu(self.a(v))
        if self.training:
            return self.b(self.drop(h)), self.aux(h)
        return self.b(h)


def test_training_mode_model_is_traced_in_eval_mode():
    torch.manual_seed(0)
    model = AuxHead().double()
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    masks = _masks(3, (6,))
    expected = contextual_decomposition(model.eval(), x, masks)
    model.train()
    with pytest.warns(UserWarning, match="training mode"):
        beta, gamma = contextual_decomposition(model, x, masks)
    assert model.training and all(m.training for m in model.modules())
    torch.testing.assert_close(beta, expected[0])
    torch.testing.assert_close(gamma, expected[1])


def test_a_single_mask_without_k_axis_is_refused_and_layouts_still_work():
    model = image_model("relu")
    x = _images()
    masks = _masks(4, (1, 8, 8))
    beta = contextual_decomposition(model, x, masks)[0]
    # [K, C, H, W], [K, H, W], [1, K, 1, H, W], [B, K, 1, H, W]
    layouts = (masks.expand(-1, 3, -1, -1), masks[:, 0], masks[None], masks[None].expand(2, -1, -1, -1, -1))
    for layout in layouts:
        torch.testing.assert_close(contextual_decomposition(model, x, layout)[0], beta)
    with pytest.raises(ValueError, match=r"masks.*masks\[None\]"):
        contextual_decomposition(model, x, masks[0, 0])                      # one [H, W] mask
    torch.testing.assert_close(contextual_decomposition(model, x, masks[0, 0][None])[0], beta[:, :1])
    mlp = vector_model("mlp")
    v = torch.randn(3, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with pytest.raises(ValueError, match="masks"):
        contextual_decomposition(mlp, v, _masks(1, (12,))[0])               # one [F] mask
    tokens = torch.randint(0, 30, (2, 7), generator=torch.Generator().manual_seed(0))
    assert contextual_decomposition(text_lstm(), tokens, _masks(3, (7,)))[0].shape == (2, 3, 3)


@pytest.mark.parametrize("final", [nn.Softmax(dim=1), nn.LogSoftmax(dim=1)])
def test_final_softmax_module_is_skipped(final):
    logits_model = image_model("maxpool")
    model = nn.Sequential(logits_model, final).eval()
    x, masks = _images(), _masks(3, (1, 8, 8))
    for mode in ("beta", "pair"):
        beta, gamma = contextual_decomposition(model, x, masks, mode=mode)
        expected = contextual_decomposition(logits_model, x, masks, mode=mode)
        torch.testing.assert_close(beta, expected[0])
        assert _rel(beta + gamma, logits_model(x)[:, None].expand_as(beta)) < 1e-12
    inner = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4), final, nn.Linear(4, 2)).double().eval()
    with pytest.raises(TypeError, match="Softmax"):                          # not final: no rule
        contextual_decomposition(inner, x, masks)


class AdaptiveMaxNet(nn.Module):
    """Conv → adaptive max pool (module or functional, 1-D / 2-D / 3-D) → flatten (→ Linear if ``head``)."""

    SIZES = {1: (3,), 2: (3, 2), 3: (2, 2, 3)}

    def __init__(self, dims: int, functional: bool, head: bool = True):
        super().__init__()
        self.conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims](2, 3, 3, padding=1)
        self.size = self.SIZES[dims]
        pools = {1: nn.AdaptiveMaxPool1d, 2: nn.AdaptiveMaxPool2d, 3: nn.AdaptiveMaxPool3d}
        self.pool = pools[dims](self.size)
        self.fn = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}[dims]
        self.functional = functional
        self.fc = nn.Linear(3 * math.prod(self.size), 4) if head else nn.Identity()

    def forward(self, x):
        h = self.conv(x)
        h = self.fn(h, self.size) if self.functional else self.pool(h)
        return self.fc(torch.flatten(h, 1))


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("functional", [False, True])
def test_adaptive_max_pool(dims, functional):
    torch.manual_seed(dims)
    model = AdaptiveMaxNet(dims, functional).double().eval()
    g = torch.Generator().manual_seed(dims)
    spatial = (7, 5, 4)[:dims]
    x = torch.randn((2, 2) + spatial, generator=g, dtype=torch.float64)
    masks = (torch.rand((4, 1) + spatial, generator=g) > 0.5).double()
    beta_ref, gamma_ref = _reference_one_at_a_time(model, x, masks)
    assert _rel(beta_ref + gamma_ref, model(x)[:, None].expand_as(beta_ref)) < 1e-12
    assert _rel(contextual_decomposition(model, x, masks)[0], beta_ref) < 1e-10
    # the rule by hand: after the pool, β is the conv's β at the argmax positions of the conv output
    pooled = AdaptiveMaxNet(dims, functional, head=False).double().eval()
    pooled.conv = model.conv
    conv_beta = contextual_decomposition(nn.Sequential(model.conv, nn.Flatten()).eval(), x, masks)[0]
    _, idx = model.fn(model.conv(x), model.size, return_indices=True)
    idx = idx.flatten(2)[:, None].expand(-1, 4, -1, -1)
    expected = conv_beta.reshape(2, 4, 3, -1).gather(3, idx).flatten(2)
    for mode in ("beta", "pair"):
        torch.testing.assert_close(contextual_decomposition(pooled, x, masks, mode=mode)[0], expected)


def test_one_dimensional_output_with_a_target():
    class Regressor(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(5, 4), nn.Linear(4, 1)

        def forward(self, v):
            return self.b(torch.relu(self.a(v))).squeeze(1)

    torch.manual_seed(0)
    model = Regressor().double().eval()
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    masks = _masks(2, (5,))
    beta, gamma = contextual_decomposition(model, x, masks)
    assert beta.shape == (3, 2)
    torch.testing.assert_close(beta + gamma, model(x)[:, None].expand(-1, 2))
    for target in (0, -1, torch.zeros(3, dtype=torch.long)):
        bt, gt = contextual_decomposition(model, x, masks, target=target)
        torch.testing.assert_close(bt, beta)
        torch.testing.assert_close(gt, gamma)
    with pytest.raises(ValueError, match="target"):
        contextual_decomposition(model, x, masks, target=1)


def test_pair_mode_in_float16_splits_0_over_0_without_nan():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).half().eval()
    with torch.no_grad():
        model[0].weight[0] = torch.tensor([1.0, 1.0, 0.0, 0.0]).half()  # unit 0 sees only the zero features
    x = torch.tensor([[0.0, 0.0, 1.5, -0.5], [0.0, 0.0, -0.7, 0.9]]).half()
    masks = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]]).half()
    beta_p, gamma_p = contextual_decomposition(model, x, masks, mode="pair")
    beta, _ = contextual_decomposition(model, x, masks)
    assert torch.isfinite(beta_p).all() and torch.isfinite(gamma_p).all()
    torch.testing.assert_close(beta_p, beta, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(beta_p + gamma_p, model(x)[:, None].expand_as(beta_p), atol=4e-3, rtol=4e-3)


def test_registered_relu_rule_is_used_after_linear_layers():
    """A user rule for nn.ReLU replaces the built-in one even right after a Linear (no fusion)."""
    torch.manual_seed(0)
    fused = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)).double().eval()
    unfused = nn.Sequential(fused[0], nn.Identity(), nn.ReLU(), fused[2]).eval()
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    masks = _masks(2, (5,))
    builtin = contextual_decomposition(fused, x, masks, mode="pair")[0]
    calls = []

    def symmetric(m, b, g):
        calls.append(1)
        full = torch.relu(b + g)
        beta = 0.5 * (torch.relu(b) + full - torch.relu(g))
        return beta, full - beta

    saved = dict(cd_rules._RULES)
    try:
        register_rule(nn.ReLU, symmetric)
        for mode in ("pair", "beta"):
            beta_f = contextual_decomposition(fused, x, masks, mode=mode)[0]
            beta_u = contextual_decomposition(unfused, x, masks, mode=mode)[0]
            torch.testing.assert_close(beta_f, beta_u)
        assert len(calls) == 4
        assert (beta_f - builtin).abs().max() > 1e-3
    finally:
        cd_rules._RULES.clear()
        cd_rules._RULES.update(saved)


def test_unknown_backend_is_refused_on_a_bias_free_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False)).double().eval()
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ValueError, match="backend"), pytest.warns(DeprecationWarning, match="use_backend"):
        contextual_decomposition(model, x, _masks(2, (6,)), backend="bogus")


def test_deprecated_backend_keyword_runs_under_use_backend(monkeypatch):
    """``backend=`` (before CD took its backend from use_backend) still works, with a warning, and
    reaches the op exactly as ``use_backend`` does."""
    seen = []
    real = cd_rules.cd_bias_split
    monkeypatch.setattr(cd_rules, "cd_bias_split",
                        lambda *a, **k: seen.append(fastattr.get_backend()) or real(*a, **k))
    model, x, masks = image_model("relu"), _images(), _masks(3, (1, 8, 8))
    with pytest.warns(DeprecationWarning, match="use_backend"):
        old, _ = contextual_decomposition(model, x, masks, backend="reference")
    assert seen and set(seen) == {"reference"}
    seen.clear()
    with fastattr.use_backend("reference"):
        new, _ = contextual_decomposition(model, x, masks)
    assert seen and set(seen) == {"reference"}
    torch.testing.assert_close(old, new)


class BasicBlock(nn.Module):
    """A user's own copy of torchvision's BasicBlock (not the zoo's class): recognised by structure."""

    def __init__(self, planes, extra=False):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(planes, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes)
        self.downsample = None
        if extra:
            self.gate = nn.Sigmoid()

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if hasattr(self, "gate"):
            out = out * self.gate(out)
        return self.relu(out + x)


def test_resnet_blocks_are_recognised_by_structure_not_by_class():
    torch.manual_seed(0)
    block = BasicBlock(3).double()
    for bn in (block.bn1, block.bn2):  # non-trivial running statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    assert cd_rules.rule_for(block) is not None
    model = nn.Sequential(block, nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).double().eval()
    x, masks = _images(), _masks(5, (1, 8, 8))
    beta, gamma = contextual_decomposition(model, x, masks)
    beta_p, gamma_p = contextual_decomposition(model, x, masks, mode="pair")
    assert _rel(beta_p + gamma_p, model(x)[:, None].expand_as(beta_p)) < 1e-10
    assert _rel(beta, beta_p) < 1e-10
    assert cd_rules.rule_for(BasicBlock(3, extra=True)) is None  # same names, another forward: traced instead


def test_lstm_phrase_is_the_masked_tokens_even_with_a_zero_embedding():
    """The bias·bias term of ``i·g`` goes to β at the masked steps (SPEC §4.1, acd's start..stop), also
    for a padding token whose embedding is 0: the score is continuous in the embedding."""
    model = text_lstm()
    ids = torch.tensor([[3, 0, 5, 7, 0, 2], [0, 4, 4, 9, 1, 0]])
    masks = torch.tensor([[0, 1, 0, 0, 0, 0], [0, 1, 1, 0, 1, 0], [1, 0, 0, 0, 0, 1]], dtype=torch.float64)
    nearly = text_lstm()
    with torch.no_grad():
        model.embed.weight[0] = 0.0
        nearly.embed.weight[0] = 1e-9 * torch.randn(8, generator=torch.Generator().manual_seed(5),
                                                    dtype=torch.float64)
    for mode in ("beta", "pair"):
        beta, gamma = contextual_decomposition(model, ids, masks, mode=mode)
        near, _ = contextual_decomposition(nearly, ids, masks, mode=mode)
        assert beta[0, 0].abs().max() > 1e-4                       # only the padding token: not 0
        torch.testing.assert_close(beta, near, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(beta + gamma, (model(ids) - model.fc.bias)[:, None].expand_as(beta))


@pytest.mark.parametrize("mode", ["beta", "pair"])
def test_max_batch_bounds_every_pass_reference_rows_included(mode):
    """A pass holds at most ``max_batch`` rows (β-only: the examples' reference rows plus their masks;
    pair: β and γ rows), splitting the examples when one mask for all of them does not fit; the result
    does not depend on it."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 5)).double()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    masks = (torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(6)) > 0.5).double()
    rows = []
    model[2].register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
    whole, _ = contextual_decomposition(model, x, masks, mode=mode)
    for limit in (2, 3, 5, 8, 12):
        rows.clear()
        beta, _ = contextual_decomposition(model, x, masks, mode=mode, max_batch=limit)
        assert rows and max(rows) <= limit, (limit, rows)
        torch.testing.assert_close(beta, whole, rtol=1e-12, atol=1e-12)
