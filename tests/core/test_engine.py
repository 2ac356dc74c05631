"""The perturbation engine's pieces: random and exhaustive subsets, explicit masks, groups, features."""
import pytest
import torch

from fastattr.core import (MaskSet, all_subsets, feature_space, group_masks, group_scores, group_unit_rank,
                           perturbed_scores, random_subsets, read_scores)
from fastattr.core.subsets import smallest_keys
from tests.metrics import slow
from tests.models import mlp, rand, small_cnn


def masked_scores(model, x, base, masks, t, *, reader, chunk, features=None):
    """The engine on explicit masks."""
    return perturbed_scores(model, x, base, MaskSet(x, masks, features), t, reader=reader, chunk=chunk)


def test_bernoulli_subsets_are_seeded_and_have_the_right_rate():
    a = random_subsets(4, 300, 50, p=0.3, generator=1)
    assert a.shape == (4, 300, 50) and a.dtype == torch.bool
    assert torch.equal(a, random_subsets(4, 300, 50, p=0.3, generator=1))
    assert not torch.equal(a, random_subsets(4, 300, 50, p=0.3, generator=2))
    assert abs(a.double().mean().item() - 0.3) < 0.01  # 60 000 draws: std of the mean ≈ 0.002
    sparse = random_subsets(2, 500, 3, p=0.1, generator=3, nonempty=True)
    assert sparse.any(-1).all()
    assert not random_subsets(2, 500, 3, p=0.1, generator=3).any(-1).all()
    fixed = random_subsets(2, 10, 9, size=[1, 2, 3, 4, 5, 6, 7, 8, 9, 9], generator=4)
    assert fixed.sum(-1).tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9, 9]] * 2
    for bad in (0.0, 1.5, True):
        with pytest.raises(ValueError, match="p must be a probability"):
            random_subsets(1, 2, 3, p=bad)
    with pytest.raises(ValueError, match="exactly one"):
        random_subsets(1, 2, 3, size=1, p=0.5)


@pytest.mark.parametrize("levels", [3, 50, None])
def test_fixed_size_subsets_are_thesmallest_keys_with_ties_in_index_order(levels):
    gen = torch.Generator().manual_seed(levels or 0)
    keys = torch.rand(3, 40, 30, generator=gen)
    if levels:  # few distinct keys: ties at the threshold in most rows
        keys = (keys * levels).floor()
    sizes = torch.randint(1, 31, (40,), generator=gen)
    masks = smallest_keys(keys, sizes)
    order = keys.sort(dim=-1, stable=True).indices
    ref = torch.zeros_like(masks)
    for b in range(3):
        for k in range(40):
            ref[b, k, order[b, k, :sizes[k]]] = True
    assert torch.equal(masks, ref)
    assert torch.equal(masks.sum(-1), sizes.expand(3, -1))


@pytest.mark.parametrize("keys_at_a_time", [350, 700, 1 << 20])   # one example, two, all three at a time
def test_fixed_size_subsets_draw_blocks_of_examples_like_one_call(keys_at_a_time, monkeypatch):
    import fastattr.core.subsets as subsets

    monkeypatch.setattr(subsets, "_KEYS", keys_at_a_time)
    drawn = random_subsets(3, 7, 50, size=list(range(1, 8)), generator=9)
    keys = torch.rand(3, 7, 50, generator=torch.Generator().manual_seed(9))
    assert torch.equal(drawn, smallest_keys(keys, torch.arange(1, 8)))


def test_all_subsets():
    s = all_subsets(5)
    assert s.shape == (31, 5) and s.any(1).all()
    assert len({tuple(r.tolist()) for r in s}) == 31
    with pytest.raises(ValueError, match="all subsets"):
        all_subsets(0)


def test_masked_scores_match_a_slow_loop_and_do_not_depend_on_chunks():
    model = small_cnn()
    x = rand(2, 3, 8, 8, seed=1)
    base = rand(2, 3, 8, 8, seed=2)
    masks = random_subsets(2, 5, 64, p=0.4, generator=5)
    t = torch.tensor([0, 3])
    ref = masked_scores(model, x, base, masks, t, reader="probability", chunk=1)
    for b in range(2):
        for k in range(5):
            expected = slow.score(model, slow.perturb(x[b], base[b], masks[b, k]), t[b])
            assert ref[b, k].item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(masked_scores(model, x, base, masks, t, reader="probability", chunk=7), ref)
    logits = masked_scores(model, x, base, masks[:1], t, reader="logits", chunk=4)  # masks shared by examples
    assert logits.shape == (2, 5, 5) and logits.dtype == torch.float64
    expected = slow.score(model, slow.perturb(x[1], base[1], masks[0, 2]), 0, "logits")
    torch.testing.assert_close(logits[1, 2], expected)


def test_readers():
    out = rand(4, 3, seed=3)
    t = torch.tensor([0, 2, 1, 1])
    torch.testing.assert_close(read_scores(out, t, "log_probability"), out.log_softmax(1)[torch.arange(4), t])
    torch.testing.assert_close(read_scores(out, t, "regression"), out[torch.arange(4), t])
    assert torch.equal(read_scores(out, t, "logits"), out)
    torch.testing.assert_close(read_scores(out[:, 0], t, "probability"), out[:, 0])  # 1-D output as is
    with pytest.raises(ValueError, match="score must be one of"):
        read_scores(out, t, "margin")


def test_feature_space_segments_and_patches():
    x = rand(2, 3, 4, 6, seed=4)
    attr = rand(2, 4, 6, seed=5)
    f = feature_space(x, attr, patch_size=(2, 3))  # 2 x 2 patches
    assert f.n == 4 and f.unit == "pixel" and f.n_units == 24
    torch.testing.assert_close(f.scores[:, 0], attr[:, :2, :3].sum((1, 2)))
    torch.testing.assert_close(f.scores[:, 3], attr[:, 2:, 3:].sum((1, 2)))
    mean = feature_space(x, attr, patch_size=(2, 3), segment_score="mean")
    torch.testing.assert_close(mean.scores, f.scores / 6)
    # per-element segments (the input's own shape, shared by the batch)
    ids = torch.arange(72).view(3, 4, 6) % 5
    el = feature_space(x, rand(2, 3, 4, 6, seed=6), segments=ids)
    assert el.unit == "element" and el.n == 5 and el.n_units == 72
    with pytest.raises(ValueError, match="segments must be non-negative"):
        feature_space(x, attr, segments=torch.full((4, 6), -1))


def test_groups_overlap_and_unit_rank():
    x = rand(1, 2, 2, 3, seed=7)
    # [G=3, 2, 3] pixel masks; groups 0 and 1 overlap
    groups = torch.tensor([[[1, 1, 0], [0, 0, 0]],
                           [[0, 1, 1], [0, 1, 0]],
                           [[0, 0, 0], [1, 0, 0]]], dtype=torch.bool)
    masks, unit = group_masks(x, groups)
    assert unit == "pixel" and masks.shape == (1, 3, 6)
    c = torch.tensor([[1.0, 3.0, 2.0]])  # order: group 1, group 2, group 0
    rank = group_unit_rank(masks, torch.tensor([[2, 0, 1]]))
    # pixel 0 first in group 0 (position 2); 1, 2, 4 in group 1 (0); 3 in group 2 (1); 5 in none (3)
    assert rank.tolist() == [[2, 0, 0, 1, 0, 3]]
    amap = rand(1, 2, 3, seed=8)
    expected = torch.einsum("gu,u->g", masks[0].double(), amap.reshape(-1)).unsqueeze(0)
    torch.testing.assert_close(group_scores(x, amap, masks, unit), expected)
    assert group_scores(x, c, masks, unit) is c
    ids, _ = group_masks(x, torch.tensor([[0, 0, 1], [1, 2, 2]]))
    assert ids.shape == (1, 3, 6) and ids.sum(1).eq(1).all()


def test_group_errors():
    x = rand(2, 3, 4, 4, seed=9)
    with pytest.raises(ValueError, match="groups of shape"):
        group_masks(x, torch.ones(5, 4, 3, dtype=torch.bool))
    empty = torch.ones(2, 3, 4, 4, dtype=torch.bool)
    empty[1, 2] = False
    with pytest.raises(ValueError, match="group 2 of example 1 is empty"):
        group_masks(x, empty)
    with pytest.raises(ValueError, match="binary"):
        group_masks(x, torch.full((3, 4, 4), 0.5))
    with pytest.raises(TypeError, match="groups must be a torch.Tensor"):
        group_masks(x, [[0, 1]])
    masks, unit = group_masks(x, torch.ones(3, 4, 4))
    with pytest.raises(ValueError, match="neither group scores"):
        group_scores(x, rand(2, 5), masks, unit)
    with pytest.raises(ValueError, match="NaN"):
        group_scores(x, torch.tensor([[1.0, float("nan"), 0.0]] * 2), masks, unit)


def test_flat_inputs_use_elements():
    model = mlp()
    x = rand(3, 12, seed=10)
    f = feature_space(x, rand(3, 12, seed=11))
    assert f.unit == "element" and f.n == 12
    with pytest.raises(ValueError, match="granularity='pixel' needs inputs with a channel axis"):
        feature_space(x, rand(3, 12, seed=11), granularity="pixel")
    masks = all_subsets(3).unsqueeze(0)
    seg = feature_space(x, rand(3, 12, seed=11), segments=torch.arange(12) // 4)
    t = torch.zeros(3, dtype=torch.long)
    out = masked_scores(model, x, torch.zeros_like(x), masks, t, reader="logit", chunk=5, features=seg)
    direct = masked_scores(model, x, torch.zeros_like(x), seg.unit_masks(masks), t, reader="logit", chunk=5)
    torch.testing.assert_close(out, direct)
    assert seg.unit_masks(masks)[0, 4].tolist() == [True] * 4 + [False] * 4 + [True] * 4  # subset {0, 2}


class _Sizes(torch.nn.Module):
    """Records the batch size of every forward call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.model(x)


def test_every_forward_respects_max_batch():
    """max_batch bounds every model call, the clean forward on x (and on the baseline) included."""
    import fastattr
    import fastattr.metrics as M

    x, a = rand(5, 3, 8, 8, seed=95), rand(5, 8, 8, seed=96)
    groups = torch.arange(64).view(8, 8) // 16
    calls = {
        "deletion": lambda m, **kw: M.deletion(m, x, a, step=16, **kw),
        "morf": lambda m, **kw: M.morf(m, x, a, **kw),
        "grouped_deletion": lambda m, **kw: M.grouped_deletion(m, x, a, groups=groups, **kw),
        "faithfulness_correlation": lambda m, **kw: M.faithfulness_correlation(m, x, a, n_subsets=4, **kw),
        "sensitivity_n": lambda m, **kw: M.sensitivity_n(m, x, a, ns=[3], n_subsets=4, **kw),
        "deletion_error": lambda m, **kw: M.deletion_error(m, x, a, patch_size=4, **kw),
        "grouped_deletion_error": lambda m, **kw: M.grouped_deletion_error(m, x, a, groups=groups, **kw),
        "max_sensitivity": lambda m, **kw: M.max_sensitivity(m, x, "saliency", n_samples=3, **kw),
        "evaluate": lambda m, **kw: fastattr.evaluate(m, x, attributions={"a": a}, step=1, n_subsets=4,
                                                      ns=[3], patch_size=4, **kw),
    }
    for name, call in calls.items():
        model = _Sizes(small_cnn()).eval()
        call(model, max_batch=2)
        assert max(model.sizes) <= 2, (name, model.sizes)
        assert sum(1 for s in model.sizes if s == 2) > 1, name


def test_shared_element_segments_are_not_taken_for_pixel_segments_when_batch_equals_channels():
    """Segments ``[C, H, W]`` with an element map mean one element segmentation for every example, also
    when B = C makes them look like per-example pixel segments ``[B, H, W]``."""
    x, a = rand(3, 3, 4, 4, seed=41), rand(3, 3, 4, 4, seed=42)
    seg = torch.stack([(torch.arange(16).reshape(4, 4) // 4 + c) % 4 for c in range(3)])  # ids 0..3 each
    implicit = feature_space(x, a, segments=seg)
    explicit = feature_space(x, a, segments=seg, granularity="element")
    assert implicit.unit == explicit.unit == "element"
    torch.testing.assert_close(implicit.scores, explicit.scores)
    pixel = feature_space(x, a.sum(1), segments=seg)  # a pixel map keeps the per-example reading
    assert pixel.unit == "pixel" and pixel.scores.shape[0] == 3


def test_integer_group_masks_get_a_hint():
    x = rand(2, 3, 4, 4, seed=43)
    masks = torch.zeros(5, 4, 4, dtype=torch.uint8)
    masks[:, :2] = 1
    with pytest.raises(ValueError, match="give 0/1 group masks as bool"):
        group_masks(x, masks)
    assert group_masks(x, masks.bool())[0].shape == (1, 5, 16)


def test_the_deprecated_metrics_perturb_module_keeps_its_names():
    """``fastattr.metrics.perturb`` (where the engine lived) still answers with the core's objects."""
    import fastattr.core as core
    from fastattr.metrics import perturb

    for name in ("make_baseline", "Blur", "Uniform", "rank_features", "feature_space", "random_subsets",
                 "CountingModel", "ChunkRunner", "patch_segments", "read_scores", "step_counts"):
        assert getattr(perturb, name) is getattr(core, name)
    model, x = small_cnn(), rand(2, 3, 8, 8, seed=3)
    masks = random_subsets(2, 5, 64, size=9, generator=1)
    t = torch.tensor([0, 1])
    torch.testing.assert_close(perturb.masked_scores(model, x, torch.zeros_like(x), masks, t, reader="logit",
                                                     chunk=3),
                               masked_scores(model, x, torch.zeros_like(x), masks, t, reader="logit", chunk=4))
    rank = perturb.rank_features(torch.randn(2, 64, generator=torch.Generator().manual_seed(0)))
    curve = perturb.ranked_curve(model, x, torch.zeros_like(x), rank, torch.tensor([0, 8, 64]), t, keep_top=False,
                                 reader="logit", chunk=4)
    torch.testing.assert_close(curve[:, 0], read_scores(model(x), t, "logit").float())  # curves kept in float32


def test_cpu_chunk_budget_reads_meminfo_only_when_memory_is_short(monkeypatch):
    """With 2 GiB unused (one sysconf call) the CPU budget is the working-set cap without parsing
    /proc/meminfo; short of that it is min(a quarter of the available memory, the cap), as before."""
    from fastattr.core import chunks

    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    per_input = 8 * 64 * 24.0
    cap = int(chunks.CPU_WORKING_SET // per_input)

    def unread(device):
        raise AssertionError("free_memory was read")

    monkeypatch.setattr(chunks, "_unused_memory", lambda: 3 << 30)
    monkeypatch.setattr(chunks, "free_memory", unread)
    assert chunks.chunk_size(x, 10 ** 6, None, None) == min(1024, cap)
    monkeypatch.setattr(chunks, "_unused_memory", lambda: 1 << 30)
    monkeypatch.setattr(chunks, "free_memory", lambda device: 4 * 200 * int(per_input))
    assert chunks.chunk_size(x, 10 ** 6, None, None) == 200
    monkeypatch.setattr(chunks, "free_memory", lambda device: 64 << 30)
    assert chunks.chunk_size(x, 10 ** 6, None, None) == min(1024, cap)
