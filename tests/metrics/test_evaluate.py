"""evaluate() with the ranked-removal and SOP-error metrics: the same values as each metric on its own,
shared passes counted exactly, compile, and bad input."""
import pytest
import torch

import fastattr
import fastattr.metrics as M
from fastattr.metrics.stability import KINDS
from fastattr.metrics.evaluate import CountingModel
from tests.models import rand, small_cnn

STABILITY = {f"relative_{kind}_stability" for kind in KINDS}  # relative_stability's three values


def _case():
    model = small_cnn()
    x = rand(2, 3, 8, 8, seed=81)
    y = torch.tensor([1, 4])
    attrs = {"saliency": fastattr.saliency(model, x, y).sum(1), "random": rand(2, 8, 8, seed=82),
             "flat": torch.zeros(2, 8, 8, dtype=torch.float64)}
    return model, x, y, attrs


def test_evaluate_matches_each_metric():
    model, x, y, attrs = _case()
    metrics = ["deletion", "insertion", "mdrs", "aupc", "morf", "lerf", "deletion_error", "insertion_error",
               "sensitivity_n", "faithfulness_correlation"]
    kw = dict(patch_size=2, baseline="uniform", generator=6)
    with pytest.warns(RuntimeWarning, match=r"sensitivity_n\[flat\]: .* examples \[0, 1\]"):
        ev = fastattr.evaluate(model, x, y, attributions=attrs, metrics=metrics, step=3, fractions=[0.2, 0.5],
                               n_subsets=20, ns=[2, 8], max_exhaustive=3, **kw)
    for name, a in attrs.items():
        auc, curve, frac = M.deletion(model, x, a, y, step=3, curves=True, **kw)
        torch.testing.assert_close(ev["deletion"][name], auc)
        torch.testing.assert_close(ev.curves["deletion"][name], curve)
        torch.testing.assert_close(ev.fractions["deletion"], frac)
        torch.testing.assert_close(ev["insertion"][name], M.insertion(model, x, a, y, step=3, **kw))
        torch.testing.assert_close(ev["mdrs"][name], M.mdrs(model, x, a, y, **kw))
        value, curve, removed = M.aupc(model, x, a, y, curves=True, **kw)
        torch.testing.assert_close(ev.fractions["aupc"], removed)
        torch.testing.assert_close(ev["aupc"][name], value)
        torch.testing.assert_close(ev.curves["aupc"][name], curve)
        for metric, fn in (("morf", M.morf), ("lerf", M.lerf)):
            value, drops, _ = fn(model, x, a, y, fractions=[0.2, 0.5], curves=True, **kw)
            torch.testing.assert_close(ev[metric][name], value)
            torch.testing.assert_close(ev.curves[metric][name], drops)
        for metric, fn in (("deletion_error", M.deletion_error), ("insertion_error", M.insertion_error)):
            expected = fn(model, x, a, y, n_subsets=20, max_exhaustive=3, **kw)
            torch.testing.assert_close(ev[metric][name], expected)
        # each family of random metrics starts from its own copy of the generator
        torch.testing.assert_close(ev["sensitivity_n"][name],
                                   M.sensitivity_n(model, x, a, y, ns=[2, 8], n_subsets=20, generator=6,
                                                   baseline="uniform"), equal_nan=True)  # NaN: the flat map
    assert set(ev.values) == set(metrics) and set(M.EVALUATE_METRICS) <= set(M.BETTER) <= set(M.__all__) | STABILITY


def test_mdrs_and_aupc_share_the_deletion_pass():
    model, x, y, attrs = _case()
    ev = fastattr.evaluate(model, x, y, attributions=attrs, metrics=["deletion", "mdrs", "aupc"], step=1,
                           patch_size=2)
    # one forward of x and one of the baseline (the curves' two ends, 0 and 16 segments removed, for
    # every method), then per method one deletion pass over 1..15 segments
    assert ev.forward_inputs == 2 + 2 + len(attrs) * 2 * 15
    separate = CountingModel(model)
    for a in attrs.values():
        M.deletion(separate, x, a, y, step=1, patch_size=2)
        M.mdrs(separate, x, a, y, patch_size=2)
        M.aupc(separate, x, a, y, patch_size=2)
    assert separate.inputs > 2 * ev.forward_inputs
    # MoRF's removal counts join the deletion pass: {0, 4, 8, 12, 16} ∪ {0, 4, 8, 10}, ends shared
    ev = fastattr.evaluate(model, x, y, attributions=attrs, metrics=["deletion", "morf"], step=4,
                           fractions=[0.25, 0.5, 0.6], patch_size=2)
    assert ev.forward_inputs == 2 + 2 + len(attrs) * 2 * 4
    # the SOP errors share their subsets across methods: 15 subsets once, f(x) from the clean forward;
    # insertion adds its reference f(x')
    ev = fastattr.evaluate(model, x, y, attributions=attrs, metrics=["deletion_error"], patch_size=4)
    assert ev.forward_inputs == 2 + 2 * 15
    ev = fastattr.evaluate(model, x, y, attributions=attrs, metrics=["insertion_error"], patch_size=4)
    assert ev.forward_inputs == 2 + 2 * 16


def test_evaluate_compiled_runs_fixed_chunks():
    model, x, y, attrs = _case()
    kw = dict(attributions=attrs, metrics=["deletion", "mdrs", "lerf"], patch_size=2, max_batch=5)
    plain = fastattr.evaluate(model, x, y, **kw)
    ev = fastattr.evaluate(model, x, y, compile={"backend": "eager"}, **kw)
    for metric in ("deletion", "mdrs", "lerf"):
        for name in attrs:
            torch.testing.assert_close(ev[metric][name], plain[metric][name])
    # after the forwards of x and of the baseline (2 inputs each) every call carries one padded chunk
    # of 4 (2 examples x 2 steps)
    assert ev.forward_inputs - 4 == 4 * (ev.forward_calls - 2)
    assert ev.forward_inputs > plain.forward_inputs


def test_evaluate_bad_input():
    model, x, y, attrs = _case()
    with pytest.raises(ValueError, match="segments of shape"):
        fastattr.evaluate(model, x, y, attributions=attrs, metrics=["mdrs"],
                          segments=torch.zeros(7, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="fractions"):
        fastattr.evaluate(model, x, y, attributions=attrs, metrics=["lerf"], fractions=[1.2])
    with pytest.raises(ValueError, match="larger than the number of features"):
        fastattr.evaluate(model, x, y, attributions=attrs, metrics=["insertion"], patch_size=4, step=5)


def test_evaluate_reader_and_gaussian_infidelity_match_each_metric():
    """``score=`` reaches every metric; Gaussian infidelity (with rescaling) runs one set of noisy passes
    for all methods and equals :func:`infidelity` on its own."""
    model, x, y, attrs = _case()
    attrs = {k: v for k, v in attrs.items() if k != "flat"}
    kw = dict(n_subsets=12, generator=3)
    ev = fastattr.evaluate(model, x, y, attributions=attrs, score="log_probability", step=4, ns=[4, 20],
                           metrics=["deletion", "mdrs", "faithfulness_correlation", "sensitivity_n",
                                    "deletion_error"], patch_size=2, **kw)
    for name, a in attrs.items():
        torch.testing.assert_close(ev["deletion"][name], M.deletion(model, x, a, y, step=4, patch_size=2,
                                                                    score="log_probability"))
        torch.testing.assert_close(ev["mdrs"][name], M.mdrs(model, x, a, y, patch_size=2))
        torch.testing.assert_close(ev["faithfulness_correlation"][name], M.faithfulness_correlation(
            model, x, a, y, score="log_probability", **kw))
        torch.testing.assert_close(ev["sensitivity_n"][name], M.sensitivity_n(
            model, x, a, y, ns=[4, 20], score="log_probability", **kw))
        torch.testing.assert_close(ev["deletion_error"][name], M.deletion_error(
            model, x, a, y, patch_size=2, score="log_probability", n_subsets=12, generator=3))
    assert not torch.allclose(ev["deletion"]["saliency"], M.deletion(model, x, attrs["saliency"], y, step=4,
                                                                     patch_size=2))
    ev = fastattr.evaluate(model, x, y, attributions=attrs, infidelity="gaussian", noise_std=0.2,
                           metrics=["infidelity", "faithfulness_correlation"], normalize=True, **kw)
    for name, a in attrs.items():
        torch.testing.assert_close(ev["infidelity"][name], M.infidelity(
            model, x, a, y, perturbation="gaussian", noise_std=0.2, normalize=True, **kw))
    assert ev.forward_inputs == 2 + 2 * 12 + 2 * 12  # clean; the subset passes; the Gaussian passes
    with pytest.raises(ValueError, match="infidelity must be"):
        fastattr.evaluate(model, x, y, attributions=attrs, infidelity="blur")
    with pytest.raises(ValueError, match="score must be"):
        fastattr.evaluate(model, x, y, attributions=attrs, score="softmax")


def test_evaluate_progress_bar_counts_the_model_inputs(capsys):
    pytest.importorskip("tqdm")
    model, x, y, attrs = _case()
    ev = fastattr.evaluate(model, x, y, attributions=attrs, metrics=["deletion", "faithfulness_correlation"],
                           step=16, n_subsets=5, progress=True)
    err = capsys.readouterr().err
    assert "evaluate" in err and f"{ev.forward_inputs} inputs" in err
    quiet = fastattr.evaluate(model, x, y, attributions=attrs, metrics=["deletion"], step=16)
    assert quiet.forward_inputs > 0 and "evaluate" not in capsys.readouterr().err
    with pytest.raises(TypeError, match="progress"):
        fastattr.evaluate(model, x, y, attributions=attrs, progress="yes")


def test_to_pandas_keeps_the_n_index_for_one_n():
    pd = pytest.importorskip("pandas")
    model, x = small_cnn(), rand(2, 3, 8, 8, seed=44)
    ev = fastattr.evaluate(model, x, 1, attributions={"a": rand(2, 8, 8, seed=45)}, metrics=["sensitivity_n"],
                           ns=[6], n_subsets=8)
    table = ev.to_pandas()
    assert isinstance(table, pd.DataFrame) and table["n_index"].tolist() == [0, 0]
