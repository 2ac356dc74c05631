"""The ``fastattr report`` command line as a new user meets it: a model module in the current folder,
labels that do not match the inputs, a file that is not a tensor file, and ``--help``."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("matplotlib")

from fastattr.attribution import LAYER_METHODS, METHODS  # noqa: E402
from fastattr.cd import CD_METHODS  # noqa: E402
from fastattr.cli import main  # noqa: E402
from fastattr.metrics import EVALUATE_METRICS  # noqa: E402
from fastattr.report import CONTROL, ReportError, load_data, load_model  # noqa: E402

TINYCNN = textwrap.dedent("""
    import torch
    from torch import nn

    def trained():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()
""")

# Runs the command as the installed ``fastattr`` script does: sys.path[0] is the script's folder, not the
# current one (``python -m`` and ``python -c`` would put the current folder there themselves).
LAUNCHER = "import sys\nfrom fastattr.cli import main\nsys.exit(main())\n"


def _fastattr(tmp_path, cwd, *args):
    launcher = tmp_path / "bin" / "fastattr_cli.py"
    launcher.parent.mkdir(exist_ok=True)
    launcher.write_text(LAUNCHER)
    env = dict(os.environ)
    env.pop("PYTHONSAFEPATH", None)
    return subprocess.run([sys.executable, str(launcher), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --model: the current folder is on the import path, as with python -m.

def test_model_module_in_the_current_folder_is_found(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "tinycnn.py").write_text(TINYCNN)
    torch.save(torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)), work / "inputs.pt")
    proc = _fastattr(tmp_path, work, "report", "--model", "tinycnn:trained", "--data", "inputs.pt", "--n", "3",
                     "--methods", "saliency", "--metrics", "deletion", "--out", "out", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    data = json.loads((work / "out" / "results.json").read_text())
    assert data["methods"] == ["saliency"] and len(data["target"]) == 3


def test_model_module_that_cannot_be_imported_says_where_it_is_looked_for(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    proc = _fastattr(tmp_path, work, "report", "--model", "tinycnn_absent:trained", "--out", "out", "--no-progress")
    assert proc.returncode == 2
    line = _one_line(proc.stderr)
    assert "cannot import model module 'tinycnn_absent'" in line
    assert "importable from the current folder" in line and "PYTHONPATH" in line


def test_load_model_from_the_current_folder_leaves_sys_path_as_it_was(tmp_path, monkeypatch):
    name = "tinycnn_in_process"
    (tmp_path / f"{name}.py").write_text(TINYCNN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    before = list(sys.path)
    try:
        model = load_model(f"{name}:trained")
    finally:
        sys.modules.pop(name, None)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 5)
    assert sys.path == before


def test_a_missing_dependency_of_the_model_module_is_named(tmp_path, monkeypatch):
    name = "tinycnn_needs_a_missing_package"
    (tmp_path / f"{name}.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.chdir(tmp_path)
    try:
        with pytest.raises(ReportError, match="No module named 'no_such_dependency_xyz'.*a module it imports"):
            load_model(f"{name}:trained")
    finally:
        sys.modules.pop(name, None)


# Labels: their count must match the inputs', whatever --target.

@pytest.mark.parametrize("target", [None, "pred", "label", "2"])
@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_label_count_mismatch_is_refused_whatever_the_target(tmp_path, capsys, target, form):
    x, y = torch.rand(16, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4])
    torch.save((x, y) if form == "tuple" else {"x": x, "y": y}, tmp_path / "data.pt")
    code = main(["report", "--data", str(tmp_path / "data.pt"), "--n", "4", "--methods", "saliency", "--metrics",
                 "deletion", "--out", str(tmp_path / "o"), "--no-progress",
                 *(["--target", target] if target else [])])
    assert code == 2
    assert "5 labels for 16 inputs" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "o" / "results.json").exists()


def test_labels_are_counted_against_the_file_not_against_n(tmp_path):
    torch.save((torch.rand(6, 1, 8, 8), torch.arange(6) % 5), tmp_path / "data.pt")
    x, y = load_data(str(tmp_path / "data.pt"), 3)
    assert x.shape == (3, 1, 8, 8) and y.tolist() == [0, 1, 2]
    torch.save((torch.rand(6, 1, 8, 8), torch.tensor(1)), tmp_path / "scalar.pt")
    with pytest.raises(ReportError, match="1 labels for 6 inputs"):
        load_data(str(tmp_path / "scalar.pt"), 3)


# Files that are not tensor files: one friendly line, not torch's weights_only essay.

def _write(path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


def _truncated(path):
    torch.save(torch.rand(4, 1, 8, 8), path)
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize("make,message", [
    (lambda p: _write(p, "hello world\n1,2,3\n"), "not a file written by torch.save (it looks like a text file)"),
    (lambda p: _write(p, b"\x00\x01\x02\x03\x04binary"), "not a file written by torch.save (it starts with"),
    (lambda p: _write(p, b""), "the file is empty"),
    (_truncated, "damaged or truncated"),
    (lambda p: torch.save(__import__("numpy").zeros((4, 1, 8, 8)), p), "objects other than tensors"),
])
def test_a_file_that_is_not_a_tensor_file_gets_one_friendly_line(tmp_path, capsys, make, message):
    path = tmp_path / "inputs.pt"
    make(path)
    code = main(["report", "--data", str(path), "--out", str(tmp_path / "o"), "--no-progress"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and line.startswith(f"fastattr: error: cannot read --data {path}")
    assert message in line and "torch.save(x, path)" in line
    assert "weights_only" not in line.lower().replace(" ", "_") and len(line) < 400


def test_a_text_file_renamed_pt_through_the_command(tmp_path):
    (tmp_path / "inputs.pt").write_text("0.1 0.2 0.3\n")
    proc = _fastattr(tmp_path, tmp_path, "report", "--data", "inputs.pt", "--out", "out", "--no-progress")
    assert proc.returncode == 2
    assert "not a file written by torch.save" in _one_line(proc.stderr)


# --help names every method and metric.

def test_report_help_lists_methods_and_metrics(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    options = text.split("\n  -h, --help", 1)[1]  # past the usage line, which names the options too
    methods_help = options.split("--methods METHODS", 1)[1].split("--metrics METRICS", 1)[0]
    metrics_help = options.split("--metrics METRICS", 1)[1].split("--n N", 1)[0]
    for name in [*METHODS, *LAYER_METHODS, *CD_METHODS, CONTROL]:
        assert name in methods_help, name
    for name in EVALUATE_METRICS:
        assert name in metrics_help, name
