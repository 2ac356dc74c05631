"""The random-logit test: its SSIM against scikit-image (what Quantus 0.6 calls), the metric against a
loop over the examples, the seeded off-target draws, chunking, and bad input. Equality with
``quantus.RandomLogit`` is in tests/integrations/test_quantus_more.py."""
import warnings

import numpy as np
import pytest
import torch

import fastattr
from fastattr.metrics import random_logit
from fastattr.metrics.randomisation import ssim
from tests.integrations.models import cnn, digits
from tests.models import rand

skimage_metrics = pytest.importorskip("skimage.metrics")


def skimage_ssim(a, b, win_size=None):
    """``quantus.similarity_func.ssim`` for one pair: the data range of the pair, 1-D arrays."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    both = np.concatenate([a, b])
    return skimage_metrics.structural_similarity(a, b, win_size=win_size, data_range=float(both.max() - both.min()))


@pytest.mark.parametrize("shape,win", [((5, 7), 7), ((4, 8), None), ((3, 64), 7), ((2, 3, 8, 8), 5), ((3, 10), 3)])
def test_ssim_equals_scikit_image(shape, win):
    a = rand(*shape, seed=1)
    b = 0.7 * a + 0.5 * rand(*shape, seed=2) + 0.3
    kw = {} if win is None else {"win_size": win}
    ours = ssim(a, b, **kw)
    theirs = [skimage_ssim(a[i], b[i], win) for i in range(shape[0])]
    assert ours.dtype == torch.float64 and ours.shape == (shape[0],)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ssim(a, a), torch.ones(shape[0], dtype=torch.float64))
    torch.testing.assert_close(ssim(a.float(), b.float(), **kw), ours, rtol=1e-6, atol=1e-6)


def test_ssim_of_two_equal_constants_is_nan_as_in_scikit_image():
    a = torch.ones(1, 9, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isnan(skimage_ssim(a[0], a[0]))
    assert ssim(a, a).isnan().all()


def off_classes(t, k, seed):
    draw = torch.randint(0, k - 1, t.shape, generator=torch.Generator().manual_seed(seed))
    return draw + (draw >= t).long()


@pytest.mark.parametrize("num_classes,max_batch", [(None, None), (10, 1), (4, 3)])
def test_equals_the_loop_over_examples(num_classes, max_batch):
    x, _ = digits(7)
    model = cnn()
    t = torch.tensor([0, 3, 1, 2, 3, 0, 1])
    ours = random_logit(model, x, fastattr.saliency, t, num_classes=num_classes, generator=5, max_batch=max_batch)
    off = off_classes(t, num_classes or 10, 5)
    assert (off != t).all() and (off < (num_classes or 10)).all()
    for i in range(7):
        e_t = fastattr.saliency(model, x[i:i + 1], t[i:i + 1])
        e_o = fastattr.saliency(model, x[i:i + 1], off[i:i + 1])
        assert ours[i].item() == pytest.approx(skimage_ssim(e_t, e_o), rel=1e-9, abs=1e-12)
    assert ours.dtype == torch.float64 and (ours < 1).all()


def test_draws_are_seeded_uniform_over_the_other_classes_and_replayable():
    x = rand(400, 12, seed=3)
    model = torch.nn.Sequential(torch.nn.Linear(12, 5)).double().eval()
    seen = []

    def explain(m, z, t):
        seen.append(t.clone())
        return z * (t[:, None] + 1)

    t = torch.arange(400) % 5
    first = random_logit(model, x, explain, t, generator=1, attributions=explain(model, x, t))
    off = torch.cat(seen[1:])
    torch.testing.assert_close(off, off_classes(t, 5, 1))
    assert (off != t).all() and set(off[t == 2].tolist()) == {0, 1, 3, 4}
    torch.testing.assert_close(random_logit(model, x, explain, t, generator=1), first)
    assert not torch.equal(random_logit(model, x, explain, t, generator=2), first)
    replay = random_logit(model, x, explain, t, classes=off.numpy())
    torch.testing.assert_close(replay, first)


def test_one_explain_call_per_chunk_and_class_set():
    x, y = digits(5)
    calls = []

    def explain(m, z, t):
        calls.append(len(z))
        return fastattr.saliency(m, z, t)

    full = random_logit(cnn(), x, explain, y, max_batch=2)
    assert calls == [2, 2, 1, 2, 2, 1]  # the targets, then the off-target classes
    calls.clear()
    given = random_logit(cnn(), x, explain, y, attributions=fastattr.saliency(cnn(), x, y))
    assert calls == [5]
    torch.testing.assert_close(given, full)
    torch.testing.assert_close(random_logit(cnn(), x, "saliency", y), full)


def test_a_class_blind_explanation_scores_one_and_options():
    x, y = digits(4)
    blind = random_logit(cnn(), x, lambda m, z, t: z * 2 - 1, y)
    torch.testing.assert_close(blind, torch.ones(4, dtype=torch.float64))

    def cosine(a, b):
        return torch.nn.functional.cosine_similarity(a, b, dim=1)

    off = off_classes(y, 10, 0)
    e_t, e_o = fastattr.input_x_gradient(cnn(), x, y), fastattr.input_x_gradient(cnn(), x, off)
    got = random_logit(cnn(), x, fastattr.input_x_gradient, y, similarity=cosine)
    torch.testing.assert_close(got, cosine(e_t.flatten(1), e_o.flatten(1)))
    absmax = random_logit(cnn(), x, fastattr.input_x_gradient, y, preprocess="abs_max")
    norm = [e.abs().flatten(1) / e.abs().flatten(1).amax(1, keepdim=True) for e in (e_t, e_o)]
    torch.testing.assert_close(absmax, ssim(*norm))


def test_bad_input_is_named():
    x, y = digits(3)
    model = cnn()
    a = fastattr.saliency(model, x, y)
    cases = [
        (dict(explain=lambda m, z, t: z[:, :, :4], attributions=a), ValueError, "per example but explain returns"),
        (dict(explain=lambda m, z, t: z.flatten(1)[:, :3]), ValueError, "at least win_size"),
        (dict(explain=lambda m, z, t: z[:1]), ValueError, "explain returned"),
        (dict(explain=lambda m, z, t: z.sum()), ValueError, "explain returned"),
        (dict(attributions=a[:, :, :4]), ValueError, "attributions has"),
        (dict(attributions=a[:2]), ValueError, "attributions must be"),
        (dict(attributions=a.masked_fill(a > a.median(), float("nan"))), ValueError, "attributions contains NaN"),
        (dict(explain=lambda m, z, t: z / 0 - z / 0), ValueError, "explain returned NaN"),
        (dict(classes=y), ValueError, "classes must be outputs"),
        (dict(classes=torch.tensor([11, 0, 0])), ValueError, "classes must be outputs"),
        (dict(classes=torch.tensor([1.0, 2.0, 3.0])), ValueError, "classes must hold"),
        (dict(classes=torch.tensor([1, 2])), ValueError, "classes must hold"),
        (dict(num_classes=11), ValueError, "num_classes"),
        (dict(num_classes=1), ValueError, "num_classes"),
        (dict(num_classes=2.5), ValueError, "num_classes"),
        (dict(num_classes=2, target=torch.tensor([0, 1, 5])), ValueError, "below num_classes"),
        (dict(similarity="pearson"), ValueError, "similarity"),
        (dict(similarity=lambda u, v: ssim(u, v, win_size=4)), ValueError, "win_size"),
        (dict(explain="no_such_method"), ValueError, "unknown explain method"),
        (dict(explain=3), TypeError, "explain must be"),
        (dict(preprocess="max"), ValueError, "preprocess"),
        (dict(generator="seed"), TypeError, "generator"),
        (dict(target=torch.tensor([0, 10, 1])), ValueError, "target out of range"),
    ]
    for kw, exc, words in cases:
        kw = {"explain": fastattr.saliency, "target": y, **kw}
        with pytest.raises(exc, match=words):
            random_logit(model, x, kw.pop("explain"), kw.pop("target"), **kw)
    with pytest.raises(ValueError, match="at least win_size"):
        ssim(torch.ones(2, 5), torch.ones(2, 5))
    with pytest.raises(ValueError, match="one shape"):
        ssim(torch.ones(2, 8), torch.ones(2, 9))


def test_a_dict_of_methods_shares_the_draws_and_equals_each_alone():
    x, _ = digits(7)
    model = cnn()
    t = torch.tensor([0, 3, 1, 2, 3, 0, 1])
    methods = {"saliency": fastattr.saliency, "ixg": "input_x_gradient",
               "ig": lambda m, z, tt: fastattr.integrated_gradients(m, z, tt, n_steps=3)}
    calls = []
    handle = model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    try:
        shared = random_logit(model, x, methods, t, generator=5, max_batch=4)
        n_shared = len(calls)
        calls.clear()
        alone = {name: random_logit(model, x, fn, t, generator=torch.Generator().manual_seed(5), max_batch=4)
                 for name, fn in methods.items()}
        n_alone = len(calls)
    finally:
        handle.remove()
    assert list(shared) == list(methods)
    for name in methods:
        torch.testing.assert_close(shared[name], alone[name], rtol=0, atol=0)
    assert n_alone - n_shared == (len(methods) - 1) * 2  # the target check: one forward per chunk of 4
    given = random_logit(model, x, methods, t, generator=5, attributions={"ixg": fastattr.input_x_gradient(model, x, t)})
    torch.testing.assert_close(given["ixg"], shared["ixg"], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"attributions\['ixg'\] has \(1, 4, 8\) per example but explain\['ixg'\]"):
        random_logit(model, x, methods, t, attributions={"ixg": x[:, :, :4]})
    with pytest.raises(ValueError, match=r"explain\['bad'\] returned NaN"):
        random_logit(model, x, {"saliency": "saliency", "bad": lambda m, z, tt: z / 0 - z / 0}, t)
    with pytest.raises(TypeError, match="attributions must be a dict"):
        random_logit(model, x, methods, t, attributions=x)
