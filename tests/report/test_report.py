"""fastattr report / fastattr bench: outputs on the embedded default, a user's own model and
data, and one-line errors a person can act on."""
import json
import textwrap

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

from fastattr.cli import main  # noqa: E402
from fastattr.metrics import EVALUATE_METRICS  # noqa: E402
from fastattr.report import run_report  # noqa: E402


def test_report_on_the_embedded_default(tmp_path):
    result = run_report(n=6, out=tmp_path / "r", progress=False)
    out = tmp_path / "r"
    for name in ("index.html", "heatmaps.png", "curves.png", "results.json", "results.csv"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "results.json").read_text())
    assert set(data["summary"]) == set(EVALUATE_METRICS)
    assert {"random", "integrated_gradients", "grad_cam", "guided_backprop"} <= set(data["methods"])
    lo_hi = {"deletion": (0, 1), "insertion": (0, 1), "faithfulness_correlation": (-1, 1),
             "sensitivity_n": (-1, 1), "infidelity": (0, float("inf")), "mdrs": (1, 64), "aupc": (0, 64),
             "morf": (-1, 1), "lerf": (-1, 1), "deletion_error": (0, float("inf")),
             "insertion_error": (0, float("inf"))}
    for metric, by_method in data["per_example"].items():
        lo, hi = lo_hi[metric]
        for values in by_method.values():
            assert len(values) == 6 and all(lo - 1e-9 <= v <= hi + 1e-9 for v in values), metric
    # A faithful method beats the random control on the trained model.
    s = data["summary"]
    assert s["deletion"]["integrated_gradients"] < s["deletion"]["random"]
    assert s["insertion"]["integrated_gradients"] > s["insertion"]["random"]
    assert s["faithfulness_correlation"]["integrated_gradients"] > s["faithfulness_correlation"]["random"] + 0.3
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and 'id="metrics"' in page and 'class="best"' in page
    rows = (out / "results.csv").read_text().strip().splitlines()
    assert rows[0] == "example,target,method,metric,value"
    assert len(rows) == 1 + 6 * len(result.methods) * len(EVALUATE_METRICS)


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
