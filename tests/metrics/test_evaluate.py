"""evaluate() with the ranked-removal and SOP-error metrics: the same values as each metric on its own,
shared passes counted exactly, compile, and bad input."""
import pytest
import torch

import fastattr
import fastattr.metrics as M
from fastattr.metrics.stability import KINDS
from fastattr.metrics.evaluate import LOCALISATION_METRICS, ROAD_METRICS, CountingModel
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
    assert set(ev.values) == set(metrics)
    assert set(M.EVALUATE_METRICS) <= set(M.BETTER) <= set(M.__all__) | STABILITY | set(ROAD_METRICS)


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


def _digits_case():
    from tests.integrations.models import cnn, digits

    x, _ = digits(4, offset=10)
    model = cnn()
    y = model(x).argmax(1)
    explain = {"saliency": "saliency", "ixg": fastattr.input_x_gradient,
               "ig": lambda m, z, t: fastattr.integrated_gradients(m, z, t, n_steps=3)}
    attrs = {"saliency": fastattr.saliency(model, x, y), "ixg": fastattr.input_x_gradient(model, x, y),
             "ig": fastattr.integrated_gradients(model, x, y, n_steps=3)}
    return model, x, y, explain, attrs


def test_evaluate_new_metrics_equal_each_metric_alone():
    """Sparseness, complexity, random logit, the three relative stabilities and model randomisation:
    evaluate's values are each metric's own on the same seed, the maps given are e(x), and every
    forward (the explain calls' and the randomised copy's included) is counted."""
    model, x, y, explain, attrs = _digits_case()
    metrics = ["sparseness", "complexity", "random_logit", *STABILITY, "model_randomisation", "deletion"]
    kwargs = {"relative_stability": {"n_samples": 4}, "complexity": {"eps": 1e-12},
              "model_randomisation": {"mode": "independent"}}
    gen = torch.Generator().manual_seed(11)
    state = gen.get_state()
    forwards = []
    handle = model.register_forward_pre_hook(lambda m, args: forwards.append(args[0].shape[0]))
    try:
        ev = fastattr.evaluate(model, x, y, attributions=attrs, explain=explain, metrics=metrics,
                               metric_kwargs=kwargs, generator=gen, max_batch=8)
    finally:
        handle.remove()
    assert torch.equal(gen.get_state(), state)  # evaluate draws from copies
    assert ev.forward_calls == len(forwards) and ev.forward_inputs == sum(forwards)
    assert set(ev.values) == set(metrics)
    seeded = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    exact = dict(rtol=0, atol=0, equal_nan=True)
    for name, a in attrs.items():
        torch.testing.assert_close(ev["sparseness"][name], M.sparseness(model, x, a, y), **exact)
        torch.testing.assert_close(ev["complexity"][name], M.complexity(model, x, a, y, eps=1e-12), **exact)
        torch.testing.assert_close(ev["random_logit"][name],
                                   M.random_logit(model, x, explain[name], y, generator=seeded(), max_batch=8), **exact)
        stability = M.relative_stability(model, x, explain[name], y, n_samples=4, generator=seeded(), max_batch=8)
        for kind in KINDS:
            torch.testing.assert_close(ev[f"relative_{kind}_stability"][name], stability[kind], **exact)
        layers = M.model_randomisation(model, x, explain[name], y, mode="independent", generator=seeded(),
                                       max_batch=8)
        curve = torch.stack(list(layers.values()), 1)
        torch.testing.assert_close(ev.curves["model_randomisation"][name], curve, **exact)
        torch.testing.assert_close(ev["model_randomisation"][name], curve.mean(1), **exact)
        assert ev.layers == list(layers) == ["8", "4", "1", "0"]
    assert ev.fractions["model_randomisation"].tolist() == [0, 1, 2, 3]
    assert all(torch.isfinite(ev[m][n]).any() for m in metrics for n in attrs)
    assert (ev["sparseness"]["saliency"] != ev["sparseness"]["ig"]).all()


def test_evaluate_runs_the_stability_kinds_with_the_same_options_as_one_call(monkeypatch):
    import importlib

    module = importlib.import_module("fastattr.metrics.evaluate")  # the module, not the function it exports
    model, x, y, explain, attrs = _digits_case()
    calls = []

    def counted(*args, **kw):
        calls.append(kw["kinds"])
        return M.relative_stability(*args, **kw)

    monkeypatch.setattr(module, "relative_stability", counted)
    kw = dict(attributions=attrs, explain=explain, metrics=sorted(STABILITY), generator=2)
    ev = fastattr.evaluate(model, x, y, metric_kwargs={"relative_input_stability": {"n_samples": 3},
                                                       "relative_output_stability": {"n_samples": 3},
                                                       "relative_representation_stability": {"n_samples": 3}}, **kw)
    assert calls == [["input", "output", "representation"]]
    calls.clear()
    ev2 = fastattr.evaluate(model, x, y, metric_kwargs={"relative_stability": {"n_samples": 3}}, **kw)
    assert calls == [["input", "output", "representation"]]
    calls.clear()
    split = fastattr.evaluate(model, x, y, metric_kwargs={"relative_stability": {"n_samples": 3},
                                                          "relative_output_stability": {"radius": 0.1}}, **kw)
    assert calls == [["input", "representation"], ["output"]]
    for metric in STABILITY:
        for name in attrs:
            torch.testing.assert_close(ev[metric][name], ev2[metric][name], rtol=0, atol=0, equal_nan=True)
            if metric != "relative_output_stability":
                torch.testing.assert_close(split[metric][name], ev[metric][name], rtol=0, atol=0, equal_nan=True)
    alone = M.relative_stability(model, x, explain["ig"], y, kinds="output", n_samples=3, radius=0.1, generator=2)
    torch.testing.assert_close(split["relative_output_stability"]["ig"], alone["output"], rtol=0, atol=0, equal_nan=True)


def test_evaluate_explain_and_metric_kwargs_errors():
    model, x, y, explain, attrs = _digits_case()
    run = lambda **kw: fastattr.evaluate(model, x, y, attributions=attrs, **kw)  # noqa: E731
    with pytest.raises(ValueError, match=r"random_logit explain the inputs again: pass explain=.* none for saliency, "
                                         r"ixg, ig"):
        run(metrics=["random_logit"])
    with pytest.raises(ValueError, match=r"model_randomisation .* pass explain=.* none for ig$"):
        run(metrics=["sparseness", "model_randomisation"], explain={"saliency": "saliency", "ixg": "input_x_gradient"})
    with pytest.raises(TypeError, match="explain must be a dict"):
        run(metrics=["random_logit"], explain=fastattr.saliency)
    with pytest.raises(ValueError, match=r"explain has methods \['grad_cam'\] that attributions does not"):
        run(metrics=["random_logit"], explain={**explain, "grad_cam": "grad_cam"})
    with pytest.raises(ValueError, match="metric_kwargs names an unknown metric 'stability'"):
        run(metrics=["sparseness"], metric_kwargs={"stability": {}})
    with pytest.raises(ValueError, match=r"metric_kwargs\['deletion'\]: evaluate computes deletion from passes shared"):
        run(metrics=["deletion"], metric_kwargs={"deletion": {"step": 2}})
    with pytest.raises(ValueError, match=r"metric_kwargs\['relative_input_stability'\] has keyword\(s\) samples that "
                                         r"relative_stability does not take"):
        run(metrics=["relative_input_stability"], explain=explain, metric_kwargs={"relative_input_stability": {"samples": 3}})
    with pytest.raises(ValueError, match=r"metric_kwargs\['random_logit'\] sets generator, which evaluate sets itself"):
        run(metrics=["random_logit"], explain=explain, metric_kwargs={"random_logit": {"generator": 1}})
    with pytest.raises(TypeError, match=r"metric_kwargs\['sparseness'\] must be a dict"):
        run(metrics=["sparseness"], metric_kwargs={"sparseness": 1e-7})
    with pytest.raises(TypeError, match="metric_kwargs must be a dict"):
        run(metrics=["sparseness"], metric_kwargs=[("sparseness", {})])
    with pytest.raises(ValueError, match=r"attributions\['saliency'\] has \(8, 8\) per example but explain\['saliency'\]"):
        fastattr.evaluate(model, x, y, attributions={"saliency": attrs["saliency"].sum(1)},
                          explain={"saliency": "saliency"}, metrics=["random_logit"])
    # options of metrics not requested are ignored; explain is not needed without its metrics
    ev = run(metrics=["sparseness"], metric_kwargs={"relative_stability": {"n_samples": 3}})
    assert set(ev.values) == {"sparseness"}


def test_evaluate_iba_by_name_and_the_localisation_metrics():
    """``explain={"iba": "iba"}`` with its layer and statistics in ``method_kwargs`` gives what IBA as an
    explain function gives each metric alone; the localisation metrics compare every map with ``boxes``."""
    pytest.importorskip("sklearn")
    from functools import partial

    from fastattr.zoo import load_digits, load_digits_cnn

    model = load_digits_cnn()
    x, _ = load_digits("test", 3)
    y = model(x).argmax(1)
    stats = fastattr.iba_statistics(model, "net.2", load_digits("train", 200)[0])
    options = {"layer": "net.2", "statistics": stats, "generator": 5}
    heat = fastattr.iba(model, x, y, **options)
    sal = fastattr.saliency(model, x, y).sum(1)
    boxes = torch.tensor([[1, 0, 7, 8], [2, 1, 6, 7], [0, 0, 4, 8]])
    metrics = ["insertion", "random_logit", "ehr", "pointing_game", "iou"]
    ev = fastattr.evaluate(model, x, y, attributions={"iba": heat, "saliency": sal}, metrics=metrics,
                           explain={"iba": "iba", "saliency": lambda m, z, t: fastattr.saliency(m, z, t).sum(1)},
                           method_kwargs={"iba": options},
                           boxes=boxes, generator=3, max_batch=64)
    alone = M.random_logit(model, x, partial(fastattr.iba, **options), y, attributions=heat, generator=3)
    torch.testing.assert_close(ev["random_logit"]["iba"], alone)
    torch.testing.assert_close(ev["insertion"]["iba"], M.insertion(model, x, heat, y))
    for name, a in (("iba", heat), ("saliency", sal)):
        for metric in ("ehr", "pointing_game", "iou"):
            torch.testing.assert_close(ev[metric][name], getattr(M, metric)(None, x, a, boxes=boxes))
    assert M.BETTER["ehr"] == "higher" and set(LOCALISATION_METRICS) <= set(M.EVALUATE_METRICS)
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 2:6] = True
    by_mask = fastattr.evaluate(model, x, y, attributions={"iba": heat}, metrics=["ehr"],
                                metric_kwargs={"ehr": {"masks": masks}})
    torch.testing.assert_close(by_mask["ehr"]["iba"], M.ehr(None, x, heat, masks=masks))

    run = lambda **kw: fastattr.evaluate(model, x, y, attributions={"iba": heat}, **kw)  # noqa: E731
    with pytest.raises(ValueError, match=r"explain method 'iba' needs layer and statistics: .*method_kwargs\['iba'\]"):
        run(metrics=["random_logit"], explain={"iba": "iba"})
    with pytest.raises(ValueError, match=r"method_kwargs has methods \['ig'\] that explain does not"):
        run(metrics=["random_logit"], explain={"iba": "iba"}, method_kwargs={"iba": options, "ig": {}})
    with pytest.raises(ValueError, match="method_kwargs are the keywords of the explain methods: pass explain="):
        run(metrics=["insertion"], method_kwargs={"iba": options})
    with pytest.raises(ValueError, match=r"ehr compares each map with a known region: pass boxes="):
        run(metrics=["ehr"])


def test_sea_nn_by_name_in_the_metrics_that_explain_again():
    """``explain={"sea_nn": "sea_nn"}`` with its keywords in ``method_kwargs`` gives the random-logit value of
    the metric called with fastattr.sea_nn itself."""
    from fastattr.zoo import load_digits, load_digits_cnn

    model = load_digits_cnn()
    x, y = load_digits("test", 3)
    options = {"methods": ["saliency", "integrated_gradients"], "segments": None, "grid": 8, "hidden": (8, 4),
               "epochs": 3, "percentiles": (80,), "generator": 2}
    heat = fastattr.sea_nn(model, x, y, **options)
    ev = fastattr.evaluate(model, x, y, attributions={"sea_nn": heat}, explain={"sea_nn": "sea_nn"},
                           method_kwargs={"sea_nn": options}, metrics=["random_logit"], generator=0)
    direct = fastattr.metrics.random_logit(model, x, lambda m, z, t: fastattr.sea_nn(m, z, t, **options), y,
                                           attributions=heat, generator=0)
    torch.testing.assert_close(ev["random_logit"]["sea_nn"], direct)
    with pytest.raises(ValueError, match="needs methods"):
        fastattr.evaluate(model, x, y, attributions={"sea_nn": heat}, explain={"sea_nn": "sea_nn"},
                          method_kwargs={"sea_nn": {"segments": None}}, metrics=["random_logit"])
