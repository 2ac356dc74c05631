"""Deletion / insertion on hand-computed cases, tie order, channel-shared features,
chunk-size independence and bad input."""
import numpy as np
import pytest
import torch
from torch import nn

import fastattr
import fastattr.metrics as M
from fastattr.core import Blur, CountingModel, Uniform, make_baseline, patch_segments, rank_features
from tests.metrics import slow
from tests.models import rand, small_cnn

F64 = torch.float64


class Weighted(nn.Module):
    """f(x) = [Σ w_i x_i, 0]: logit 0 is a weighted sum, so the curves have closed forms."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(w, dtype=torch.float64), requires_grad=False)
        self.eval()

    def forward(self, x):
        s = (x.reshape(x.shape[0], -1) * self.w).sum(1)
        return torch.stack([s, torch.zeros_like(s)], 1)


def test_deletion_and_insertion_by_hand():
    model = Weighted([1.0, 2.0, 3.0, 4.0])
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    attr = torch.tensor([[0.1, 0.4, 0.2, 0.3]], dtype=torch.float64)  # order: 1, 3, 2, 0
    auc, curve, frac = M.deletion(model, x, attr, 0, score="logit", step=1, curves=True)
    # removing features 1 (w=2), 3 (w=4), 2 (w=3), 0 (w=1) one at a time from a total of 10
    torch.testing.assert_close(curve[0].double(), torch.tensor([10.0, 8.0, 4.0, 1.0, 0.0], dtype=F64))
    torch.testing.assert_close(frac, torch.tensor([0, 0.25, 0.5, 0.75, 1.0]))
    expected = 0.25 * ((10 + 8) / 2 + (8 + 4) / 2 + (4 + 1) / 2 + (1 + 0) / 2)
    assert auc.item() == pytest.approx(expected)
    ins_auc, ins_curve, _ = M.insertion(model, x, attr, 0, score="logit", step=2, curves=True)
    torch.testing.assert_close(ins_curve[0].double(), torch.tensor([0.0, 6.0, 10.0], dtype=torch.float64))
    assert ins_auc.item() == pytest.approx(0.5 * (3 + 8))


def test_probability_reader_and_fraction_steps():
    model = Weighted([1.0, -1.0, 0.5, 2.0])
    x = torch.tensor([[0.5, 1.0, -1.0, 0.25]], dtype=torch.float64)
    attr = torch.tensor([[4.0, 3.0, 2.0, 1.0]], dtype=torch.float64)
    _, curve, frac = M.deletion(model, x, attr, 0, step=0.5, curves=True)
    logits = [0.5 - 1.0 - 0.5 + 0.5, -0.5 + 0.5, 0.0]  # 0, then features 0-1, then all removed
    probs = torch.sigmoid(torch.tensor(logits, dtype=torch.float64))  # softmax([s, 0])[0]
    torch.testing.assert_close(curve[0].double(), probs, rtol=1e-6, atol=1e-7)
    assert frac.tolist() == [0.0, 0.5, 1.0]


def test_ties_are_broken_by_feature_index():
    scores = torch.tensor([[1.0, 3.0, 1.0, 3.0, 0.0]])
    assert rank_features(scores).tolist() == [[2, 0, 3, 1, 4]]
    model = Weighted([1.0, 10.0, 100.0])
    x = torch.ones(1, 3, dtype=torch.float64)
    _, curve, _ = M.deletion(model, x, torch.zeros(1, 3, dtype=F64), 0, score="logit", step=1, curves=True)
    torch.testing.assert_close(curve[0].double(), torch.tensor([111.0, 110.0, 100.0, 0.0], dtype=F64))


def test_channel_reduced_map_removes_all_channels_of_a_pixel():
    model = small_cnn()
    x = rand(2, 3, 8, 8, seed=1)
    attr = rand(2, 8, 8, seed=2)
    _, curve, _ = M.deletion(model, x, attr, 1, step=64, curves=True)
    with torch.no_grad():
        full = model(x).softmax(1)[:, 1]
        empty = model(torch.zeros_like(x)).softmax(1)[:, 1]
    torch.testing.assert_close(curve[:, 0], full.float())
    torch.testing.assert_close(curve[:, -1], empty.float())
    per_element = M.deletion(model, x, rand(2, 3, 8, 8, seed=3), 1)
    assert per_element.shape == (2,)


def test_result_does_not_depend_on_chunk_size():
    model = small_cnn()
    x = rand(3, 3, 8, 8, seed=4)
    attr = rand(3, 8, 8, seed=5)
    for metric in (M.deletion, M.insertion):
        ref = metric(model, x, attr, max_batch=1, baseline="blur", step=4)
        for mb in (5, 64, 10_000):
            torch.testing.assert_close(metric(model, x, attr, max_batch=mb, baseline="blur", step=4), ref)
    for metric in (M.mdrs, M.aupc, M.morf):
        ref = metric(model, x, attr, max_batch=4, patch_size=2)
        torch.testing.assert_close(metric(model, x, attr, max_batch=11, patch_size=2), ref)
        torch.testing.assert_close(metric(model, x, attr, memory_budget=20_000, patch_size=2), ref)


def test_baselines():
    x = rand(2, 3, 8, 8, seed=6)
    torch.testing.assert_close(make_baseline(x, 0.5), torch.full_like(x, 0.5))
    mean = make_baseline(x, "mean")
    torch.testing.assert_close(mean[:, :, 0, 0], x.mean((2, 3)))
    blur = make_baseline(x, "blur")
    assert blur.shape == x.shape and blur.std() < x.std()
    torch.testing.assert_close(make_baseline(torch.ones(1, 1, 6, 6), "blur"), torch.ones(1, 1, 6, 6))
    with pytest.raises(ValueError, match="baseline"):
        make_baseline(x, "noise")


def test_inputs_and_attributions_are_not_modified():
    model = small_cnn()
    x, attr = rand(2, 3, 8, 8, seed=7), rand(2, 8, 8, seed=8)
    xc, ac = x.clone(), attr.clone()
    M.insertion(model, x, attr)
    assert torch.equal(x, xc) and torch.equal(attr, ac)


def test_bad_input_errors():
    model = small_cnn()
    x = rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="attributions of shape"):
        M.deletion(model, x, rand(2, 7, 8))
    with pytest.raises(ValueError, match="NaN"):
        M.deletion(model, x, torch.full((2, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="larger than the number of features"):
        M.deletion(model, x, rand(2, 8, 8), step=65)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        M.insertion(model, x, rand(2, 8, 8), step=1.5)
    with pytest.raises(ValueError, match="score must be one of"):
        M.insertion(model, x, rand(2, 8, 8), score="margin")
    with pytest.raises(ValueError, match="target out of range"):
        M.deletion(model, x, rand(2, 8, 8), target=9)


# ---- features: segments, patches, granularity ----------------------------------------------------

def _patch_case():
    return small_cnn(), rand(2, 3, 8, 8, seed=21), rand(2, 8, 8, seed=22), patch_segments((8, 8), 2)


def test_patch_deletion_and_insertion_match_a_slow_loop():
    model, x, attr, ids = _patch_case()
    t = torch.tensor([1, 3])
    base = make_baseline(x, "mean")
    counts = [0, 3, 6, 9, 12, 15, 16]
    for fn, insert in ((M.deletion, False), (M.insertion, True)):
        auc, curve, frac = fn(model, x, attr, t, patch_size=2, step=3, baseline="mean", curves=True)
        torch.testing.assert_close(frac, torch.tensor(counts) / 16)
        for b in range(2):
            top = slow.order(slow.segment_scores(attr[b], ids, 16))
            ys = []
            for k in counts:
                removed = slow.units_of(ids, top[:k])
                xt = slow.perturb(x[b], base[b], ~removed if insert else removed)
                ys.append(slow.score(model, xt, t[b]))
            torch.testing.assert_close(curve[b].double(), torch.tensor(ys, dtype=F64), rtol=1e-6, atol=1e-7)
            assert auc[b].item() == pytest.approx(slow.trapezoid(ys, [k / 16 for k in counts]), rel=1e-5)


def test_per_example_segments_with_mean_scores_match_a_slow_loop():
    model = small_cnn()
    x, attr = rand(2, 3, 8, 8, seed=23), rand(2, 3, 8, 8, seed=24) + 0.5  # per element, summed over channels
    g = torch.Generator().manual_seed(5)
    segs = torch.stack([(torch.randperm(64, generator=g) % 8).clamp_max(5) for _ in range(2)]).view(2, 8, 8)
    auc, curve, _ = M.deletion(model, x, attr, 0, segments=segs, segment_score="mean", step=1, curves=True)
    for b in range(2):
        amap = attr[b].sum(0).reshape(-1)
        means = torch.tensor([amap[segs[b].reshape(-1) == s].mean().item() for s in range(6)])
        top = slow.order(means)
        zero = torch.zeros_like(x[b])
        ys = [slow.score(model, slow.perturb(x[b], zero, slow.units_of(segs[b], top[:k])), 0)
              for k in range(7)]
        torch.testing.assert_close(curve[b].double(), torch.tensor(ys, dtype=F64), rtol=1e-6, atol=1e-7)
    # segment 5 is three times larger, so the sum score ranks differently and the curve changes
    sums = slow.segment_scores(attr[0].sum(0), segs[0], 6)
    assert slow.order(sums) != slow.order(sums / torch.tensor([8, 8, 8, 8, 8, 24]))
    assert not torch.allclose(curve, M.deletion(model, x, attr, 0, segments=segs, step=1, curves=True)[1])


def test_granularity():
    model = small_cnn()
    x, attr = rand(2, 3, 8, 8, seed=25), rand(2, 3, 8, 8, seed=26)
    pixel = M.deletion(model, x, attr, granularity="pixel", step=4)
    torch.testing.assert_close(pixel, M.deletion(model, x, attr.sum(1), step=4))
    element = M.deletion(model, x, attr, granularity="element", step=12)
    torch.testing.assert_close(element, M.deletion(model, x, attr, step=12))
    assert not torch.allclose(pixel, element)
    with pytest.raises(ValueError, match="granularity='element' needs attributions of the input's shape"):
        M.deletion(model, x, attr.sum(1), granularity="element")
    with pytest.raises(ValueError, match="granularity must be one of"):
        M.deletion(model, x, attr, granularity="patch")
    with pytest.raises(ValueError, match="patch_size makes patches of pixels"):
        M.deletion(model, x, attr, granularity="element", patch_size=2)


def test_segment_errors():
    model, x, attr, ids = _patch_case()
    with pytest.raises(ValueError, match="segments of shape"):
        M.deletion(model, x, attr, segments=ids[:7])
    with pytest.raises(TypeError, match="integer segment ids"):
        M.deletion(model, x, attr, segments=ids.double())
    holes = ids.clone()
    holes[holes == 3] = 4  # id 3 unused
    with pytest.raises(ValueError, match="id 3 is empty in example 0"):
        M.mdrs(model, x, attr, segments=holes)
    with pytest.raises(ValueError, match="larger than the number of features"):
        M.deletion(model, x, attr, patch_size=4, step=5)  # 4 patches
    with pytest.raises(ValueError, match="segments or patch_size, not both"):
        M.deletion(model, x, attr, segments=ids, patch_size=2)
    with pytest.raises(ValueError, match="patch_size must be"):
        M.deletion(model, x, attr, patch_size=0)
    with pytest.raises(ValueError, match="segment_score"):
        M.deletion(model, x, attr, patch_size=2, segment_score="max")


# ---- MoRF / LeRF ------------------------------------------------------------------------------------

def test_morf_and_lerf_match_a_slow_loop():
    model = small_cnn()
    x, attr = rand(2, 3, 8, 8, seed=27), rand(2, 8, 8, seed=28)
    fractions = [0.1, 0.25, 0.5, 1.0]
    t = torch.tensor([2, 4])
    for fn, most in ((M.morf, True), (M.lerf, False)):
        value, drops, fr = fn(model, x, attr, t, fractions=fractions, curves=True)
        torch.testing.assert_close(fr, torch.tensor(fractions))
        for b in range(2):
            top = slow.order(attr[b].reshape(-1))
            clean = slow.score(model, x[b], t[b])
            expected = []
            for p in fractions:
                n = max(1, round(p * 64))
                chosen = top[:n] if most else top[-n:]
                removed = torch.zeros(64, dtype=torch.bool)
                removed[chosen] = True
                xt = slow.perturb(x[b], torch.zeros_like(x[b]), removed)
                expected.append(clean - slow.score(model, xt, t[b]))
            torch.testing.assert_close(drops[b].double(), torch.tensor(expected, dtype=torch.float64),
                                       rtol=1e-5, atol=1e-6)
            assert value[b].item() == pytest.approx(sum(expected) / len(expected), abs=1e-6)


def test_morf_lerf_ties_by_hand():
    model = Weighted([1.0, 10.0, 100.0, 1000.0])
    x = torch.ones(1, 4, dtype=torch.float64)
    flat = torch.zeros(1, 4, dtype=F64)  # all equal: MoRF takes the lowest indices, LeRF the highest
    kw = dict(fractions=[0.25, 0.5], score="logit")
    assert M.morf(model, x, flat, 0, **kw).item() == pytest.approx((1 + 11) / 2)
    assert M.lerf(model, x, flat, 0, **kw).item() == pytest.approx((1000 + 1100) / 2)
    # a faithful map: the largest weights first
    w = torch.tensor([[1.0, 10.0, 100.0, 1000.0]], dtype=torch.float64)
    assert M.morf(model, x, w, 0, **kw).item() == pytest.approx((1000 + 1100) / 2)
    assert M.lerf(model, x, w, 0, **kw).item() == pytest.approx((1 + 11) / 2)


def test_morf_bad_fractions():
    model, x, attr, _ = _patch_case()
    for bad in ([0.0], [0.5, 1.5], [], 0.5):
        with pytest.raises(ValueError, match="fractions"):
            M.morf(model, x, attr, fractions=bad)
    with pytest.raises(ValueError, match="NaN"):
        M.lerf(model, x, torch.full_like(attr, float("inf")))


# ---- MDRS / AUPC --------------------------------------------------------------------------------------

def test_mdrs_and_aupc_by_hand():
    model = Weighted([2.0, 1.0, -4.0, 2.0])
    x = torch.ones(3, 4, dtype=torch.float64)  # s = 1 > 0: predicted class 0
    attr = torch.tensor([[4.0, 3.0, 2.0, 1.0],   # removes w=2 first: s = -1, flips at 1
                         [1.0, 2.0, 4.0, 3.0],   # s: 5, 3, 2, 0 (a tie keeps class 0): never flips -> 4
                         [2.0, 4.0, 1.0, 3.0]], dtype=torch.float64)  # s: 0 (tie), -2: flips at 2
    assert M.mdrs(model, x, attr).tolist() == [1.0, 4.0, 2.0]
    value, curve, removed = M.aupc(model, x, attr, curves=True)
    s = torch.tensor([[-1.0, -2.0, 2.0, 0.0], [5.0, 3.0, 2.0, 0.0], [0.0, -2.0, -4.0, 0.0]], dtype=F64)
    torch.testing.assert_close(curve.double(), torch.sigmoid(s), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(value.double(), torch.sigmoid(s).sum(1), rtol=1e-6, atol=1e-6)
    assert removed.tolist() == [0.25, 0.5, 0.75, 1.0]


def test_mdrs_and_aupc_match_a_slow_loop():
    model, x, attr, ids = _patch_case()
    got_mdrs = M.mdrs(model, x, attr, patch_size=2)
    got_aupc = M.aupc(model, x, attr, patch_size=2)
    for b in range(2):
        pred = slow.score(model, x[b], None, "logits").argmax().item()
        top = slow.order(slow.segment_scores(attr[b], ids, 16))
        flips, total = [], 0.0
        for k in range(1, 17):
            xt = slow.perturb(x[b], torch.zeros_like(x[b]), slow.units_of(ids, top[:k]))
            flips.append(slow.score(model, xt, None, "logits").argmax().item() != pred)
            total += slow.score(model, xt, pred)
        assert got_mdrs[b].item() == (flips.index(True) + 1 if any(flips) else 16)
        assert got_aupc[b].item() == pytest.approx(total, rel=1e-5)


def test_mdrs_needs_a_classifier():
    reg = nn.Sequential(nn.Flatten(), nn.Linear(4, 1)).double().eval()
    with pytest.raises(ValueError, match="at least 2 outputs"):
        M.mdrs(reg, rand(2, 4), rand(2, 4, seed=1))
    with pytest.raises(ValueError, match="score must be one of"):
        M.aupc(small_cnn(), rand(1, 3, 8, 8), rand(1, 8, 8), score="logits")


# ---- readers, baselines, compile --------------------------------------------------------------------

def test_readers_and_uniform_baseline():
    model = small_cnn()
    x, attr = rand(2, 3, 8, 8, seed=29), rand(2, 8, 8, seed=30)
    _, logp, _ = M.deletion(model, x, attr, 1, score="log_probability", step=16, curves=True)
    _, prob, _ = M.deletion(model, x, attr, 1, step=16, curves=True)
    torch.testing.assert_close(logp.exp(), prob)
    reg = nn.Sequential(nn.Flatten(), nn.Linear(8, 1)).double().eval()
    xr, ar = rand(3, 8, seed=31), rand(3, 8, seed=32)
    _, curve, _ = M.deletion(reg, xr, ar, score="regression", step=8, curves=True)
    with torch.no_grad():
        torch.testing.assert_close(curve[:, 0], reg(xr)[:, 0].float())
        torch.testing.assert_close(curve[:, 1], reg(torch.zeros_like(xr))[:, 0].float())
    noise = make_baseline(x, "uniform", generator=3)
    assert torch.equal(noise, make_baseline(x, "uniform", generator=3))
    assert not torch.equal(noise, make_baseline(x, "uniform"))
    lo, hi = x.flatten(1).amin(1), x.flatten(1).amax(1)
    assert (noise.flatten(1).amin(1) >= lo).all() and (noise.flatten(1).amax(1) <= hi).all()
    assert noise.std() > 0.3
    fixed = make_baseline(x, Uniform(2.0, 3.0), generator=1)
    assert fixed.min() >= 2.0 and fixed.max() < 3.0
    ins = M.insertion(model, x, attr, baseline="uniform", generator=4)
    torch.testing.assert_close(ins, M.insertion(model, x, attr, baseline=make_baseline(x, "uniform",
                                                                                       generator=4)))
    torch.testing.assert_close(make_baseline(x, lambda v: v.flip(0)), x.flip(0))
    # the default kernel is 2·⌊3σ⌋ + 1 = 7 wide
    torch.testing.assert_close(make_baseline(x, Blur(kernel=7)), make_baseline(x, "blur"))
    assert not torch.allclose(make_baseline(x, Blur(kernel=3)), make_baseline(x, "blur"))
    with pytest.raises(ValueError, match="low < high"):
        Uniform(1.0, 0.0)
    with pytest.raises(ValueError, match="kernel"):
        Blur(kernel=4)
    with pytest.raises(ValueError, match="sigma"):
        Blur(sigma=0.0)


def test_blur_matches_scipy_gaussian_filter_and_reaches_every_metric():
    """``Blur(σ)`` is scipy's ``gaussian_filter`` over H and W with edges replicated (mode "nearest",
    truncated at ⌊3σ⌋); every metric's ``baseline=`` takes it, as it takes the blurred tensor."""
    from scipy import ndimage

    x = rand(2, 3, 12, 12, seed=35)
    for sigma in (0.7, 2.0):
        expected = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="nearest",
                                           truncate=max(1, int(3 * sigma)) / sigma)
        torch.testing.assert_close(make_baseline(x, Blur(sigma)), torch.from_numpy(expected),
                                   rtol=1e-12, atol=1e-12)
    model, x, attr = small_cnn(), x[..., 2:10, 2:10], rand(2, 8, 8, seed=36)
    blurred = make_baseline(x, Blur(2.0, kernel=5))
    for metric in (M.deletion, M.insertion, M.faithfulness_correlation):
        kw = {"generator": 0} if metric is M.faithfulness_correlation else {"step": 16}
        torch.testing.assert_close(metric(model, x, attr, 1, baseline=Blur(2.0, kernel=5), **kw),
                                   metric(model, x, attr, 1, baseline=blurred, **kw))
        assert not torch.allclose(metric(model, x, attr, 1, baseline=Blur(2.0, kernel=5), **kw),
                                  metric(model, x, attr, 1, baseline="blur", **kw))


def test_compile_uses_fixed_chunk_shapes_and_matches_eager():
    model = small_cnn()
    x, attr = rand(3, 3, 8, 8, seed=33), rand(3, 8, 8, seed=34)
    eager = M.deletion(model, x, attr, 1, patch_size=2, step=1, max_batch=9)
    counted = CountingModel(model)
    compiled = M.deletion(counted, x, attr, 1, patch_size=2, step=1, max_batch=9,
                          compile={"backend": "eager"})
    torch.testing.assert_close(compiled, eager)
    # one clean forward (target check, and the curve's first point), then 3 examples x 16 steps in
    # chunks of 3 examples x 3 steps: 6 calls of 9 inputs, the last one padded
    assert counted.calls == 1 + 6 and counted.inputs == 3 + 6 * 9
    with pytest.raises(TypeError, match="compile"):
        M.deletion(model, x, attr, compile="yes")


def test_numpy_integers_count_as_ints():
    """A step or subset size read off a numpy array works like the same Python int."""
    model, x, attr = small_cnn(), rand(2, 3, 8, 8, seed=37), rand(2, 8, 8, seed=38)
    torch.testing.assert_close(M.deletion(model, x, attr, 1, step=np.int64(4)),
                               M.deletion(model, x, attr, 1, step=4))
    torch.testing.assert_close(M.sensitivity_n(model, x, attr, 1, ns=np.array([2, 8]), n_subsets=6),
                               M.sensitivity_n(model, x, attr, 1, ns=[2, 8], n_subsets=6))


def test_keepdim_channel_reduced_maps_are_pixel_maps():
    """A ``[B, 1, H, W]`` map (Captum's keepdim form) of 3-channel inputs means what ``[B, H, W]`` means."""
    model, x, attr = small_cnn(), rand(2, 3, 8, 8, seed=39), rand(2, 8, 8, seed=40)
    keep = attr.unsqueeze(1)
    groups = torch.arange(64).view(8, 8) // 8
    for metric, kw in ((M.deletion, {"step": 8}), (M.insertion, {"patch_size": 2}),
                       (M.faithfulness_correlation, {"n_subsets": 6}), (M.grouped_deletion, {"groups": groups}),
                       (M.deletion_error, {"patch_size": 4})):
        torch.testing.assert_close(metric(model, x, keep, 1, **kw), metric(model, x, attr, 1, **kw))
    with pytest.raises(ValueError, match=r"or \(2, 1, 8, 8\)"):
        M.deletion(model, x, attr.unsqueeze(1).expand(2, 2, 8, 8), 1)


def test_mdrs_counts_until_the_prediction_flips_whatever_the_target():
    """MDRS is defined on the prediction (SEA-NN Eq. 3): a target that is not the predicted class ranks
    by its own map but still counts until argmax f changes from argmax f(x)."""
    model = Weighted([2.0, 1.0, -4.0, 2.0])
    x = torch.ones(3, 4, dtype=torch.float64)  # predicted class 0
    attr = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 4.0, 3.0], [2.0, 4.0, 1.0, 3.0]], dtype=F64)
    assert M.mdrs(model, x, attr, target=1).tolist() == M.mdrs(model, x, attr).tolist() == [1.0, 4.0, 2.0]
    ev = fastattr.evaluate(model, x, torch.tensor([1, 1, 0]), attributions={"a": attr}, metrics=["mdrs"])
    assert ev["mdrs"]["a"].tolist() == [1.0, 4.0, 2.0]


def test_a_single_output_model_is_read_as_is():
    """``[N, 1]`` and ``[N]`` outputs give the same curves under every scalar reader: a softmax over one
    class would be 1 for every input."""
    w = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    column = lambda z: (z.reshape(z.shape[0], -1) * w).sum(1, keepdim=True)  # noqa: E731
    flat = lambda z: column(z)[:, 0]  # noqa: E731
    x, attr = rand(3, 4, seed=31), rand(3, 4, seed=32)
    for score in ("probability", "log_probability", "logit", "regression"):
        _, curve, _ = M.deletion(column, x, attr, score=score, step=1, curves=True)
        _, want, _ = M.deletion(flat, x, attr, score=score, step=1, curves=True)
        torch.testing.assert_close(curve, want)
        assert curve.std() > 0


def test_fraction_steps_round_halves_up():
    """``step=0.25`` of 6 features is 1.5 → 2 per step; MoRF at p = 0.5 of 5 features removes 3 (2.5 → 3)."""
    model = Weighted([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    x, attr = torch.ones(2, 6, dtype=F64), rand(2, 6, seed=33)
    assert (M.deletion(model, x, attr, step=0.25, curves=True)[2] * 6).round().tolist() == [0, 2, 4, 6]
    five = Weighted([1.0, 2.0, 3.0, 4.0, 5.0])
    a5 = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]], dtype=F64)
    drop = M.morf(five, torch.ones(1, 5, dtype=F64), a5, fractions=[0.5], score="logit")
    assert drop.tolist() == [pytest.approx(1.0 + 2.0 + 3.0)]
