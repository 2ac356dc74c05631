"""fastattr report / fastattr bench: outputs on the embedded default, a user's own model and
data, and one-line errors a person can act on."""
import contextlib
import json
import re
import textwrap

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

import fastattr  # noqa: E402
from fastattr.cli import main  # noqa: E402
import math  # noqa: E402

from fastattr.metrics import BETTER  # noqa: E402
from fastattr.metrics.stability import KINDS  # noqa: E402
from fastattr.zoo import load_digits, load_digits_cnn  # noqa: E402
from fastattr.report import ReportError, run_report  # noqa: E402
from fastattr.report.running import GROUPED_METRICS, REPORT_METRICS, SOP_LEFT_OUT, STABILITY_SAMPLES  # noqa: E402


def test_report_on_the_embedded_default(tmp_path):
    result = run_report(n=6, out=tmp_path / "r", progress=False)
    out = tmp_path / "r"
    for name in ("index.html", "heatmaps.png", "curves.png", "sop_groups.png", "results.json", "results.csv"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "results.json").read_text())
    assert set(data["summary"]) == set(REPORT_METRICS) | set(GROUPED_METRICS)
    assert {"random", "integrated_gradients", "grad_cam", "guided_backprop", "iba", "sop"} <= set(data["methods"])
    lo_hi = {"deletion": (0, 1), "insertion": (0, 1), "faithfulness_correlation": (-1, 1),
             "sensitivity_n": (-1, 1), "infidelity": (0, float("inf")), "mdrs": (1, 64), "aupc": (0, 64),
             "morf": (-1, 1), "lerf": (-1, 1), "deletion_error": (0, float("inf")),
             "insertion_error": (0, float("inf")), "sparseness": (0, 1 - 1 / 64), "complexity": (0, math.log(64)),
             "random_logit": (-1, 1), "grouped_deletion": (0, 1), "grouped_insertion": (0, 1)}
    for metric, by_method in data["per_example"].items():
        lo, hi = lo_hi[metric]
        for method, values in by_method.items():
            if method == "sop" and metric in SOP_LEFT_OUT:  # not computed for the SOP row: NaN, null in JSON
                assert values == [None] * 6
                continue
            assert len(values) == 6 and all(lo - 1e-9 <= v <= hi + 1e-9 for v in values), metric
    # A faithful method beats the random control on the trained model.
    s = data["summary"]
    assert s["deletion"]["integrated_gradients"] < s["deletion"]["random"]
    assert s["insertion"]["integrated_gradients"] > s["insertion"]["random"]
    assert s["faithfulness_correlation"]["integrated_gradients"] > s["faithfulness_correlation"]["random"] + 0.3
    page = (out / "index.html").read_text()
    # every input's heat maps (one panel per input and row: the input, then each method), the curves
    assert page.count('<img class="map"') == 6 * (len(result.methods) + 1)
    assert page.count('alt="curves"') == 1 and 'id="metrics"' in page and 'class="best"' in page
    assert data["settings"]["scale_invariant"] is True and data["settings"]["timing_repeats"] >= 3
    rows = (out / "results.csv").read_text().strip().splitlines()
    assert rows[0] == "example,target,method,metric,value"
    assert len(rows) == 1 + 6 * len(result.methods) * (len(REPORT_METRICS) + len(GROUPED_METRICS))
    assert "random logit: the SSIM" in page and "stability" not in page


def test_cli_report_prints_summary(tmp_path, capsys):
    code = main(["report", "--n", "4", "--out", str(tmp_path), "--methods", "saliency,integrated_gradients",
                 "--metrics", "deletion", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "integrated_gradients" in printed and "deletion (lower)" in printed and "index.html" in printed


def test_report_on_a_user_model_and_data(tmp_path, monkeypatch):
    (tmp_path / "usermodel.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def make():
            torch.manual_seed(0)
            return nn.Sequential(nn.Flatten(), nn.Linear(2 * 5 * 5, 3)).eval()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    x = torch.rand(5, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    torch.save({"x": x, "y": torch.tensor([0, 1, 2, 0, 1])}, tmp_path / "data.pt")
    code = main(["report", "--model", "usermodel:make", "--data", str(tmp_path / "data.pt"), "--target", "label",
                 "--methods", "saliency", "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["target"] == [0, 1, 2, 0, 1]


@pytest.mark.parametrize("args,message", [
    (["--model", "no_such_module_xyz:make"], "cannot import model module"),
    (["--model", "fastattr:missing_factory"], "has no attribute"),
    (["--methods", "saliency,telepathy"], "unknown method telepathy"),
    (["--metrics", "accuracy"], "unknown metric accuracy"),
    (["--target", "12"], "out of range"),
    (["--n", "0"], "--n must be a positive integer"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, args, message):
    code = main(["report", "--out", str(tmp_path / "o"), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_error_for_data_of_the_wrong_shape(tmp_path, capsys):
    torch.save(torch.rand(3, 3, 32, 32), tmp_path / "wrong.pt")
    assert main(["report", "--data", str(tmp_path / "wrong.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "does not fit the model" in capsys.readouterr().err


def test_cli_error_for_an_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    assert main(["report", "--out", str(blocker / "report")]) == 2
    assert "cannot write to output folder" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="unknown method"):
        main(["report", "--debug", "--methods", "nope", "--out", str(tmp_path)])


def test_bench_table_and_record(tmp_path):
    from fastattr.bench import sparsemax as bench_sparsemax
    from fastattr.bench import write_results

    table = bench_sparsemax.run((64, 256), repeat=2, block_s=0.01)
    names = [row[0] for row in table.rows]
    assert "fastattr[reference]" in names
    assert all(row[1] > 0 and row[2] > 0 for row in table.rows)
    text = table.render()
    assert "fwd+bwd ms" in text and "sparsemax [64, 256]" in text
    path = write_results([table], tmp_path, "cpu", tag="sparsemax")
    record = json.loads(path.read_text())
    assert record["machine"]["torch_threads"] == torch.get_num_threads()
    assert record["tables"][0]["params"]["shape"] == [64, 256]


def _save(path, obj):
    torch.save(obj, path)
    return str(path)


@pytest.mark.parametrize("make,args,message", [
    (lambda p: (p / "bad.pt").write_bytes(b"not a tensor file") and str(p / "bad.pt"), [], "cannot read --data"),
    (lambda p: _save(p / "none.pt", torch.rand(0, 1, 8, 8)), [], "--data holds no inputs"),
    (lambda p: _save(p / "nan.pt", torch.full((3, 1, 8, 8), float("nan"))), [], "--data contains NaN"),
    (lambda p: _save(p / "lab.pt", (torch.rand(3, 1, 8, 8), torch.tensor([1, 22, 3]))), ["--target", "label"],
     "labels must be in 0..9"),
    (lambda p: _save(p / "few.pt", (torch.rand(3, 1, 8, 8), torch.tensor([1]))), ["--target", "label"],
     "1 labels for 3 inputs"),
    (lambda p: _save(p / "hot.pt", (torch.rand(3, 1, 8, 8), torch.eye(10)[:3])), ["--target", "label"],
     "one integer class index per input"),
    (lambda p: None, ["--device", "meta"], "--device must be cpu or cuda"),
    (lambda p: None, ["--threads", "-1"], "--threads must be a positive integer"),
    (lambda p: None, ["--seed", str(2 ** 40)], "--seed must be an integer in [0, 2^32)"),
    (lambda p: None, ["--methods", ","], "no method named"),
])
def test_cli_data_and_option_errors_are_one_line(tmp_path, capsys, make, args, message):
    data = make(tmp_path)
    code = main(["report", "--n", "3", "--out", str(tmp_path / "o"), "--no-progress", *args,
                 *(["--data", data] if data else [])])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,message", [
    (["--repeat", "0"], "--repeat must be a positive integer"),
    (["--threads", "0"], "--threads must be a positive integer"),
    (["--device", "foo"], "is not a usable device"),
])
def test_bench_option_errors_come_before_any_timing(capsys, args, message):
    assert main(["bench", "sparsemax", *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def test_bench_output_folder_is_checked_first(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("")
    assert main(["bench", "sparsemax", "--out", str(tmp_path / "file.txt" / "x")]) == 2
    captured = capsys.readouterr()
    assert "cannot write to output folder" in captured.err and captured.out == ""


def test_defaults_skip_methods_that_do_not_apply_and_nan_is_json_null(tmp_path):
    """An MLP on flat inputs: the CAM and CD methods are left out of the default list (and said so);
    a constant model's correlations are NaN, written as null, and the best mark skips them."""
    torch.manual_seed(3)
    mlp = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).train()
    x = torch.rand(3, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    result = run_report(model=mlp, data=x, n=3, out=tmp_path / "r", progress=False,
                        metrics=["deletion", "faithfulness_correlation"])
    assert {"grad_cam", "guided_grad_cam", "cd_blocks", "iba", "sop"} <= set(result.skipped)
    assert "saliency" in result.methods and "grad_cam" not in result.methods
    page = (tmp_path / "r" / "index.html").read_text()
    assert "Left out: <code>sop</code> (needs the embedded default model" in page and "Sum-of-Parts groups" not in page
    for chosen in ({"methods": ["saliency", "sop"]}, {"metrics": ["grouped_deletion"]}):
        with pytest.raises(ReportError, match="needs the embedded default model"):
            run_report(model=mlp, data=x, n=3, out=tmp_path / "e", progress=False, **chosen)
    with pytest.raises(ReportError, match="metric ehr compares each map with a known box"):
        run_report(n=2, out=tmp_path / "e", progress=False, metrics=["ehr"])
    assert mlp.training and next(mlp.parameters()).dtype == torch.float32  # left as it was found
    const = torch.nn.Sequential(torch.nn.Linear(12, 3))
    torch.nn.init.zeros_(const[0].weight)
    result = run_report(model=const, data=x, n=3, out=tmp_path / "c", progress=False,
                        methods=["saliency", "random"], metrics=["faithfulness_correlation", "deletion"])
    text = (tmp_path / "c" / "results.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in results.json"))
    assert data["summary"]["faithfulness_correlation"]["saliency"] is None
    assert data["device"] == "cpu" and data["torch_threads"] == torch.get_num_threads()


def test_best_mark_ignores_nan():
    from fastattr.report import best_value

    assert best_value("faithfulness_correlation", {"a": float("nan"), "b": 0.2, "c": 0.6}) == 0.6
    assert best_value("deletion", {"a": float("nan"), "b": 0.2, "c": 0.6}) == 0.2
    assert best_value("deletion", {"a": float("nan")}) is None


def test_seed_reaches_rise_and_no_stale_curves(tmp_path):
    """``--seed`` draws RISE's masks; a re-run without curve metrics removes the earlier curves.png."""
    runs = [run_report(n=2, out=tmp_path / "r", progress=False, methods=["rise"], metrics=["deletion"], seed=s)
            for s in (1, 2)]
    assert (tmp_path / "r" / "curves.png").exists()
    assert runs[0].per_example["deletion"]["rise"] != runs[1].per_example["deletion"]["rise"]
    run_report(n=2, out=tmp_path / "r", progress=False, methods=["saliency"], metrics=["infidelity"])
    assert not (tmp_path / "r" / "curves.png").exists()


def test_scale_invariant_columns_and_the_random_control_on_the_digits(tmp_path):
    """Every column is independent of a map's scale, the random control loses to integrated gradients
    in every column but the SOP deletion error (where, best-scaled, IG's additive model explains the
    changes of random half-image deletions no better than the zero map: measured, 212.8 against 210.0),
    and the page says so."""
    result = run_report(n=32, out=tmp_path / "r", methods=["integrated_gradients", "random"], progress=False)
    s = result.summary
    for metric in result.metrics:
        ig, rnd = s[metric]["integrated_gradients"], s[metric]["random"]
        ig_wins = ig < rnd if BETTER[metric] == "lower" else ig > rnd
        assert ig_wins == (metric != "deletion_error"), (metric, ig, rnd)
    page = (tmp_path / "r" / "index.html").read_text()
    assert "The random control beats <code>integrated_gradients</code> on deletion_error" in page
    x, y = load_digits("test", 4)
    model = load_digits_cnn()
    ig = fastattr.integrated_gradients(model, x, y).sum(1)
    rnd = torch.rand(ig.shape, generator=torch.Generator().manual_seed(0))
    for a in (ig, rnd):
        small = fastattr.evaluate(model, x, y, attributions={"a": a * 0.01}, normalize=True,
                                  metrics=["infidelity", "deletion_error", "insertion_error"])
        large = fastattr.evaluate(model, x, y, attributions={"a": a * 100.0}, normalize=True,
                                  metrics=["infidelity", "deletion_error", "insertion_error"])
        for metric in small.values:
            torch.testing.assert_close(small.values[metric]["a"], large.values[metric]["a"], rtol=1e-5, atol=1e-6)


def test_report_with_the_stability_and_randomisation_metrics(tmp_path):
    """The metrics that explain again, chosen with --metrics: each method (with the report's settings)
    is its own explain function, relative stability draws STABILITY_SAMPLES perturbations, model
    randomisation's per-layer similarities are a curve, and each value is evaluate's on that example."""
    stability = [f"relative_{kind}_stability" for kind in KINDS]
    metrics = [*stability, "model_randomisation", "random_logit", "sparseness"]
    methods = ["saliency", "smoothgrad", "kernel_shap", "random"]
    result = run_report(n=3, out=tmp_path / "r", methods=methods, metrics=metrics, progress=False)
    assert result.metrics == metrics and result.settings["stability_samples"] == STABILITY_SAMPLES
    assert result.settings["randomised_layers"] == ["net.8", "net.6", "net.2", "net.0"]
    assert result.curves["model_randomisation"]["_fractions"] == [0, 1, 2, 3]
    for metric in metrics:
        for method in methods:
            assert len(result.per_example[metric][method]) == 3
    s = result.summary
    assert s["random_logit"]["random"] == 1.0  # the control map ignores the class
    assert s["model_randomisation"]["saliency"] < 0.9 and s["model_randomisation"]["random"] == 1.0
    assert all(not math.isnan(s[m]["saliency"]) for m in ("relative_input_stability", "model_randomisation"))
    page = (tmp_path / "r" / "index.html").read_text()
    assert f"over {STABILITY_SAMPLES} uniform perturbations" in page and "model randomisation: the Spearman" in page
    # the only fastattr op these methods and metrics call is the digits CNN's max pool (core.layer_kernels), on
    # the batches of 2^16 elements and more that smoothgrad's noisy copies and kernel_shap's coalitions make:
    # those two are re-timed on the reference backend, where torch's pool kernel runs
    timed = {k.split(":")[1] for k in result.seconds if k.startswith("backend:")}
    assert timed == {"smoothgrad", "kernel_shap"}
    # example 1's values are evaluate's on that example, the methods seeded by its index
    from fastattr.report import running

    x, _ = load_digits("test", 3)
    model = load_digits_cnn()
    t = model(x).argmax(1)
    maps = {m: running.feature_map(running._attribute(m, model, x, t, 0, 0).detach(), x) for m in methods}
    ev = running._evaluate(model, x[1:2], t[1:2], {m: a[1:2] for m, a in maps.items()}, metrics, seed=0, first=1,
                           generator=1, n_subsets=100)  # the generator of example 1 under seed 0
    for metric in metrics:
        for method in methods:
            assert result.per_example[metric][method][1] == pytest.approx(ev[metric][method].item(), rel=1e-9,
                                                                          nan_ok=True), (metric, method)


def test_report_agg_row_weights_and_fixed_weight_explain(tmp_path):
    """The ``agg`` row is fastattr.aggregate(objective="opt") over the report's gradient methods, one
    example at a time seeded by its index; its weights are in results.json and on the page; the metrics
    that explain again use each example's weights (at the clean input they give the agg map back)."""
    from fastattr import aggregate
    from fastattr.report import running

    metrics = ["deletion", "random_logit", "relative_input_stability"]
    result = run_report(n=3, out=tmp_path / "r", methods=["saliency", "agg"], metrics=metrics, progress=False)
    agg = result.settings["agg"]
    assert agg["objective"] == "opt" and agg["methods"] == list(running.AGG_METHODS)
    w = torch.tensor(agg["weights"], dtype=torch.float64)
    assert w.shape == (3, len(running.AGG_METHODS)) and (w >= 0).all()
    assert torch.allclose(w.sum(1), torch.ones(3, dtype=torch.float64), atol=1e-6)
    assert not torch.allclose(w[0], w[1], atol=1e-3)  # chosen per example
    saved = json.loads((tmp_path / "r" / "results.json").read_text())["settings"]["agg"]
    assert saved["weights"] == agg["weights"]
    assert "mean weights: <code>saliency</code>" in (tmp_path / "r" / "index.html").read_text()

    x, _ = load_digits("test", 3)
    model = load_digits_cnn()
    t = model(x).argmax(1)
    methods = {m: (lambda net, z, tz, _m=m: running._attribute(_m, net, z, tz, 1, 0, 1)) for m in running.AGG_METHODS}
    direct = aggregate(model, x[1:2], t[1:2], methods=methods, objective="opt", generator=1)
    assert torch.allclose(direct.weights[0].double(), w[1], atol=1e-6)
    fixed = running._fixed_agg(direct.weights, 0, 1, 1)(model, x[1:2], t[1:2])
    assert torch.allclose(fixed, direct.attribution, atol=1e-6)
    ev = running._evaluate(model, x[1:2], t[1:2], {"agg": running.feature_map(direct.attribution, x[1:2])}, metrics,
                           seed=0, first=1, generator=1, n_subsets=100, agg_weights=direct.weights)
    for metric in metrics:
        assert result.per_example[metric]["agg"][1] == pytest.approx(ev[metric]["agg"].item(), rel=1e-6), metric


def test_report_sop_and_iba_rows_match_the_models_called_directly(tmp_path):
    """On the default model the ``sop`` row is the zoo SOP's own grouped attribution scored on the SOP model
    (its groups and scores in results.json, drawn on the page), the grouped columns
    score the other maps on the CNN over the same groups, and the ``iba`` row is fastattr.iba at the last
    conv layer with the training digits' statistics, seeded by the example's index."""
    from fastattr.zoo import load_digits_sop

    metrics = ["deletion", "random_logit", "grouped_deletion", "grouped_insertion"]
    result = run_report(n=3, out=tmp_path / "r", methods=["saliency", "iba", "sop"], metrics=metrics, progress=False)
    saved = json.loads((tmp_path / "r" / "results.json").read_text())["settings"]
    assert saved["iba"]["layer"] == "net.2" and saved["sop"]["row"] and saved["sop"]["mask_shape"] == [8, 8]
    x, _ = load_digits("test", 3)
    cnn, sop = load_digits_cnn(), load_digits_sop()
    t = cnn(x).argmax(1)
    stats = fastattr.iba_statistics(cnn, "net.2", load_digits("train")[0])
    sop_explain = lambda m, z, tz: m.explain(z, tz).feature_map()  # noqa: E731
    for i in range(3):
        xi, ti = x[i:i + 1], t[i:i + 1]
        e = sop.explain(xi, ti)
        assert saved["sop"]["masks"][i] == ["".join(str(int(v)) for v in g.flatten().tolist()) for g in e.masks[0]]
        assert saved["sop"]["scores"][i] == pytest.approx(e.scores[0].tolist(), abs=1e-7)
        direct = {"deletion": fastattr.metrics.deletion(sop, xi, e.feature_map(), ti),
                  "random_logit": fastattr.metrics.random_logit(sop, xi, sop_explain, ti, attributions=e.feature_map(),
                                                                generator=i),
                  "grouped_deletion": fastattr.metrics.grouped_deletion(sop, xi, e.scores, ti, groups=e.masks),
                  "grouped_insertion": fastattr.metrics.grouped_insertion(sop, xi, e.scores, ti, groups=e.masks)}
        for metric, value in direct.items():
            assert result.per_example[metric]["sop"][i] == pytest.approx(value.item(), rel=1e-6), metric
        saliency = fastattr.saliency(cnn, xi, ti).sum(1)
        for metric in ("grouped_deletion", "grouped_insertion"):
            value = getattr(fastattr.metrics, metric)(cnn, xi, saliency, ti, groups=e.masks)
            assert result.per_example[metric]["saliency"][i] == pytest.approx(value.item(), rel=1e-6), metric
        options = {"layer": "net.2", "statistics": stats, "generator": i}
        heat = fastattr.iba(cnn, xi, ti, **options)
        ev = fastattr.evaluate(cnn, xi, ti, attributions={"iba": heat}, explain={"iba": "iba"},
                               method_kwargs={"iba": options}, metrics=["deletion", "random_logit"], generator=i)
        for metric in ev.values:
            assert result.per_example[metric]["iba"][i] == pytest.approx(ev[metric]["iba"].item(), rel=1e-6), metric
    page = (tmp_path / "r" / "index.html").read_text()
    assert 'alt="Sum-of-Parts groups"' in page and (tmp_path / "r" / "sop_groups.png").stat().st_size > 0
    assert "<code>sop</code> is the zoo's Sum-of-Parts wrapper" in page and "<code>iba</code> is Information" in page


def test_report_sea_nn_row_matches_sea_nn_called_directly(tmp_path):
    """The ``sea_nn`` row is fastattr.sea_nn over the report's six gradient maps with the report's settings,
    each input's DSF seeded by its index (so a batch and a single input agree); its settings in results.json."""
    from fastattr.report import running

    metrics = ["deletion", "mdrs", "aupc"]
    result = run_report(n=3, out=tmp_path / "r", methods=["saliency", "sea_nn"], metrics=metrics, progress=False)
    saved = json.loads((tmp_path / "r" / "results.json").read_text())["settings"]["sea_nn"]
    assert saved["methods"] == list(running.AGG_METHODS) and saved["hidden"] == [64, 32, 8]
    assert "<code>sea_nn</code> is SEA-NN" in (tmp_path / "r" / "index.html").read_text()
    x, _ = load_digits("test", 3)
    cnn = load_digits_cnn()
    t = cnn(x).argmax(1)
    for i in range(3):
        xi, ti = x[i:i + 1], t[i:i + 1]
        maps = {m: running._attribute(m, cnn, xi, ti, i, 0) for m in running.AGG_METHODS}
        heat = fastattr.sea_nn(cnn, xi, ti, methods=maps, generator=[i], **running.SEA_NN_SETTINGS)
        ev = fastattr.evaluate(cnn, xi, ti, attributions={"sea_nn": heat}, metrics=metrics)
        for metric in metrics:
            assert result.per_example[metric]["sea_nn"][i] == pytest.approx(ev[metric]["sea_nn"].item(), rel=1e-6), \
                metric


def _random_images(path, n=2, side=64, seed=0):
    """``n`` random-content 3×side×side images saved with torch.save; returns the tensor."""
    x = torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))
    torch.save(x, path)
    return x


def _patch_constant(amap: torch.Tensor, side: int) -> bool:
    """Whether a map ``[B, H, W]`` is constant on every side×side patch."""
    blocks = amap.unfold(1, side, side).unfold(2, side, side)
    return bool((blocks == blocks[..., :1, :1]).all())


def test_report_defaults_on_the_digits_are_the_settings_used_before():
    """On the 8×8 digits the chosen settings are those the report used before they scaled with the input:
    feature ablation per element, occlusion's own default window, 2×2 surrogate blocks, and evaluate's
    default features and curve step."""
    from fastattr.report.running import report_defaults

    x, _ = load_digits("test", 3)
    cnn = load_digits_cnn()
    t = cnn(x).argmax(1)
    d = report_defaults(x)
    assert d == {"patch_size": None, "occlusion_window": [2, 2], "occlusion_stride": [1, 1], "surrogate_block": 2,
                 "curve_step": 1, "features": 64, "perturbations": None, "agg_samples": 50, "sea_nn_grid": None}
    window = dict(sliding_window_shapes=(1, *d["occlusion_window"]), strides=(1, *d["occlusion_stride"]))
    assert torch.equal(fastattr.occlusion(cnn, x, t, **window), fastattr.occlusion(cnn, x, t))
    maps = {"saliency": fastattr.saliency(cnn, x, t).sum(1)}
    metrics = ["deletion", "insertion", "mdrs", "aupc", "morf", "lerf"]
    chosen = fastattr.evaluate(cnn, x, t, attributions=maps, metrics=metrics, patch_size=d["patch_size"],
                               step=d["curve_step"])
    before = fastattr.evaluate(cnn, x, t, attributions=maps, metrics=metrics)
    for metric in metrics:
        assert torch.equal(chosen[metric]["saliency"], before[metric]["saliency"]), metric


def test_report_defaults_scale_a_resnet18_on_64px_images(tmp_path, monkeypatch):
    """3×64×64 inputs to the zoo ResNet-18: 4×4 patches (256 features) for feature ablation and the ranked
    metrics, a curve step of about 1%, all recorded in results.json and printed."""
    from fastattr.report.running import report_defaults
    from fastattr.zoo.resnet import resnet18

    (tmp_path / "r18.py").write_text(textwrap.dedent("""
        import torch
        from fastattr.zoo.resnet import resnet18

        def make():
            torch.manual_seed(0)
            return resnet18(num_classes=10)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    x = _random_images(tmp_path / "x.pt", n=2)
    d = report_defaults(x)
    assert d["features"] == (64 // d["patch_size"]) ** 2 == 64 and d["curve_step"] == 1
    assert (d["patch_size"], d["surrogate_block"], d["sea_nn_grid"], d["perturbations"], d["agg_samples"]) == \
        (8, 8, 8, 256, 3)
    chosen = report_defaults(x, {"perturbations": None, "agg_samples": 3, "sea_nn_grid": 4})
    assert (chosen["perturbations"], chosen["agg_samples"], chosen["sea_nn_grid"]) == (None, 3, 4)
    for bad, message in (({"agg_samples": 1}, "agg_samples must be an integer >= 2"),
                         ({"perturbations": 0}, "perturbations must be a positive integer or None"),
                         ({"sea_nn_grid": 65}, "sea_nn_grid (65) is larger than the image side (64)")):
        with pytest.raises(ReportError, match=re.escape(message)):
            report_defaults(x, bad)
    with pytest.raises(ReportError, match="sea_nn_grid needs image inputs"):
        report_defaults(torch.zeros(2, 10), {"sea_nn_grid": 4})
    big = report_defaults(torch.zeros(1, 3, 224, 224))
    assert (big["patch_size"], big["features"], big["curve_step"], big["occlusion_window"], big["surrogate_block"],
            big["sea_nn_grid"]) == (28, 64, 1, [28, 28], 28, 8)
    torch.manual_seed(0)
    result = run_report(model=resnet18(num_classes=10), data=str(tmp_path / "x.pt"), n=1, out=tmp_path / "r",
                        methods=["feature_ablation"], metrics=["deletion"], progress=False)
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert data["settings"]["defaults"] == d and data["settings"]["timed_inputs"] == 1
    assert len(data["mean_curves"]["deletion"]["_fractions"]) == 64 + 1
    assert all(0 <= v <= 1 for v in data["per_example"]["deletion"]["feature_ablation"])
    assert "8x8-pixel patches (64 features, curve step 1)" in (tmp_path / "r" / "index.html").read_text()
    assert result.seconds["method:feature_ablation"] > 0
    code = main(["report", "--model", "r18:make", "--data", str(tmp_path / "x.pt"), "--n", "2", "--methods",
                 "feature_ablation", "--metrics", "deletion", "--defaults", "patch_size=16,curve_step=2",
                 "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 0
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    assert data["settings"]["defaults"]["patch_size"] == 16 and data["settings"]["defaults"]["features"] == 16
    assert data["settings"]["timed_inputs"] == 1  # the backend timings on a fixed slice of 1 input
    assert len(data["mean_curves"]["deletion"]["_fractions"]) == 16 // 2 + 1


def test_report_defaults_overrides_reach_the_methods_and_are_printed(tmp_path, capsys):
    """``defaults=`` changes feature ablation's patches and the curve step, the page and the console say
    so, and the data passed in is left as it was."""
    x = _random_images(tmp_path / "x.pt", n=2, side=8)[:, :1]
    kept = x.clone()
    cnn = load_digits_cnn()
    result = run_report(model=cnn, data=x, n=2, out=tmp_path / "r", methods=["feature_ablation", "occlusion"],
                        metrics=["deletion"], progress=False,
                        defaults={"patch_size": 2, "curve_step": 4, "occlusion_window": 4})
    assert torch.equal(x, kept)
    d = result.settings["defaults"]
    assert (d["patch_size"], d["curve_step"], d["features"], d["occlusion_window"], d["occlusion_stride"]) == \
        (2, 4, 16, [4, 4], [2, 2])
    t = cnn(x).argmax(1)
    from fastattr.core import patch_segments

    ablation = fastattr.feature_ablation(cnn, x, t, feature_mask=patch_segments((8, 8), 2)[None, None])
    per_example = result.per_example["deletion"]["feature_ablation"]
    expected = fastattr.evaluate(cnn, x, t, attributions={"a": ablation.sum(1)}, metrics=["deletion"], patch_size=2,
                                 step=4)["deletion"]["a"]
    assert torch.allclose(torch.tensor(per_example, dtype=torch.float64), expected.double(), atol=1e-6)
    assert len(result.curves["deletion"]["_fractions"]) == 16 // 4 + 1
    from fastattr.report import summary_table

    assert "defaults: feature ablation and the ranked metrics over 2x2-pixel patches (16 features, curve step 4); " \
        "occlusion window 4x4, stride 2x2" in summary_table(result)
    code = main(["report", "--n", "2", "--methods", "saliency", "--metrics", "deletion", "--defaults", "curve_step=2",
                 "--out", str(tmp_path / "c"), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0 and "defaults: feature ablation per element and the ranked metrics per pixel " \
        "(64 features, curve step 2)" in printed


@pytest.mark.parametrize("value,message", [
    ("patch_size=0", "--defaults patch_size must be a positive integer or None, got 0"),
    ("patch_size=9", "--defaults patch_size (9) is larger than the image side (8)"),
    ("colour=3", "--defaults has unknown name colour"),
    ("curve_step=x", "--defaults curve_step must be an integer or 'none', got 'x'"),
    ("curve_step=65", "--defaults curve_step (65) is larger than the number of features (64)"),
    ("curve_step=none", "--defaults curve_step must be a positive integer, got None"),
    ("patch_size", "--defaults takes name=value pairs"),
])
def test_cli_bad_defaults_are_one_line_errors(tmp_path, capsys, value, message):
    code = main(["report", "--n", "2", "--methods", "saliency", "--metrics", "deletion", "--defaults", value,
                 "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_report_bad_defaults_from_python_name_the_argument(tmp_path):
    x = torch.rand(3, 12, generator=torch.Generator().manual_seed(0))
    mlp = torch.nn.Sequential(torch.nn.Linear(12, 3))
    for defaults, message in (([("curve_step", 2)], "--defaults must be a dict"),
                              ({"curve_step": True}, "--defaults curve_step must be a positive integer"),
                              ({"surrogate_block": 2}, "--defaults surrogate_block needs image inputs")):
        with pytest.raises(ReportError, match=message):
            run_report(model=mlp, data=x, n=3, out=tmp_path / "o", methods=["saliency"], metrics=["deletion"],
                       progress=False, defaults=defaults)


class _Counted(torch.nn.Module):
    """The digits CNN, counting the inputs it runs."""

    def __init__(self):
        super().__init__()
        self.net, self.rows = load_digits_cnn(), 0

    def forward(self, z):
        self.rows += z.shape[0]
        return self.net(z)


def test_kept_outputs_and_maps_give_the_values_of_running_again(tmp_path, monkeypatch):
    """The random-logit test's re-explanations read the perturbation methods' kept model outputs and the maps
    already computed (agg and sea_nn re-explain with the six methods they combine): the same values, bit for
    bit, as running the model again, with fewer model inputs."""
    from fastattr.report import running

    methods = ["occlusion", "feature_ablation", "rise", "kernel_shap", "lime", "integrated_gradients", "saliency",
               "agg", "sea_nn"]
    x, _ = load_digits("test", 2)
    kept_model = _Counted()
    kept = run_report(model=kept_model, data=x, n=2, methods=methods, metrics=["random_logit", "deletion"],
                      progress=False, out=tmp_path / "kept")
    monkeypatch.setattr(running, "_replay_phase", lambda phase, store: contextlib.nullcontext())
    again_model = _Counted()
    again = run_report(model=again_model, data=x, n=2, methods=methods, metrics=["random_logit", "deletion"],
                       progress=False, out=tmp_path / "again")
    assert kept.per_example == again.per_example
    assert kept_model.rows < again_model.rows


def test_max_seconds_shrinks_n_to_fit_and_says_so(tmp_path, capsys):
    """The estimate comes from the warm-up input; a budget too small for two inputs keeps one, and the console,
    the page and results.json say so."""
    from fastattr.report import summary_table

    result = run_report(n=4, out=tmp_path / "a", methods=["saliency", "occlusion"], metrics=["deletion"],
                        progress=False)
    estimate = result.settings["estimate"]
    assert result.n == estimate["n"] == estimate["n_requested"] == 4 and estimate["per_input"] > 0
    assert estimate["total"] >= 4 * estimate["per_input"] and "shrunk" not in estimate["message"]
    small = run_report(n=4, out=tmp_path / "b", methods=["saliency", "occlusion"], metrics=["deletion"],
                       progress=False, max_seconds=1e-3)
    estimate = small.settings["estimate"]
    assert small.n == estimate["n"] == 1 and estimate["n_requested"] == 4 and estimate["max_seconds"] == 1e-3
    assert "(--max-seconds 0.001: --n 4 shrunk to 1 to fit)" in estimate["message"]
    assert all(len(v) == 1 for by in small.per_example.values() for v in by.values())
    assert estimate["message"] in summary_table(small)
    assert "shrunk to 1 to fit" in (tmp_path / "b" / "index.html").read_text()
    for bad in (0, -1, float("inf"), "10", True):
        with pytest.raises(ReportError, match="--max-seconds must be a positive number"):
            run_report(n=1, out=tmp_path / "c", methods=["saliency"], metrics=["deletion"], max_seconds=bad)
    code = main(["report", "--n", "3", "--methods", "saliency", "--metrics", "deletion", "--max-seconds", "0.001",
                 "--out", str(tmp_path / "d"), "--no-progress"])
    assert code == 0 and "--n 3 shrunk to 1 to fit" in capsys.readouterr().out


def test_only_methods_and_metrics_that_call_an_op_are_timed_on_both_backends(tmp_path):
    """Integrated gradients calls the path ops and the ranked metrics perturb_by_rank: both backends timed;
    saliency and the other metrics run the same code on both, named on the page and not re-timed."""
    from fastattr._backend import record_backends
    from fastattr.metrics import RANKED_METRICS
    from fastattr.report.running import _attribute, _evaluate, feature_map, report_defaults

    result = run_report(n=2, out=tmp_path / "r", methods=["saliency", "integrated_gradients"],
                        metrics=["deletion", "sparseness", "infidelity"], progress=False)
    timed = {k.split(":")[1] for k in result.seconds if k.startswith("backend:")}
    assert timed == {"integrated_gradients", "evaluate"}
    assert "saliency: no fastattr op, the same code on both backends" in (tmp_path / "r" / "index.html").read_text()
    cnn = load_digits_cnn()
    x, _ = load_digits("test", 1)
    t = cnn(x).argmax(1)
    d = report_defaults(x)
    maps = {"saliency": feature_map(_attribute("saliency", cnn, x, t, 0, 0, defaults=d), x)}
    for metric in REPORT_METRICS:
        with record_backends() as used:
            _evaluate(cnn, x, t, maps, [metric], 0, 0, 0, 20, defaults=d)
        assert bool(used) == (metric in RANKED_METRICS), (metric, used)


def test_boxes_add_the_localisation_metrics(tmp_path, capsys):
    """--boxes gives EHR, the pointing game and IoU columns, each value evaluate()'s with that input's box;
    without boxes they are refused with the way to give them; bad boxes get one line naming --boxes."""
    x, _ = load_digits("test", 3)
    boxes = torch.tensor([[2, 2, 6, 6], [0, 0, 4, 8], [3, 1, 8, 5], [0, 0, 1, 1]])
    torch.save(boxes, tmp_path / "boxes.pt")
    result = run_report(n=3, out=tmp_path / "r", methods=["saliency", "occlusion"], boxes=str(tmp_path / "boxes.pt"),
                        progress=False)
    assert {"ehr", "pointing_game", "iou"} <= set(result.metrics) and result.settings["boxes"] == boxes[:3].tolist()
    cnn = load_digits_cnn()
    t = cnn(x).argmax(1)
    maps = {"saliency": fastattr.saliency(cnn, x, t).sum(1)}
    for i in range(3):
        ev = fastattr.evaluate(cnn, x[i:i + 1], t[i:i + 1], attributions={"s": maps["saliency"][i:i + 1]},
                               metrics=["ehr", "pointing_game", "iou"], boxes=boxes[i:i + 1])
        for metric in ("ehr", "pointing_game", "iou"):
            assert result.per_example[metric]["saliency"][i] == pytest.approx(float(ev[metric]["s"][0]), abs=1e-6)
    with pytest.raises(ReportError, match="give one box per input with --boxes"):
        run_report(n=2, out=tmp_path / "c", methods=["saliency"], metrics=["ehr"])
    for bad, message in ((boxes[:2], "2 boxes for 3 inputs"), (boxes.float(), "must be an integer tensor"),
                         (torch.tensor([[2, 2, 9, 6]] * 3), "row 0 [2, 2, 9, 6] is not a box")):
        with pytest.raises(ReportError, match=re.escape(message)):
            run_report(n=3, out=tmp_path / "c", methods=["saliency"], boxes=bad)
    code = main(["report", "--n", "2", "--methods", "saliency", "--metrics", "ehr", "--boxes",
                 str(tmp_path / "nope.pt"), "--out", str(tmp_path / "d"), "--no-progress"])
    assert code == 2 and "--boxes" in capsys.readouterr().err
