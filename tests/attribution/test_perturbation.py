"""Perturbation attributions (occlusion, feature ablation, RISE) against slow one-perturbation-at-a-time
loops and closed forms on linear models; chunk-size independence; RISE's seeding and masks; model and
input state; bad input."""
import itertools

import pytest
import torch
from torch import nn

import fastattr.attribution as A
from fastattr.core import patch_segments
from tests.models import batchnorm_with_statistics, linear_model, mlp, rand, small_cnn


def bn_cnn() -> nn.Module:
    """Conv → BatchNorm (non-trivial running statistics) → ReLU → max-pool → linear, on [B, 3, 8, 8]."""
    torch.manual_seed(4)
    bn = batchnorm_with_statistics(6)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), bn, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(6 * 4 * 4, 5)).double().eval()


def score(model, x, t, reader="logit"):
    with torch.no_grad():
        out = model(x)
    if reader == "probability":
        out = out.softmax(-1)
    return out[torch.arange(x.shape[0]), t]


def window_starts(n, w, s):
    """Slide from 0 in steps of s until the window reaches the end."""
    starts, start = [], 0
    while True:
        starts.append(start)
        if start + w >= n:
            return starts
        start += s


def slow_occlusion(model, x, t, window, strides, base, reader="logit"):
    total, count = torch.zeros_like(x), torch.zeros_like(x)
    clean = score(model, x, t, reader)
    per_dim = [window_starts(n, w, s) for n, w, s in zip(x.shape[1:], window, strides)]
    for corner in itertools.product(*per_dim):
        region = (slice(None),) + tuple(slice(c, c + w) for c, w in zip(corner, window))
        occluded = x.clone()
        occluded[region] = base[region]
        delta = clean - score(model, occluded, t, reader)
        total[region] += delta.view((-1,) + (1,) * (x.dim() - 1))
        count[region] += 1
    return total / count


def slow_ablation(model, x, t, mask, base):
    attr = torch.zeros_like(x)
    clean = score(model, x, t)
    for g in torch.unique(mask):
        m = (mask == g).expand_as(x)
        delta = clean - score(model, torch.where(m, base, x), t)
        attr += m * delta.view((-1,) + (1,) * (x.dim() - 1))
    return attr


@pytest.mark.parametrize("window,strides", [((3, 2, 2), (1, 1, 1)), ((1, 3, 3), (1, 2, 2)),
                                            ((2, 5, 3), (1, 2, 3)), ((3, 8, 8), (1, 1, 1)),
                                            ((1, 1, 1), (1, 1, 1)), ((3, 4, 8), (2, 3, 7))])
def test_occlusion_matches_a_loop_over_windows(window, strides):
    model, x = bn_cnn(), rand(4, 3, 8, 8, seed=1)
    t = torch.tensor([0, 3, 1, 4])
    base = rand(4, 3, 8, 8, seed=2)
    ours = A.occlusion(model, x, t, sliding_window_shapes=window, strides=strides, baselines=base,
                       max_batch=5)
    torch.testing.assert_close(ours, slow_occlusion(model, x, t, window, strides, base))


def test_occlusion_probability_score_and_scalar_baseline():
    model, x = small_cnn(), rand(3, 3, 8, 8, seed=3)
    t = torch.tensor([1, 0, 2])
    ours = A.occlusion(model, x, t, sliding_window_shapes=(3, 3, 3), strides=2, baselines=0.25,
                       score="probability")
    ref = slow_occlusion(model, x, t, (3, 3, 3), (2, 2, 2), torch.full_like(x, 0.25), "probability")
    torch.testing.assert_close(ours, ref)


def test_ablation_and_occlusion_closed_form_on_a_linear_model():
    """For f = Wx: removing element i changes f_t by w_ti (x_i − x'_i), so per-element ablation and
    1-element occlusion are (x − x') ⊙ w_t; a window gives the mean of its windows' sums."""
    model, x, base = linear_model(), rand(5, 3, 4, seed=4), rand(5, 3, 4, seed=5)
    t = torch.tensor([0, 1, 2, 1, 0])
    w = model[1].weight.detach()[t].reshape(5, 3, 4)
    expected = (x - base) * w
    torch.testing.assert_close(A.feature_ablation(model, x, t, baselines=base), expected)
    single = A.occlusion(model, x, t, sliding_window_shapes=(1, 1), baselines=base)
    torch.testing.assert_close(single, expected)
    # Window (3, 4): one position, the whole input; every element gets f_t(x) − f_t(x').
    whole = A.occlusion(model, x, t, sliding_window_shapes=(3, 4), baselines=base)
    torch.testing.assert_close(whole, expected.sum((1, 2), keepdim=True).expand_as(x))


@pytest.mark.parametrize("mask_shape", [(1, 1, 8, 8), (8, 8), (4, 1, 8, 8), (1, 3, 1, 1), (4, 3, 8, 8)])
def test_feature_ablation_matches_a_loop_over_groups(mask_shape):
    model, x = bn_cnn(), rand(4, 3, 8, 8, seed=6)
    t = torch.tensor([2, 0, 4, 1])
    mask = torch.randint(-3, 6, mask_shape, generator=torch.Generator().manual_seed(7))
    base = rand(1, 3, 8, 8, seed=8)
    ours = A.feature_ablation(model, x, t, feature_mask=mask, baselines=base, max_batch=6)
    full = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    torch.testing.assert_close(ours, slow_ablation(model, x, t, full, base.expand_as(x)))


def test_feature_ablation_default_is_per_element():
    model, x = mlp(d=12), rand(3, 12, seed=9)
    t = torch.tensor([0, 3, 1])
    ours = A.feature_ablation(model, x, t, baselines=0.5)
    ref = slow_ablation(model, x, t, torch.arange(12)[None], torch.full_like(x, 0.5))
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(A.occlusion(model, x, t, baselines=0.5), ref)  # default window (1,) on [B, D]


@pytest.mark.parametrize("fn,kwargs", [
    (A.occlusion, dict(sliding_window_shapes=(3, 3, 2), strides=(1, 2, 1))),
    (A.feature_ablation, dict(feature_mask=patch_segments((8, 8), 2))),
    (A.rise, dict(n_masks=40, mask_size=3)),
])
def test_results_do_not_depend_on_the_chunk_size(fn, kwargs):
    model, x = bn_cnn(), rand(5, 3, 8, 8, seed=10)
    outs = [fn(model, x, **kwargs, max_batch=m) for m in (1, 3, 8, 7 * 5, 4096)]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-12, atol=1e-12)
    assert outs[0].abs().sum() > 0


def test_rise_matches_a_direct_loop_over_masks():
    model, x = bn_cnn(), rand(3, 3, 8, 8, seed=11)
    t = torch.tensor([1, 4, 0])
    n, p = 30, 0.4
    masks = A.rise_masks(x.shape, n, mask_size=3, p=p, generator=5, dtype=torch.float64)
    assert masks.shape == (n, 8, 8)
    ref = torch.zeros(3, 8, 8, dtype=torch.float64)
    base = 0.3
    for m in masks:
        ref += score(model, base + m * (x - base), t, "probability").view(3, 1, 1) * m
    ref = (ref / (n * p))[:, None].expand_as(x)
    ours = A.rise(model, x, t, n_masks=n, mask_size=3, p=p, generator=5, baselines=base)
    torch.testing.assert_close(ours, ref)


def test_rise_is_seeded():
    model, x = small_cnn(), rand(2, 3, 8, 8, seed=12)
    a = A.rise(model, x, n_masks=20, generator=3)
    torch.testing.assert_close(A.rise(model, x, n_masks=20, generator=torch.Generator().manual_seed(3)), a,
                               rtol=0, atol=0)
    assert (A.rise(model, x, n_masks=20, generator=4) - a).abs().max() > 1e-3
    torch.testing.assert_close(A.rise(model, x, n_masks=20), A.rise(model, x, n_masks=20, generator=0),
                               rtol=0, atol=0)


def test_rise_masks_are_smooth_shifted_grids_with_mean_p():
    masks = A.rise_masks((1, 1, 16, 16), 2000, mask_size=4, p=0.3, generator=1)
    assert masks.shape == (2000, 16, 16) and masks.min() >= 0 and masks.max() <= 1
    assert abs(masks.mean().item() - 0.3) < 0.02
    # Bilinear upsampling of 4×4 cells over 16 pixels: neighbours differ by at most 1/5 (cell ≈ 5 px).
    assert (masks[:, 1:] - masks[:, :-1]).abs().max() <= 0.2 + 1e-6
    # Random shifts: the pixel-wise mean is flat, not tied to fixed cell positions.
    assert (masks.mean(0) - 0.3).abs().max() < 0.06
    one_d = A.rise_masks((1, 50), 10, mask_size=5, generator=0)
    assert one_d.shape == (10, 50)


def test_rise_finds_the_region_a_linear_model_reads():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2)).double().eval()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[0].view(8, 8)[:4, :4] = 1.0
    x = rand(2, 1, 8, 8, seed=13).abs() + 0.5
    s = A.rise(model, x, 0, n_masks=500, score="logit")[:, 0]
    # S_j = Σ_i w_i x_i E[M_i M_j] / p: a constant p·f(x) away from the region, more inside it.
    assert (s[:, :4, :4].mean((1, 2)) > 1.15 * s[:, 4:, 4:].mean((1, 2))).all()


def test_rise_on_sequences():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(40, 3))
    model = model.double().eval()
    x = rand(3, 2, 10, seed=14)
    out = A.rise(model, x, n_masks=16, mask_size=4)
    assert out.shape == x.shape and torch.equal(out[:, 0], out[:, 1]) and out.abs().sum() > 0


def test_registered_methods_run_with_defaults_on_digit_images():
    sklearn = pytest.importorskip("sklearn.datasets")
    images = torch.tensor(sklearn.load_digits().images[:4], dtype=torch.float64)[:, None] / 16
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))
    model = model.double().eval()
    t = torch.tensor([0, 1, 2, 3])
    for name in ("occlusion", "feature_ablation", "rise"):
        assert name in A.__all__
        out = A.METHODS[name](model, images, t)
        assert out.shape == images.shape and torch.isfinite(out).all() and out.abs().sum() > 0, name
    ref = slow_occlusion(model, images, t, (1, 2, 2), (1, 1, 1), torch.zeros_like(images))
    torch.testing.assert_close(A.METHODS["occlusion"](model, images, t), ref)


def test_model_and_inputs_are_left_untouched():
    model, x = bn_cnn(), rand(3, 3, 8, 8, seed=15)
    base = rand(3, 3, 8, 8, seed=16)
    mask = torch.randint(0, 4, (1, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    copies = [x.clone(), base.clone(), mask.clone()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model[0].weight.requires_grad_(False)
    A.occlusion(model, x, sliding_window_shapes=(3, 2, 2), baselines=base)
    A.feature_ablation(model, x, feature_mask=mask, baselines=base)
    A.rise(model, x, n_masks=8, baselines=base)
    for before, after in zip(copies, (x, base, mask)):
        assert torch.equal(before, after)
    assert not model.training and not model[0].weight.requires_grad and model[1].weight.requires_grad
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_model_in_training_mode_warns():
    model, x = linear_model().train(), rand(2, 3, 4, seed=17)
    with pytest.warns(UserWarning, match="training mode"):
        A.feature_ablation(model, x)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(sliding_window_shapes=(3, 2)), ValueError, "sliding_window_shapes must have one entry"),
    (dict(sliding_window_shapes=(3, 0, 2)), ValueError, r"sliding_window_shapes\[1\] = 0"),
    (dict(sliding_window_shapes=(3, 9, 2)), ValueError, "between 1 and the input size 8"),
    (dict(sliding_window_shapes=2), TypeError, "sliding_window_shapes must be a tuple"),
    (dict(sliding_window_shapes=(3, 2, 2.0)), TypeError, "sliding_window_shapes must be an int or a tuple"),
    (dict(sliding_window_shapes=(3, 2, 2), strides=0), ValueError, r"strides\[0\] = 0 must be >= 1"),
    (dict(sliding_window_shapes=(3, 2, 2), strides=(1, 3, 1)), ValueError, r"strides\[1\] = 3 is larger"),
    (dict(sliding_window_shapes=(3, 2, 2), strides=(1, 1)), ValueError, "strides must have one entry"),
    (dict(sliding_window_shapes=(3, 2, 2), score="margin"), ValueError, "score must be one of"),
    (dict(sliding_window_shapes=(3, 2, 2), baselines=torch.zeros(2, 3, 8, 8)), ValueError, "baselines"),
    (dict(sliding_window_shapes=(3, 2, 2), baselines=float("nan")), ValueError, "baseline contains NaN"),
    (dict(sliding_window_shapes=(3, 2, 2), baselines=[0.0]), TypeError, "baselines must be"),
    (dict(sliding_window_shapes=(3, 2, 2), max_batch=0), ValueError, "max_batch"),
])
def test_occlusion_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        A.occlusion(small_cnn(), rand(3, 3, 8, 8, seed=18), **kwargs)


@pytest.mark.parametrize("mask,error,match", [
    (torch.zeros(1, 1, 8, 8), TypeError, "integer segment ids"),
    (torch.zeros(2, 1, 8, 8, dtype=torch.long), ValueError, "does not broadcast"),
    (torch.zeros(1, 1, 1, 8, 8, dtype=torch.long), ValueError, "more dimensions"),
    (torch.zeros(7, dtype=torch.long), ValueError, "does not broadcast"),
    (torch.zeros(1, 1, 0, 8, dtype=torch.long), ValueError, "does not broadcast"),
    ([[0, 1]], TypeError, "feature_mask must be a tensor"),
])
def test_feature_ablation_bad_mask(mask, error, match):
    with pytest.raises(error, match=match):
        A.feature_ablation(small_cnn(), rand(3, 3, 8, 8, seed=19), feature_mask=mask)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_masks=0), "n_masks must be an int >= 1"),
    (dict(n_masks=2.5), "n_masks must be an int >= 1"),
    (dict(p=0.0), r"p must be a number in \(0, 1\)"),
    (dict(p=1.0), r"p must be a number in \(0, 1\)"),
    (dict(p=-0.5), r"p must be a number in \(0, 1\)"),
    (dict(mask_size=0), "mask_size must be >= 1"),
    (dict(mask_size=(3, 3, 3)), "mask_size must have one entry"),
])
def test_rise_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        A.rise(small_cnn(), rand(2, 3, 8, 8, seed=20), **kwargs)


def test_bad_inputs_targets_and_models():
    model, x = small_cnn(), rand(2, 3, 8, 8, seed=21)
    with pytest.raises(ValueError, match="NaN"):
        A.occlusion(model, x.clone().fill_(float("nan")), sliding_window_shapes=(3, 2, 2))
    with pytest.raises(TypeError, match="floating"):
        A.rise(model, torch.ones(2, 3, 8, 8, dtype=torch.long), n_masks=4)
    with pytest.raises(ValueError, match="target out of range"):
        A.rise(model, x, 5, n_masks=4)
    with pytest.raises(ValueError, match="rise needs inputs"):
        A.rise(lambda z: z.flatten(1), rand(2, 1, 2, 2, 2, 2, seed=22), n_masks=4)
    with pytest.raises(ValueError, match="model must return"):
        A.feature_ablation(lambda z: model(z).sum(), x)


def test_random_and_blurred_baselines():
    """``Uniform`` / ``Blur`` specs work as baselines; RISE draws a random baseline from its own
    generator after the masks, so the seed decides both."""
    from fastattr.metrics import Blur, Uniform
    from fastattr.core import make_baseline

    model = small_cnn()
    x = rand(2, 3, 8, 8, seed=103)
    blurred = make_baseline(x, Blur(1.5))
    torch.testing.assert_close(A.feature_ablation(model, x, 1, baselines=Blur(1.5)),
                               A.feature_ablation(model, x, 1, baselines=blurred))
    noise = make_baseline(x, Uniform(-1.0, 1.0), generator=0)
    torch.testing.assert_close(A.occlusion(model, x, 1, baselines=Uniform(-1.0, 1.0)),
                               A.occlusion(model, x, 1, baselines=noise))
    gen = torch.Generator().manual_seed(7)
    masks = A.rise_masks(x.shape, 20, generator=gen)  # the masks' draws, then the baseline's
    replayed = A.rise(model, x, 1, n_masks=20, generator=7,
                             baselines=make_baseline(x, "uniform", generator=gen))
    assert masks.shape == (20, 8, 8)
    seeded = A.rise(model, x, 1, n_masks=20, generator=7, baselines="uniform")
    torch.testing.assert_close(seeded, replayed)
    other = make_baseline(x, "uniform")  # the same seed, but not after the masks
    assert not torch.allclose(A.rise(model, x, 1, n_masks=20, generator=7, baselines=other), replayed)


def test_compiled_perturbation_methods_run_fixed_chunks_and_match_eager():
    from fastattr.core import CountingModel

    model = small_cnn()
    x = rand(3, 3, 8, 8, seed=104)
    patches = patch_segments((8, 8), 4)  # 4 groups
    window = dict(sliding_window_shapes=(3, 4, 4), strides=(1, 2, 2))
    cases = {"occlusion": lambda m, **kw: A.occlusion(m, x, 1, **window, **kw),
             "feature_ablation": lambda m, **kw: A.feature_ablation(m, x, 1, feature_mask=patches, **kw),
             "rise": lambda m, **kw: A.rise(m, x, 1, n_masks=10, generator=2, **kw)}
    for name, call in cases.items():
        eager = call(model, max_batch=7)
        counted = CountingModel(model)
        compiled = call(counted, max_batch=7, compile={"backend": "eager"})
        torch.testing.assert_close(compiled, eager, msg=name)
        sizes = set()
        counted.count = lambda z, sizes=sizes: sizes.add(z.shape[0])
        call(counted, max_batch=7, compile={"backend": "eager"})
        assert len(sizes - {3}) == 1, (name, sizes)  # the clean forward of 3, then one padded chunk shape
    with pytest.raises(TypeError, match="compile"):
        A.rise(model, x, 1, n_masks=4, compile="yes")


def test_integer_token_ids_with_a_padding_baseline():
    """Token ids ``[B, T]``: feature ablation replaces a token by the padding id, and each token's value
    is the drop of the target logit, the same as ablating the token's embedding by hand."""
    torch.manual_seed(15)
    emb, fc = torch.nn.Embedding(12, 4), torch.nn.Linear(4, 3)
    model = lambda ids: fc(emb(ids).mean(1))  # noqa: E731
    ids = torch.randint(1, 12, (3, 5), generator=torch.Generator().manual_seed(16))
    pad = torch.tensor([0, 0, 0, 0, 11])
    attr = A.feature_ablation(model, ids, 2, baselines=pad)
    with torch.no_grad():
        clean = model(ids)[:, 2]
        for t in range(5):
            ablated = ids.clone()
            ablated[:, t] = pad[t]
            assert torch.allclose(attr[:, t], clean - model(ablated)[:, 2], atol=1e-6)
    assert attr.dtype == torch.float32 and attr.abs().sum() > 0
    assert torch.equal(A.occlusion(model, ids, 2, sliding_window_shapes=(1,), baselines=pad), attr)
    with pytest.raises(ValueError, match="whole number"):
        A.occlusion(model, ids, 2, sliding_window_shapes=(1,), baselines="mean")
