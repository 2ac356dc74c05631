"""fastattr evaluate: a folder of images or a .npy array scored one batch at a time (evaluate_dataset)."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

import fastattr  # noqa: E402
from fastattr.cli import main  # noqa: E402
from fastattr.metrics import read_rows  # noqa: E402
from fastattr.report.loading import ImageFolder, load_data  # noqa: E402
from fastattr.report.running import report_defaults  # noqa: E402


def _folder(path, n=6, side=16, odd=None):
    """``n`` random RGB PNGs of side×side (image ``odd`` of another size), written with matplotlib."""
    import matplotlib.image as mpimg

    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        s = side + 4 if i == odd else side
        mpimg.imsave(path / f"img{i:02d}.png", rng.random((s, s, 3)))
    return path


def _model_module(tmp_path, monkeypatch):
    (tmp_path / "tiny.py").write_text(
        "import torch\n"
        "def make():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),\n"
        "                               torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 3))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys

    sys.modules.pop("tiny", None)
    return importlib.import_module("tiny").make


def test_a_folder_streamed_gives_evaluate_on_each_batch_with_the_report_patches(tmp_path, monkeypatch, capsys):
    """6 PNGs of 3×16×16 in batches of 4: each row is evaluate()'s on its batch with the report's patches
    (16×16 = 768 elements: 2×2 patches, 64 features) and curve step, seeded by the batch index."""
    folder = _folder(tmp_path / "images")
    make = _model_module(tmp_path, monkeypatch)
    out = tmp_path / "rows.jsonl"
    code = main(["evaluate", "--model", "tiny:make", "--data", str(folder), "--methods", "saliency,input_x_gradient",
                 "--metrics", "deletion,mdrs,sparseness", "--batch-size", "4", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "6 rows in" in printed and "deletion: saliency" in printed
    rows = list(read_rows(out))
    x = torch.stack([ImageFolder(folder)[i] for i in range(6)])
    d = report_defaults(x)
    assert d["patch_size"] == 2 and d["features"] == 64
    net = make().eval()
    for b in range(2):
        xb = x[4 * b:4 * b + 4]
        t = net(xb).argmax(1)
        maps = {"saliency": fastattr.saliency(net, xb, t), "input_x_gradient": fastattr.input_x_gradient(net, xb, t)}
        ev = fastattr.evaluate(net, xb, t, attributions=maps, metrics=["deletion", "mdrs", "sparseness"],
                               patch_size=2, step=d["curve_step"], normalize=True, generator=b)
        for k, row in enumerate(rows[4 * b:4 * b + 4]):
            assert row["index"] == 4 * b + k and row["target"] == int(t[k])
            for metric in ("deletion", "mdrs", "sparseness"):
                for name in maps:
                    assert row["values"][metric][name] == pytest.approx(float(ev[metric][name][k]), rel=1e-6, abs=1e-9)


def test_an_npy_array_is_read_one_input_at_a_time_and_resumed(tmp_path, monkeypatch):
    """A memory-mapped .npy: --resume on a finished file keeps it as it is; the rows equal a tensor's."""
    _model_module(tmp_path, monkeypatch)
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "x.npy", x.numpy())
    out = tmp_path / "r.jsonl"
    args = ["evaluate", "--model", "tiny:make", "--data", str(tmp_path / "x.npy"), "--methods", "saliency",
            "--metrics", "deletion", "--batch-size", "2", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    first = out.read_text()
    assert len(first.splitlines()) == 5 and json.loads(first.splitlines()[4])["index"] == 4
    assert main(args + ["--resume"]) == 0 and out.read_text() == first
    torch.save(x, tmp_path / "x.pt")
    assert main([a if a != str(tmp_path / "x.npy") else str(tmp_path / "x.pt") for a in args]) == 0
    assert out.read_text() == first


@pytest.mark.parametrize("extra,message", [
    (["--methods", "nope"], "unknown method nope"),
    (["--metrics", "nope"], "unknown metric nope"),
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--target", "label"], "--target label needs data with labels"),
    (["--resume", "--out", "/tmp/fastattr-no-such-rows.jsonl"], "--resume: /tmp/fastattr-no-such-rows.jsonl does not"),
    (["--out", "/no/such/folder/r.jsonl"], "the folder /no/such/folder does not exist"),
])
def test_mistakes_print_one_line_and_exit_2(tmp_path, monkeypatch, capsys, extra, message):
    folder = _folder(tmp_path / "images", n=2)
    _model_module(tmp_path, monkeypatch)
    args = ["evaluate", "--model", "tiny:make", "--data", str(folder), "--out", str(tmp_path / "r.jsonl"),
            "--no-progress"]
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_the_report_reads_only_the_first_n_images_of_a_folder(tmp_path):
    """A folder whose third image has another size: --n 2 reads two files and works; --n 3 names the odd one."""
    from fastattr.report import ReportError

    folder = _folder(tmp_path / "images", n=4, odd=2)
    x, _ = load_data(str(folder), 2)
    assert x.shape == (2, 3, 16, 16)
    with pytest.raises(ReportError, match="img02.png is .*have different sizes"):
        load_data(str(folder), 3)
