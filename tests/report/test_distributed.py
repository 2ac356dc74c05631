"""torchrun shards fastattr report across ranks (gloo on CPU) and gives the single-process output."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

from fastattr.report import run_report  # noqa: E402


EXPLAINED = {"methods": ["saliency", "smoothgrad", "kernel_shap", "grad_cam", "random"],
             "metrics": ["relative_input_stability", "relative_output_stability", "relative_representation_stability",
                         "model_randomisation", "random_logit"]}


@pytest.mark.parametrize("chosen", [{}, EXPLAINED], ids=["default", "explained-metrics"])
def test_torchrun_two_cpu_processes_match_single_process(tmp_path, chosen):
    """The default report, and the metrics that explain again (each method its own explain function,
    its random draws seeded by the example's global index), with stochastic methods among them."""
    single = tmp_path / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: a kernel's float32 sums can depend on how many threads split them
    try:
        run_report(n=5, out=single, progress=False, **chosen)
    finally:
        torch.set_num_threads(threads)
    sharded = tmp_path / "sharded"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    options = [item for key, names in chosen.items() for item in (f"--{key}", ",".join(names))]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "fastattr", "report", "--num-inputs", "5", "--out", str(sharded), "--no-progress", *options],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("report written to") == 1  # only rank 0 writes and prints
    a = json.loads((single / "results.json").read_text())
    b = json.loads((sharded / "results.json").read_text())
    assert a["target"] == b["target"] and a["methods"] == b["methods"]
    for metric, by_method in a["per_example"].items():
        for method, values in by_method.items():
            assert len(b["per_example"][metric][method]) == 5
            # every map and metric is computed per example (perturbation maps one example at a time, see
            # report.running._attribute) on one thread in both runs; the few values still a rounding apart are
            # SEA-NN's: it trains a network per example on maps of a metric's copies, explained in one call per
            # batch, where a one-row GEMM (MKL's GEMV path) and a many-row one differ in the last bit, and the
            # training amplifies that (2e-8 relative on an AMD EPYC with oneDNN's convolution backward, 1.1e-6
            # since the sparse kernel's sums round otherwise; each kernel itself is bit for bit batch-invariant)
            rel = 1e-5 if method == "sea_nn" else 1e-6
            nan = lambda vs: [math.nan if v is None else v for v in vs]  # noqa: E731 - NaN is null in JSON
            assert nan(b["per_example"][metric][method]) == pytest.approx(nan(values), rel=rel, abs=1e-9,
                                                                          nan_ok=True), (metric, method)
    assert (sharded / "index.html").exists()
