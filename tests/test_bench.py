"""The benchmark harness builds its tables (timings themselves are never asserted)."""
import pytest
import torch

from fastattr.bench import Table, time_interleaved


def test_time_interleaved_runs_every_function_each_round():
    calls = []
    medians, ratios = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                       repeat=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert set(medians) == {"a", "b"} and ratios["a"] == 1.0 and ratios["b"] > 0


def test_ig_bench_table_on_a_small_case():
    from fastattr.bench import ig

    table = ig.run(batch=2, n_steps=3, chunk=4, repeat=1)
    names = [r[0] for r in table.rows]
    assert names[:2] == ["model-only floor", "fastattr.integrated_gradients"]
    assert table.rows[0][2] == 1.0 and all(r[1] > 0 for r in table.rows)
    assert isinstance(table, Table) and "chunk 4 inputs" in table.name


def test_ig_resnet_case_runs_on_a_small_cpu_setting():
    """The ResNet-50 GPU case's code path, on CPU with a ResNet-18, one 32×32 input and 2 steps."""
    from fastattr.bench import ig
    from fastattr.zoo.resnet import resnet18

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread avoids contention on a shared machine
    try:
        table = ig.resnet_case(batch=1, n_steps=2, size=32, device="cpu", repeat=1, arch=resnet18)
    finally:
        torch.set_num_threads(threads)
    names = [r[0] for r in table.rows]
    assert names[:4] == ["model-only floor", "fastattr IG fp32", "fastattr IG bf16 autocast",
                         "fastattr IG fp32, default settings"]
    assert all(isinstance(r[1], float) and r[1] > 0 for r in table.rows) and table.rows[0][2] == 1.0
    assert all(r[4] == "-" for r in table.rows)  # peak memory is measured on CUDA only
    assert table.params["arch"] == "resnet18" and "bf16 autocast / fp32 time" in table.notes[0]


def test_ig_gpu_tables_skip_with_a_note_without_cuda(capsys):
    from fastattr.bench import ig

    if torch.cuda.is_available():
        assert ig.gpu_tables(device="cpu") == []
    else:
        assert ig.gpu_tables() == []
    assert "ResNet-50 IG benchmark skipped" in capsys.readouterr().out


def test_vgg_style_model_shape():
    from fastattr.bench.ig import vgg_style

    assert vgg_style()(torch.rand(2, 3, 64, 64)).shape == (2, 10)


try:
    import quantus as _quantus

    _QUANTUS_STEP_CHECK = _quantus.helpers.asserts.assert_features_in_step
except ImportError:
    _QUANTUS_STEP_CHECK = None


def test_metrics_bench_table_on_a_small_case():
    from fastattr.bench import metrics

    table = metrics.run(n_images=2, steps=4, repeat=1)
    names = [r[0] for r in table.rows]
    assert names[:3] == ["model-only floor", "fastattr insertion + deletion", "fastattr deletion"]
    assert table.params["inputs"] == 2 * 2 * 5
    assert table.params["floor_batch"] in (8, 16, 24, 32, 40, 48, 64, 96, 128, 256, 512, 1024)
    rows = {r[0]: r for r in table.rows}
    if metrics.QUANTUS_ELEMENT_STEPS in rows:
        # run() has checked that quantus's pixel-step curve is fastattr's deletion curve
        assert rows[metrics.QUANTUS_PIXEL_STEPS][3] == 1.0 and rows[metrics.QUANTUS_ELEMENT_STEPS][4] == 1.0
        assert rows["fastattr deletion"][3] > 0 and rows["fastattr deletion"][4] > 0
        assert rows[metrics.DROP_IN][1] > 0 and rows[metrics.DROP_IN][4] > 0
        assert any("12 steps of 1024 elements" in n and "4 steps of 1024 pixels" in n for n in table.notes)
        import quantus

        assert quantus.helpers.asserts.assert_features_in_step is _QUANTUS_STEP_CHECK  # restored
    else:
        assert any("quantus not installed" in n for n in table.notes)


def test_evaluate_bench_counts_forward_passes():
    from fastattr.bench import metrics
    from fastattr.metrics import evaluate
    from fastattr.metrics.evaluate import CountingModel

    kw = dict(n_images=2, step=2048, n_subsets=3, ns=(64,), patch=32, repeat=1,
              methods=("saliency", "input_x_gradient"))
    table = metrics.run_evaluate(**kw)
    rows = {r[0]: r for r in table.rows}
    assert table.params["methods"] == ["saliency", "input_x_gradient"] and table.params["repeat"] == 1
    # The fastattr row's count is the one evaluate() itself reports for the same call.
    model = metrics.vgg_style()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)
    attrs = {n: metrics.METHODS[n](model, x, y) for n in kw["methods"]}
    ev = evaluate(CountingModel(model), x, y, attributions=attrs, metrics=metrics.EVALUATE_METRICS,
                  n_subsets=3, ns=[64], step=2048, subset_fraction=round(0.2 * 3 * 64 * 64) / (3 * 64 * 64),
                  generator=0)
    assert rows["fastattr.evaluate"][2:4] == [ev.forward_calls, ev.forward_inputs]
    assert rows["model-only floor (fastattr's inputs)"][2:4] == ["-", ev.forward_inputs]
    if "quantus, method by method" in rows:
        quantus_row = rows["quantus, method by method"]
        assert quantus_row[3] > 0 and quantus_row[4] == 1.0
        assert rows["fastattr.integrations.quantus (quantus's definitions)"][3] > 0
    else:
        assert any("quantus not installed" in n for n in table.notes)


def test_stability_bench_counts_forward_passes():
    from fastattr.bench import metrics

    methods = ("saliency", "input_x_gradient")
    table = metrics.run_stability(n_images=2, n_samples=3, repeat=1, methods=methods)
    rows = {r[0]: r for r in table.rows}
    assert table.params["methods"] == list(methods) and table.params["kinds"] == ["input", "output", "representation"]
    # the fastattr row's count is that of the same call, counted with the same hook
    model = metrics.vgg_style()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)
    attrs = {n: metrics.METHODS[n](model, x, y) for n in methods}
    count = metrics._ForwardCount(model)
    metrics.relative_stability(model, x, {n: n for n in methods}, y, n_samples=3, attributions=attrs)
    count.close()
    assert not model._forward_pre_hooks
    assert rows["fastattr relative_stability, one call"][2:4] == [count.calls, count.inputs]
    q = "quantus, 3 metrics per method"
    if q in rows:
        assert rows[q][4] == 1.0 and rows[q][2] > count.calls and rows["fastattr relative_stability, one call"][4] > 0
    else:
        assert any("quantus not installed" in n for n in table.notes)


def test_metrics_bench_tables_are_picked_by_name(monkeypatch, capsys):
    from fastattr.bench import metrics
    from fastattr.cli import main

    ran = []
    monkeypatch.setattr(metrics, "TABLES", {name: (lambda device, repeat, name=name: ran.append(name) or [])
                                            for name in metrics.TABLES})
    assert metrics.default_tables(tables=["stability", "flipping"]) == [] and ran == ["stability", "flipping"]
    ran.clear()
    assert main(["bench", "metrics", "--tables", "evaluate,stability"]) == 0 and ran == ["evaluate", "stability"]
    for args in (["metrics", "--tables", "stabilty"], ["sparsemax", "--tables", "x"], ["all", "--tables", "evaluate"]):
        assert main(["bench", *args]) == 2
        assert "--tables" in capsys.readouterr().err
    assert ran == ["evaluate", "stability"]


def test_metrics_resnet_insertion_runs_on_a_small_cpu_setting():
    """The ResNet-50 GPU case's code path, on CPU with a ResNet-18, one 32×32 input and 4 steps."""
    from fastattr.bench import metrics
    from fastattr.zoo.resnet import resnet18

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        table = metrics.resnet_insertion(n_images=1, steps=4, size=32, device="cpu", repeat=1, arch=resnet18)
    finally:
        torch.set_num_threads(threads)
    rows = {r[0]: r for r in table.rows}
    assert list(rows)[:2] == ["model-only floor", "fastattr insertion"]
    assert rows["model-only floor"][4] == 1.0 and table.params["inputs"] == 5
    assert all(r[1] > 0 and r[3] > 0 for r in table.rows)
    q = "quantus PixelFlipping from the 0 image (insertion)"
    if q in rows:
        assert rows[q][5] == 1.0 and rows[q][2] == 3 * 4  # quantus's step counts elements
        assert rows["fastattr insertion"][2] == 5  # the target check doubles as the curve's last point
    with pytest.raises(ValueError, match="steps"):
        metrics.resnet_insertion(n_images=1, steps=5, size=32, device="cpu", repeat=1, arch=resnet18)


def test_metrics_gpu_tables_skip_with_a_note_without_cuda(capsys):
    from fastattr.bench import metrics

    assert metrics.gpu_tables(device="cpu") == []
    assert "ResNet-50 insertion benchmark skipped" in capsys.readouterr().out


def test_out_of_memory_errors_are_recognised():
    from fastattr.bench import is_out_of_memory

    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert is_out_of_memory(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x3 and 4x5)"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_bench_out_keeps_the_tables_measured_before_a_failure(tmp_path, monkeypatch):
    """The JSON record is rewritten after every table, so a bench cut short (a time limit, an
    error in a later table) still leaves the tables it finished."""
    import json

    from fastattr import cli
    from fastattr.bench import sparsemax

    def tables(device=None, repeat=1):
        yield sparsemax.run((16, 32), device="cpu", repeat=1, backends=["reference"], block_s=0.0)
        raise RuntimeError("the second table failed")

    monkeypatch.setattr(sparsemax, "default_tables", tables)
    with pytest.raises(RuntimeError, match="second table"):
        cli._bench(cli.build_parser().parse_args(["bench", "sparsemax", "--repeat", "1", "--out", str(tmp_path)]))
    (record,) = tmp_path.glob("*.json")
    names = [t["name"] for t in json.loads(record.read_text())["tables"]]
    assert names == ["sparsemax [16, 32] float32 on cpu"]


def test_shap_bench_table_on_a_small_case():
    from fastattr.bench.shap import run
    table = run(batch=2, n_samples=24, repeat=1)
    names = [r[0] for r in table.rows]
    assert names[:3] == ["model-only floor", "fastattr.kernel_shap", "fastattr.lime"]
    assert all(r[1] > 0 for r in table.rows)
    if "captum KernelShap" in names:
        assert isinstance(table.rows[1][3], float) and table.rows[1][3] > 0
    assert table.params["features"] == 16 and table.params["n_samples"] == 24


@pytest.mark.usefixtures("one_thread")  # tiny tensors: idle OpenMP threads only stall on a busy machine
def test_road_bench_tables_on_a_small_case():
    from fastattr.bench import road

    impute = road.impute_table("cpu", n=2, size=16, repeat=1)
    assert [r[:2] for r in impute.rows] == [[k, p] for k in ("noisy", "smooth") for p in (20, 50, 80)]
    assert all(r[2] > 0 and r[3] > 0 and r[5] < 1e-4 for r in impute.rows)  # timed, and equal to scipy
    table = road.road_table("cpu", n=2, repeat=1)
    assert table.rows[0][0] == "fastattr.metrics.road" and all(r[1] > 0 for r in table.rows)


@pytest.mark.usefixtures("one_thread")
def test_agg_bench_tables_on_a_small_case():
    pytest.importorskip("cvxpy")
    from fastattr.bench import agg, aggregate

    qp = agg.qp_table("cpu", repeat=1, batch=4, block_s=0.0)
    assert qp.rows and all(isinstance(r[2], float) for r in qp.rows)
    timed = aggregate.aggregate_table(batch=2, n_samples=2, paper_images=1, repeat=1, device="cpu")
    assert [r[0] for r in timed.rows][:4] == ["floor: 7 explainers on m·B inputs", "floor on torch's max pool and convolution backward",
                                              "7 explainers on m·B inputs, one call each", "fastattr.aggregate opt"]
    released = aggregate.aggregate_table(batch=2, n_samples=2, paper_images=1, repeat=1, device="cpu",
                                         settings="released")
    assert "released settings" in released.name and "IG 50 steps, SmoothGrad / VarGrad 20 samples" in released.notes[-1]
    assert aggregate.seven(**aggregate.SETTINGS["released"])["vargrad"] == (
        "smoothgrad", {"n_samples": 20, "generator": 0, "stdev": 0.5, "variant": "vargrad"})
    pool = aggregate.pool_table("cpu", repeat=1, shapes=(("small", (2, 3, 9, 9), 3, 2, 1),))
    names = [r[1] for r in pool.rows]
    assert names[:2] == ["torch (NCHW)", "torch (channels-last copy)"] and "fastattr reference" in names
    assert pool.rows[0][3] == 1.0 and all(r[2] > 0 for r in pool.rows)
    conv = aggregate.conv_table("cpu", repeat=1, shapes=(("small", (3, 1, 9, 7), 4, 3, 2, 1, "dense"),
                                                          ("wide", (2, 4, 6, 6), 3, 3, 1, 1, "dense"),
                                                          ("pooled", (2, 8, 6, 6), 8, 3, 1, 1, "pooled"),
                                                          ("dense", (2, 8, 6, 6), 8, 3, 1, 1, "dense")))
    assert [r[1] for r in conv.rows] == ["torch convolution_backward", "fastattr cpp"] * 4
    assert "routed (dense kernel)" in conv.rows[0][0] and "kept on torch's" in conv.rows[2][0]
    assert "routed (sparse kernel)" in conv.rows[4][0] and "100% nonzero; kept on torch's" in conv.rows[6][0]
    assert all(r[2] > 0 for r in conv.rows)
    assert list(agg.TABLES) == ["qp", "aggregate", "aggregate_released", "pool", "conv", "reproduction"]
    repro = aggregate.reproduction_table(batch=2, n_samples=2, n_eval=3, device="cpu")
    names = [r[0] for r in repro.rows]
    assert set(aggregate.SEVEN) <= set(names) and {"AGG_opt", "AGG_robust", "AGG_faith", "AGG_var"} <= set(names)
    assert all(r[1] >= 0 and r[2] >= 0 for r in repro.rows)


@pytest.mark.usefixtures("one_thread")
def test_theory_bench_table_on_a_small_case():
    from fastattr.bench import theory

    table = theory.theory_table(max_d=5)
    assert [r[0] for r in table.rows] == [2, 3, 4, 5]
    assert [r[2] for r in table.rows] == [1, 2, 5, 9] and [r[3] for r in table.rows] == [1, 2, 5, 9]
    assert all(r[4] <= 1 + 1e-9 for r in table.rows)
    assert "fit over d = 2..5" in table.notes[0]


@pytest.mark.usefixtures("one_thread")
def test_sop_bench_table_on_a_small_case():
    pytest.importorskip("sklearn")
    from fastattr.bench import sop
    from fastattr.cli import BENCHES

    table = sop.run(batch=2, repeat=1, device="cpu")
    assert [r[0] for r in table.rows] == ["model-only floor", "model-only, the distinct copies", "SumOfParts.forward",
                                          f"SumOfParts.forward, max_batch={table.params['floor_chunk']}",
                                          "SumOfParts.explain"]
    assert table.rows[0][2] == 1.0 and table.rows[1][3] == 1.0 and all(r[1] > 0 and r[2] > 0 for r in table.rows)
    assert 2 <= table.params["distinct_inputs"] <= table.params["backbone_inputs"]
    assert table.params["backbone_inputs"] == 2 * table.params["groups"] > 2
    assert BENCHES["sop"] == "fastattr.bench.sop"
    resnet = sop.resnet_table(batch=1, size=32, groups=2, repeat=1, device="cpu")
    assert [r[0] for r in resnet.rows][:3] == ["model-only floor", "model-only, the distinct copies",
                                               "SumOfParts.forward"]
    assert resnet.params["backbone_inputs"] == 2 and all(r[1] > 0 and r[2] > 0 for r in resnet.rows)
    gpu_row = sop.throughput_table(arch="resnet18", batch=2, size=32, groups=3, repeat=1, device="cpu")
    rows = {r[0]: r for r in gpu_row.rows}
    assert list(rows)[:2] == ["model-only floor", "model-only, the distinct copies"]
    assert list(rows)[-1] == "backbone on the B inputs" and "SumOfParts.forward" in rows
    assert gpu_row.params["backbone_inputs"] == 6 and gpu_row.params["patch_size"] == 16  # 4 patches ≥ 3 groups
    assert all(abs(r[4] - 2 / (r[1] / 1e3)) < 1e-6 * r[4] for r in gpu_row.rows)  # images / s = B / time
    ran = []
    monkey = dict(sop.TABLES)
    try:
        for name in sop.TABLES:
            sop.TABLES[name] = lambda device, repeat, name=name: ran.append(name) or []
        sop.default_tables(device="cpu")
        assert ran == ["forward", "reproduction", "ops"]  # the GPU row only on CUDA unless named
        sop.default_tables(device="cpu", tables=["throughput"])
        assert ran[-1] == "throughput"
    finally:
        sop.TABLES.update(monkey)


@pytest.mark.usefixtures("one_thread")
def test_sop_ops_bench_table_times_every_backend(monkeypatch):
    from fastattr import available_backends
    from fastattr.bench import sop

    shapes = {"group_gen": ((2, 5, 3, 4, 1, 2, 2),), "group_masks": ((2, 5, 6, 3, 2),),
              "group_select": ((2, 3, 4, 5, 6),)}
    monkeypatch.setattr(sop, "OP_SHAPES", shapes)
    table = sop.ops_table(device="cpu", repeat=1)
    assert [tuple(r[:3]) for r in table.rows] == [(op, ", ".join(map(str, s[0])), b) for op, s in shapes.items()
                                                  for b in available_backends("cpu")]
    assert all(r[3] > 0 and r[4] > 0 for r in table.rows) and table.rows[0][4] == 1.0


@pytest.mark.usefixtures("one_thread")
def test_iba_bench_table_on_a_small_case():
    from fastattr.bench import iba

    table = iba.iba_table(repeat=1, batch=2, resnet_batch=1, size=64)  # layer3 4×4: IBA pads by 2
    names = [(r[0], r[1]) for r in table.rows]
    assert ("digits CNN, B = 2, net.2", "fastattr.iba (batched)") in names and len(table.rows) == 6
    assert table.params["arch"] == "resnet18" and ("ResNet-18 layer3, B = 1 × 3×64×64", "public code's loop") in names
    assert all(r[2] > 0 and r[3] > 0 for r in table.rows)


@pytest.mark.usefixtures("one_thread")
def test_iba_reproduction_table_on_a_small_case():
    """The IBA family against Grad-CAM, IG and a random map on 6 held-out digits: every metric in range, the
    random map's Sensitivity-N below IG's; ``--tables`` names the speed and reproduction tables."""
    from fastattr.bench import iba

    table = iba.reproduction_table(batch=6)
    rows = {r[0]: r[1:] for r in table.rows}
    assert list(rows) == ["IBA (net.2)", "Inverse IBA (net.2)", "Multi-layer IBA (net.0 ∩ net.2)",
                          "InputIBA (net.2)", "Grad-CAM (net.2)", "Integrated Gradients", "random"]
    assert all(0 <= ins <= 1 and 0 <= dele <= 1 and -1 <= sens <= 1 for ins, dele, sens, _ in rows.values())
    assert rows["Integrated Gradients"][2] > rows["random"][2]
    assert set(iba.TABLES) == {"speed", "reproduction"}


@pytest.mark.usefixtures("one_thread")
def test_sop_reproduction_table_on_a_tiny_case(monkeypatch):
    """SOP's Table 1 on 2 held-out digits: the SOP's own row and each post-hoc method on the SOP and on the
    CNN, accuracies on the whole test split, the SOP row's grouped AUC its explain() groups and scores."""
    pytest.importorskip("sklearn")
    import fastattr
    from fastattr.bench import sop
    from fastattr.cli import main
    from fastattr.zoo import SOP_TEST_ACCURACY, TEST_ACCURACY, load_digits, load_digits_sop

    table = sop.reproduction_table(batch=2, device="cpu", methods=["saliency", "occlusion"])
    assert [(r[0], r[1]) for r in table.rows] == [("SOP", "sop (its own groups)"), ("SOP", "saliency"),
                                                 ("SOP", "occlusion"), ("CNN", "saliency"), ("CNN", "occlusion")]
    assert table.rows[0][2] == pytest.approx(SOP_TEST_ACCURACY, abs=1e-4)
    assert table.rows[-1][2] == pytest.approx(TEST_ACCURACY, abs=1e-4)
    assert all(0.0 <= v <= 1.0 for r in table.rows for v in r[3:])
    model = load_digits_sop()
    x, _ = load_digits("test", 2)
    e = model.explain(x)
    direct = fastattr.metrics.grouped_insertion(model, x, e.scores, e.target, groups=e.masks).double().mean()
    assert table.rows[0][5] == pytest.approx(direct.item(), rel=1e-6)
    with pytest.raises(ValueError, match="unknown methods"):
        sop.reproduction_table(batch=2, methods=["lime"])
    ran = []
    monkeypatch.setattr(sop, "TABLES", {name: (lambda device, repeat, name=name: ran.append(name) or [])
                                        for name in sop.TABLES})
    assert main(["bench", "sop", "--tables", "reproduction"]) == 0 and ran == ["reproduction"]
