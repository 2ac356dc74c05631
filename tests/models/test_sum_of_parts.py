"""Sum-of-Parts models (SPEC §6; SOP paper §3, App. B–C): shapes for images and token sequences, the
sum-of-parts identity, chunk-size independence, training (gradients, seeding, the contract), the
zoo's trained wrapper of the digits CNN, the grouped metrics on ``explain()``'s output, bad input."""
import copy

import pytest
import torch
from torch import nn

import fastattr
from fastattr.models import SOPExplanation, SumOfParts, first_equal_group, train_sop
from fastattr.ops import group_gen
from fastattr.reference import group_gen as reference_group_gen

pytest.importorskip("sklearn")

from fastattr.zoo import (SOP_CONFIG, SOP_WEIGHTS_PATH, digits_rgb, load_digits, load_digits_cnn,  # noqa: E402
                          load_digits_sop)

GROUP_GEN = ("patch_proj.weight", "position", "gen_query.weight", "gen_key.weight")
GROUP_SELECT = ("sel_query.weight", "sel_key.weight", "head.weight")


class MeanTokens(nn.Module):
    """``[B, T, D] → [B, D]``: the mean over the tokens."""

    def forward(self, x):
        return x.mean(1)


def cnn_backbone(dropout: bool = False, seed: int = 0) -> nn.Module:
    """``[B, 3, 8, 8] → [B, 12]`` features."""
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(96, 12), nn.Tanh()]
    if dropout:
        layers.insert(4, nn.Dropout(0.2))
    return nn.Sequential(*layers).double().eval()


def image_sop(**kw) -> SumOfParts:
    kw = {"patch_size": 2, "n_groups": 5, "k": 0.25, "generator": 0, **kw}
    backbone = kw.pop("backbone", None) or cnn_backbone()
    return SumOfParts(backbone, 10, input_shape=(3, 8, 8), **kw)


def digits(n: int = 6, split: str = "test"):
    """Real digits as ``[n, 3, 8, 8]`` float64 images and labels."""
    x, y = load_digits(split, n)
    return digits_rgb(x, 8).double(), y


def token_sop() -> tuple[SumOfParts, torch.Tensor]:
    """Token ids ``[B, 64]`` (the digits' 17 grey levels, row by row) through an embedding and an MLP."""
    torch.manual_seed(1)
    embedding = nn.Embedding(17, 6).double()
    backbone = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Flatten(), nn.Linear(64 * 4, 10)).double()
    sop = SumOfParts(backbone, 10, input_shape=(64,), embedding=embedding, patch_size=8, n_groups=4, k=0.25,
                     generator=0)
    x, _ = load_digits("test", 5)
    return sop.eval(), (x * 16).round().long().reshape(5, 64)


def sequence_sop() -> tuple[SumOfParts, torch.Tensor]:
    """Embedded tokens ``[B, T, D]`` (the digits' 8 rows of 8 pixels) through a transformer layer."""
    torch.manual_seed(2)
    backbone = nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), MeanTokens())
    sop = SumOfParts(backbone.double(), 10, input_shape=(8, 8), patch_size=2, n_groups=3, k=0.5, generator=0)
    x, _ = load_digits("test", 5)
    return sop.eval(), x.double().reshape(5, 8, 8)


def test_image_explanation_shapes_and_masks():
    sop, (x, _) = image_sop().eval(), digits()
    e = sop.explain(x)
    assert isinstance(e, SOPExplanation)
    assert e.masks.shape == (6, 5, 8, 8) and e.masks.dtype == torch.bool
    assert (e.masks.sum((2, 3)) == 4 * 4).all()  # k·16 = 4 patches of 2×2 pixels each
    assert e.scores.shape == e.partial_logits.shape == (6, 5) and e.logits.shape == (6, 10)
    assert torch.equal(e.target, e.logits.argmax(1))
    assert (e.scores >= 0).all() and torch.allclose(e.scores.sum(1), torch.ones(6, dtype=e.scores.dtype))
    every = sop.explain(x, "all")
    assert every.scores.shape == every.partial_logits.shape == (6, 5, 10) and every.target is None
    assert torch.equal(every.masks, e.masks)
    assert torch.equal(every.scores[torch.arange(6), :, e.target], e.scores)
    with torch.no_grad():
        torch.testing.assert_close(sop(x), e.logits, rtol=1e-12, atol=1e-12)
    assert len({tuple(m.flatten().tolist()) for m in e.masks[0]}) > 1  # not one group repeated


def test_token_id_explanation_shapes():
    sop, ids = token_sop()
    e = sop.explain(ids, 3)
    assert e.masks.shape == (5, 4, 64) and e.masks.dtype == torch.bool
    assert (e.masks.sum(2) == 2 * 8).all()  # 2 of 8 patches of 8 tokens
    assert e.scores.shape == (5, 4) and e.target.tolist() == [3] * 5
    assert sop.explain(ids, "all").scores.shape == (5, 4, 10)


def test_embedded_sequence_explanation_shapes():
    sop, x = sequence_sop()
    e = sop.explain(x)
    assert e.masks.shape == (5, 3, 8, 8) and e.masks.dtype == torch.bool  # [B, G, T, D]
    assert torch.equal(e.masks, e.masks[..., :1].expand_as(e.masks))  # a token is in or out as a whole
    assert (e.masks[..., 0].sum(2) == 2 * 2).all()  # 2 of 4 patches of 2 tokens
    assert e.scores.shape == (5, 3) and e.logits.shape == (5, 10)


def test_flat_features_through_an_mlp_and_several_heads():
    x, _ = load_digits("test", 5)
    mlp = nn.Sequential(nn.Linear(64, 16), nn.Tanh()).double().eval()
    sop = SumOfParts(mlp, 10, input_shape=(64,), patch_size=8, n_groups=12, k=0.25, n_heads=2, generator=0)
    e = sop.explain(x.double().reshape(5, 64))
    assert e.masks.shape == (5, 12, 64) and (e.masks.sum(2) == 2 * 8).all()  # 12 of 2 × 8 candidate groups
    torch.testing.assert_close(e.logits.gather(1, e.target[:, None]).squeeze(1),
                               (e.scores * e.partial_logits).sum(1), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="n_groups"):
        SumOfParts(mlp, 10, input_shape=(64,), patch_size=8, n_groups=17, n_heads=2)


def test_group_gen_and_group_select_are_the_papers_attention_and_scores():
    """GroupGen's logits are ``(W_q e)(W_k e)ᵀ/√d`` per head and its groups the stable sorts of the peaks,
    maxima and logits (:func:`fastattr.reference.group_masks`); GroupSelect's scores are
    ``sparsemax((W_q' C)(W_k' z)ᵀ/√h)`` over the groups, written out with the layers themselves."""
    from fastattr.reference import group_masks as reference_masks

    x, _ = load_digits("test", 6)
    mlp = nn.Sequential(nn.Linear(64, 16), nn.Tanh()).double().eval()
    sop = SumOfParts(mlp, 10, input_shape=(64,), patch_size=8, n_groups=12, k=0.25, n_heads=2, generator=0)
    x = x.double().reshape(6, 64)
    with torch.no_grad():
        e = sop.patch_proj(sop._patches(x)) + sop.position
        q = sop.gen_query(e).view(6, 8, 2, sop.attn_dim).transpose(1, 2)
        k = sop.gen_key(e).view(6, 8, 2, sop.attn_dim).transpose(1, 2)
        logits = (q @ k.transpose(-1, -2) / sop.attn_dim ** 0.5).reshape(6, 16, 8)
        mask, hard, first = sop._groups(sop._patches(x))
        expected = reference_masks(logits, 12, sop.kept)
        assert torch.equal(hard, expected[0]) and torch.equal(first, expected[2])
        assert mask is hard  # without gradients the bool masks themselves
        rows, slot = sop._features(x, mask, None, None)
        z = rows[slot]                                                      # [B, G, h]
        scores = torch.einsum("ch,bgh->bcg", sop.sel_query(sop.head.weight), sop.sel_key(z)) / sop.hidden ** 0.5
        out = sop._run(x)
    c = fastattr.sparsemax(scores, dim=-1)
    torch.testing.assert_close(out["c"], c, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out["y"], sop.head(z), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out["logits"], torch.einsum("bcg,bgc->bc", c, sop.head(z)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", ["image", "ids", "sequence", "features"])
def test_distinct_copies_are_the_masked_copies_of_their_groups(make):
    """The copies (``x`` seen patch by patch times a group's patch mask) are the masked copies ``S_i ⊙ x``
    written out, bit for bit, for images, token ids, embedded tokens and flat features; running the distinct
    copies only gives what running every copy gives (the groups exactly, the numbers to rounding: on an AMD
    EPYC the float64 ``Linear(96, 12)`` rounds a row differently at 20 rows than at 7)."""
    if make == "image":
        sop, (x, _) = image_sop().eval(), digits(6)
    elif make == "ids":
        sop, x = token_sop()
    elif make == "sequence":
        sop, x = sequence_sop()
    else:
        x, _ = load_digits("test", 6)
        sop = SumOfParts(nn.Sequential(nn.Linear(64, 16), nn.Tanh()).double().eval(), 10, input_shape=(64,),
                         patch_size=8, n_groups=12, k=0.25, n_heads=2, generator=0)
        x = x.double().reshape(6, 64)
    embedded = sop.embedding(x).detach() if make == "ids" else x
    b, g = embedded.shape[0], sop.n_groups
    gen = torch.Generator().manual_seed(0)
    m = (torch.rand(b, g, sop.n_patches, generator=gen) < 0.4).double()
    rows = torch.randperm(b * g, generator=gen)[: b * g // 2].sort().values
    units = sop._unit_masks(m).reshape((b * g,) + tuple(sop._unit_masks(m).shape[2:]))[rows]  # pixels / tokens
    shared = {"image": units.unsqueeze(1), "ids": units.unsqueeze(-1), "sequence": units.unsqueeze(-1)}
    expected = embedded[rows // g] * shared.get(make, units)  # S_i ⊙ x, channels / token entries shared
    assert torch.equal(sop._patch_copies(embedded, m.reshape(b * g, -1), rows, g), expected)
    once = sop.explain(x, "all")
    sop.unique_copies = False
    every = sop.explain(x, "all")
    assert torch.equal(once.masks, every.masks)
    for a, c in zip(once[1:4], every[1:4]):  # a BLAS may round a row differently at another row count
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)


def test_a_model_built_on_the_meta_device_and_loaded_gives_the_same_outputs():
    """``to_empty`` + ``load_state_dict`` (how large models are materialised) restore everything the forward
    reads: no state of SOP's own lives outside its state dict (the unit-to-patch map is made per device)."""
    source, (x, _) = image_sop().eval(), digits(6)
    with torch.device("meta"):
        meta = image_sop(backbone=cnn_backbone()).eval()
    meta.to_empty(device="cpu")
    meta.load_state_dict(source.state_dict())
    with torch.no_grad():
        assert torch.equal(meta(x), source(x))


@pytest.mark.parametrize("make", ["image", "ids", "sequence"])
def test_logits_are_the_sum_of_the_parts(make):
    """``y = Σ_i c_i y_i`` with ``y_i = C h(S_i ⊙ x)`` recomputed group by group, by hand."""
    if make == "image":
        sop, (x, _) = image_sop().eval(), digits()
        embedded = x
    elif make == "ids":
        sop, x = token_sop()
        embedded = sop.embedding(x).detach()
    else:
        sop, x = sequence_sop()
        embedded = x
    e = sop.explain(x, "all")
    torch.testing.assert_close(e.logits, (e.scores * e.partial_logits).sum(1), rtol=1e-12, atol=1e-12)
    masks = e.masks if make != "ids" else e.masks.unsqueeze(-1)
    with torch.no_grad():
        for g in range(e.masks.shape[1]):
            keep = masks[:, g].unsqueeze(1) if make == "image" else masks[:, g]
            by_hand = sop.head(sop.backbone(embedded * keep))
            torch.testing.assert_close(e.partial_logits[:, g], by_hand, rtol=1e-10, atol=1e-10)


def test_results_do_not_depend_on_the_chunk_size():
    sop, (x, _) = image_sop().eval(), digits(7)
    ref = sop.explain(x, "all", max_batch=35)
    for kw in ({"max_batch": 1}, {"max_batch": 4}, {"max_batch": 7}, {"memory_budget": 3 * 8 * 64 * 8 * 5}, {}):
        got = sop.explain(x, "all", **kw)
        assert torch.equal(got.masks, ref.masks)
        for a, b in zip(got[1:4], ref[1:4]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(image_sop(max_batch=3).eval()(x), ref.logits, rtol=1e-12, atol=1e-12)


def _call_sizes(sop: SumOfParts, x: torch.Tensor) -> list[int]:
    """The number of masked copies in each backbone call of one forward."""
    sizes = []
    handle = sop.backbone.register_forward_pre_hook(lambda _, args: sizes.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            sop(x)
    finally:
        handle.remove()
    return sizes


def test_default_chunks_follow_the_backbones_measured_activations():
    """The default chunk comes from the backbone's activations measured at construction (the engine's
    measure, not a fixed multiple of the input), at least MIN_DEFAULT_CHUNK copies per call."""
    from fastattr.core import ChunkGrid, chunk_size, measured_input_factor
    from fastattr.models.sop import MIN_DEFAULT_CHUNK

    torch.manual_seed(3)
    cnn = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(512, 12)).double().eval()
    sop, (x, _) = image_sop(backbone=cnn, n_groups=8, unique_copies=False).eval(), digits(200, "train")
    factor = measured_input_factor(sop.backbone, x[:2])
    assert sop._input_factor == factor and factor > 24.0  # a CNN's activations are many times its input
    expected = max(MIN_DEFAULT_CHUNK, chunk_size(x, 1600, None, None, per_input_factor=factor))
    sizes = _call_sizes(sop, x)
    assert sum(sizes) == 1600 and max(sizes) == ChunkGrid(200, 8, min(1600, expected)).rows
    assert expected < 1024  # the fixed forward factor (8) would have run 1024 copies per call

    wide = nn.Sequential(nn.Conv2d(3, 1024, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).double()
    big = image_sop(backbone=wide.eval(), n_groups=8, unique_copies=False).eval()
    assert chunk_size(x, 1600, None, None, per_input_factor=big._input_factor) < MIN_DEFAULT_CHUNK // 2
    assert _call_sizes(big, x[:8]) == [MIN_DEFAULT_CHUNK] * 2  # 4 inputs × 8 groups per call
    assert max(_call_sizes(big, x[:2])) == 16  # never more than the B·G copies there are


class NumpyFeatures(nn.Module):
    """``[B, 3, 8, 8] → [B, 12]`` through numpy: runs without autograd only."""

    def forward(self, x):
        return torch.from_numpy(x.reshape(x.shape[0], 3, 64).numpy().mean(-1).repeat(4, 1))


def test_a_backbone_that_runs_only_without_autograd_keeps_the_default_factor():
    sop = image_sop(backbone=NumpyFeatures()).eval()
    assert sop._input_factor == 24.0 and sop.hidden == 12
    x, _ = digits(3)
    with torch.no_grad():  # no parameters: the SOP layers are float32
        assert sop(x.float()).shape == (3, 10)


def test_groups_holding_the_same_patches_run_once_without_gradients():
    """Without gradients and with the backbone in eval mode, an input's groups with the same patch set share
    one backbone pass (unique_copies); the outputs equal those of running every copy, and with gradients,
    a backbone in training mode or unique_copies=False every one of the B·G copies runs."""
    x, _ = digits(5)
    every = image_sop(k=1.0, unique_copies=False).eval()  # every group holds all 16 patches: one copy per input
    once = image_sop(k=1.0).eval()
    assert sum(_call_sizes(once, x)) == 5 and sum(_call_sizes(every, x)) == 5 * 5
    with torch.no_grad():
        torch.testing.assert_close(once(x), every(x), rtol=1e-12, atol=1e-12)
    sizes = []
    handle = once.backbone.register_forward_pre_hook(lambda _, args: sizes.append(args[0].shape[0]))
    try:
        once(x).sum().backward()  # gradients on: every copy, so each group's straight-through gradient flows
        assert sum(sizes) == 25
    finally:
        handle.remove()
        once.zero_grad(set_to_none=True)
    once.backbone.train()
    try:
        assert sum(_call_sizes(once, x)) == 25
    finally:
        once.backbone.eval()

    zoo, (x, _) = load_digits_sop(), load_digits("test", 64)
    e = zoo.explain(x, "all")
    flat = e.masks.reshape(64, zoo.n_groups, -1)
    distinct = sum(len({tuple(r.tolist()) for r in flat[b]}) for b in range(64))
    assert distinct < 64 * zoo.n_groups and sum(_call_sizes(zoo, x)) == distinct
    first = first_equal_group(e.masks)
    assert first.tolist() == [[next(j for j in range(zoo.n_groups) if torch.equal(flat[b, j], flat[b, i]))
                               for i in range(zoo.n_groups)] for b in range(64)]
    toy = torch.tensor([[[1, 0], [0, 1], [1, 0], [1, 1]], [[1, 1], [1, 1], [0, 0], [0, 0]]], dtype=torch.bool)
    assert first_equal_group(toy).tolist() == [[0, 1, 0, 3], [0, 0, 2, 2]]
    zoo.unique_copies = False
    every = zoo.explain(x, "all")
    assert torch.equal(e.masks, every.masks)
    for a, b in zip(e[1:4], every[1:4]):  # float32: the backbone on the distinct copies, then on all 512
        torch.testing.assert_close(a, b)


def test_gradients_reach_group_gen_and_group_select():
    sop, (x, y) = image_sop(), digits(8, "train")
    sop.train()
    nn.functional.cross_entropy(sop(x), y).backward()
    params = dict(sop.named_parameters())
    for name in GROUP_GEN + GROUP_SELECT + tuple(f"backbone.{n}" for n, _ in sop.backbone.named_parameters()):
        grad = params[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_torch_func_and_forward_mode_give_the_autograd_derivative():
    """``torch.func.grad`` and ``jvp`` (with and without ``torch.no_grad``) and forward AD of a logit: GroupGen's
    straight-through term and the masked copies carry the tangent, as the reverse-mode gradient through
    ``torch.autograd`` (no gradient is recorded in forward mode, so ``requires_grad`` alone misses it)."""
    import torch.autograd.forward_ad as fwAD

    sop, (x, _) = image_sop().eval(), digits(3)

    def logit(v):
        return sop(v)[:, 2].sum()

    leaf = x.clone().requires_grad_(True)
    expected, = torch.autograd.grad(logit(leaf), leaf)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(torch.func.grad(logit)(x), expected, rtol=1e-10, atol=1e-12)
    tangent = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    for mode in (torch.enable_grad, torch.no_grad):
        with mode():
            _, jvp = torch.func.jvp(logit, (x,), (tangent,))
            with fwAD.dual_level():
                dual = fwAD.unpack_dual(logit(fwAD.make_dual(x, tangent))).tangent
        for got in (jvp, dual):
            torch.testing.assert_close(got, (expected * tangent).sum(), rtol=1e-10, atol=1e-12)


def test_a_training_step_under_autocast():
    """bfloat16 features from an autocast backbone and float32 SOP layers: the forward runs in the features'
    compute dtype and every SOP layer gets a float32 gradient."""
    sop, (x, y) = image_sop(), digits(8, "train")
    sop.float().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = sop(x.float())
    torch.nn.functional.cross_entropy(logits.float(), y).backward()
    for name in GROUP_GEN + GROUP_SELECT:
        grad = sop.get_parameter(name).grad
        assert grad is not None and grad.dtype == torch.float32 and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_frozen_training_moves_only_the_sop_layers_and_restores_the_model():
    backbone = cnn_backbone(dropout=True)
    backbone.train()
    sop = image_sop(backbone=backbone)
    sop.eval()
    sop.sel_key.requires_grad_(False)  # a user's own frozen layer stays frozen
    x, y = digits(24, "train")
    data = (x.clone(), y.clone())
    before = {k: v.clone() for k, v in sop.state_dict().items()}
    flags = [m.training for m in sop.modules()]
    losses = train_sop(sop, data, epochs=2, batch_size=8, lr=1e-2, generator=0)
    assert len(losses) == 2 and all(v > 0 for v in losses)
    after = sop.state_dict()
    for name in before:
        moved = not torch.equal(before[name], after[name])
        assert moved == (not name.startswith(("backbone.", "sel_key."))), name
    assert [m.training for m in sop.modules()] == flags
    assert not any(p.requires_grad for p in sop.sel_key.parameters())
    assert all(p.requires_grad for p in sop.backbone.parameters())
    assert torch.equal(data[0], x) and torch.equal(data[1], y)


def test_training_lowers_the_loss():
    sop, (x, y) = image_sop(), digits(64, "train")
    losses = train_sop(sop, (x, y), epochs=8, batch_size=16, lr=1e-2, finetune=True, generator=0)
    assert losses[-1] < 0.8 * losses[0]


def test_seeded_training_is_reproducible():
    x, y = digits(24, "train")
    runs = []
    for seed in (3, 3, 4):
        sop = image_sop(backbone=cnn_backbone(dropout=True))
        rng = torch.get_rng_state()
        losses = train_sop(sop, (x, y), epochs=2, batch_size=8, finetune=True, generator=seed)
        assert torch.equal(torch.get_rng_state(), rng)  # the global generator is left alone
        runs.append((losses, sop.state_dict()))
    (l0, s0), (l1, s1), (l2, s2) = runs
    assert l0 == l1 and all(torch.equal(s0[k], s1[k]) for k in s0)
    assert l0 != l2 and any(not torch.equal(s0[k], s2[k]) for k in s0)
    assert all(torch.equal(a, b) for a, b in zip(image_sop().parameters(), image_sop().parameters()))


def test_train_sop_takes_an_iterable_of_batches_and_shows_progress():
    pytest.importorskip("tqdm")
    sop, (x, y) = image_sop(), digits(12, "train")
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    losses = train_sop(sop, batches, epochs=1, generator=0, progress=True)
    assert len(losses) == 1 and losses[0] > 0


def test_the_zoo_sop_is_within_one_and_a_half_points_of_its_backbone():
    x, y = load_digits("test")
    sop, cnn = load_digits_sop(), load_digits_cnn()
    with torch.no_grad():
        sop_acc = (sop(x).argmax(1) == y).float().mean().item()
        cnn_acc = (cnn(x).argmax(1) == y).float().mean().item()
    assert cnn_acc > 0.99 and sop_acc >= cnn_acc - 0.015, (sop_acc, cnn_acc)
    assert fastattr.zoo.SOP_TEST_ACCURACY == pytest.approx(sop_acc, abs=1e-4)
    assert SOP_WEIGHTS_PATH.stat().st_size < 1_000_000
    e = sop.explain(x[:4])
    groups = SOP_CONFIG["n_groups"]
    assert e.masks.shape == (4, groups, 8, 8) and (e.masks.sum((2, 3)) == 32).all()  # 8 of 16 patches of 4 pixels


def test_explain_output_goes_straight_into_the_grouped_metrics():
    sop = load_digits_sop()
    x, _ = load_digits("test", 4)
    e = sop.explain(x)
    auc, curve, fractions = fastattr.metrics.grouped_insertion(sop, x, e.scores, e.target, groups=e.masks,
                                                               curves=True)
    assert auc.shape == (4,) and curve.shape == (4, SOP_CONFIG["n_groups"] + 1) and torch.isfinite(auc).all()
    torch.testing.assert_close(fractions[:, -1], e.masks.any(1).float().mean((1, 2)))  # the groups' union
    with torch.no_grad():
        blank = sop(torch.zeros_like(x)).softmax(1)[torch.arange(4), e.target]
    torch.testing.assert_close(curve[:, 0], blank)
    deletion = fastattr.metrics.grouped_deletion(sop, x, e.scores, e.target, groups=e.masks)
    errors = fastattr.metrics.grouped_deletion_error(sop, x, e.scores, e.target, groups=e.masks, n_subsets=6,
                                                     generator=0)
    inserted = fastattr.metrics.grouped_insertion_error(sop, x, e.scores, e.target, groups=e.masks, n_subsets=6,
                                                        generator=0)
    assert deletion.shape == errors.shape == inserted.shape == (4,)
    assert torch.isfinite(errors).all() and (errors >= 0).all() and (inserted >= 0).all()


def test_feature_map_gives_each_pixel_the_scores_of_its_groups():
    sop = load_digits_sop()
    x, _ = load_digits("test", 3)
    e, every = sop.explain(x), sop.explain(x, "all")
    expected = torch.zeros(3, 8, 8)
    for b in range(3):
        for g in range(e.masks.shape[1]):
            expected[b][e.masks[b, g]] += e.scores[b, g]
    torch.testing.assert_close(e.feature_map(), expected)
    per_class = every.feature_map()
    assert per_class.shape == (3, 10, 8, 8)
    torch.testing.assert_close(per_class[torch.arange(3), e.target], expected)


class ImageOut(nn.Module):
    """Returns a feature map, not features."""

    def forward(self, x):
        return x * 2


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = cnn_backbone()

    def forward(self, x):
        return self.net(x), x


@pytest.mark.parametrize("kwargs, error, word", [
    ({"backbone": ImageOut()}, ValueError, "backbone must return"),
    ({"backbone": Pair()}, TypeError, "backbone must return one tensor"),
    ({"backbone": nn.Sequential(nn.Flatten(), nn.Linear(5, 3)).double()}, ValueError, "backbone could not run"),
    ({"n_groups": 17}, ValueError, "n_groups"),
    ({"n_groups": 0}, ValueError, "n_groups"),
    ({"patch_size": 3}, ValueError, "patch_size"),
    ({"k": 0.0}, ValueError, "k (the fraction"),
    ({"k": 1.5}, ValueError, "k (the fraction"),
    ({"head": nn.Linear(12, 7)}, ValueError, "head must be an nn.Linear(12, 10)"),
    ({"max_batch": 0}, ValueError, "max_batch"),
])
def test_bad_construction_gets_an_error_naming_the_argument(kwargs, error, word):
    with pytest.raises(error) as info:
        image_sop(**kwargs)
    assert word in str(info.value), str(info.value)


def test_bad_construction_of_sequences_and_types():
    with pytest.raises(TypeError, match="backbone must be an nn.Module"):
        SumOfParts(lambda x: x, 10, input_shape=(3, 8, 8), patch_size=2, n_groups=2)
    with pytest.raises(ValueError, match="num_classes"):
        SumOfParts(cnn_backbone(), 0, input_shape=(3, 8, 8), patch_size=2, n_groups=2)
    with pytest.raises(ValueError, match="patch_size 3 must divide the sequence length 64"):
        SumOfParts(nn.Flatten(), 10, input_shape=(64,), patch_size=3, n_groups=2)
    with pytest.raises(ValueError, match="embedding must map token ids"):
        SumOfParts(nn.Flatten(), 10, input_shape=(64,), embedding=nn.Flatten(), patch_size=8, n_groups=2)
    with pytest.raises(ValueError, match="input_shape"):
        SumOfParts(nn.Flatten(), 10, input_shape=(1, 2, 3, 4), patch_size=1, n_groups=2)


def test_bad_calls_get_an_error_naming_the_argument():
    sop, (x, y) = image_sop().eval(), digits(3)
    with pytest.raises(ValueError, match=r"inputs must have shape \[B, 3, 8, 8\], got \(3, 1, 8, 8\)"):
        sop(x[:, :1])
    with pytest.raises(ValueError, match=r"inputs must have a non-empty batch axis, got shape \(0, 3, 8, 8\)"):
        sop(x[:0])
    with pytest.raises(TypeError, match="inputs have dtype torch.float32"):
        sop(x.float())
    with pytest.raises(ValueError, match="target must be None, an int, a \\[B\\] tensor or 'all'"):
        sop.explain(x, "every")
    with pytest.raises(ValueError, match="target out of range"):
        sop.explain(x, 10)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="inputs contains NaN"):
        sop.explain(bad)
    with pytest.raises(ValueError, match="labels"):
        train_sop(sop, (x, torch.tensor([0, 1, 10])))
    with pytest.raises(ValueError, match="labels"):
        train_sop(sop, (x, y[:2]))
    with pytest.raises(TypeError, match="model must be a fastattr.SumOfParts"):
        train_sop(cnn_backbone(), (x, y))
    with pytest.raises(TypeError, match="data must be"):
        train_sop(sop, x)
    features = SumOfParts(nn.Sequential(nn.Linear(64, 5)).double(), 10, input_shape=(64,), patch_size=8,
                          n_groups=2)
    with pytest.raises(TypeError, match="token ids need an embedding"):
        features(torch.arange(64).reshape(1, 64))


def test_the_sum_of_parts_groups_are_the_ops():
    """The zoo's SOP takes its groups from group_gen (the op's own groups of the module's patches and weights, on
    its default backend), and in float64, where rounding cannot decide a ranking on real digits, they equal the
    reference formulation's (the torch projection and products, then group_masks) on held-out digits."""
    x, _ = load_digits("test", 64)
    sop = load_digits_sop().eval()
    weights = ("patch_proj.weight", "patch_proj.bias", "position", "gen_query.weight", "gen_key.weight")
    for model, inputs in ((sop, x), (copy.deepcopy(sop).double(), x.double())):
        params = dict(model.named_parameters())
        with torch.no_grad():
            patches = model._patches(inputs)
            _, hard, first = model._groups(patches)
            op = group_gen(patches, *(params[n] for n in weights), model.n_groups, model.kept)
        assert torch.equal(hard, op[1]) and torch.equal(first, op[3])
    with torch.no_grad():
        expected = reference_group_gen(patches, *(params[n] for n in weights), model.n_groups, model.kept)
    assert torch.equal(hard, expected[1]) and torch.equal(first, expected[3])
