"""fastattr.evaluate_dataset: the rows are evaluate()'s on fixed batches; constant memory, resume, torchrun."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from torch import nn

import fastattr
from fastattr.metrics import read_rows
from fastattr.zoo import load_digits, load_digits_cnn

METRICS = ["deletion", "insertion", "infidelity", "sensitivity_n", "sparseness"]


def _rows(path):
    return list(read_rows(path))


def test_rows_are_evaluate_on_each_fixed_batch_seeded_by_its_index(tmp_path):
    """Batches of 4 over 10 digits: each batch's values are evaluate()'s on that batch with the generator
    seed·1 000 003 + b, the targets the predictions, and the summary the mean of the rows."""
    net = load_digits_cnn()
    x, y = load_digits("test", 10)
    res = fastattr.evaluate_dataset(net, (x, y), ["saliency", "integrated_gradients"], METRICS,
                                    out=tmp_path / "rows.jsonl", batch_size=4, generator=3, n_subsets=20)
    rows = _rows(tmp_path / "rows.jsonl")
    assert [r["index"] for r in rows] == list(range(10)) and res.n == 10
    assert [r["label"] for r in rows] == y.tolist()
    for b in range(3):
        xb = x[4 * b:4 * b + 4]
        t = net(xb).argmax(1)
        maps = {"saliency": fastattr.saliency(net, xb, t), "integrated_gradients": fastattr.integrated_gradients(net, xb, t)}
        ev = fastattr.evaluate(net, xb, t, attributions=maps, metrics=METRICS, generator=3 * 1_000_003 + b,
                               n_subsets=20)
        for k, row in enumerate(rows[4 * b:4 * b + 4]):
            assert row["target"] == row["prediction"] == int(t[k])
            for metric in METRICS:
                for name in maps:
                    want = ev[metric][name][k]
                    got = torch.tensor(row["values"][metric][name], dtype=want.dtype)
                    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    for metric in METRICS:
        for name in ("saliency", "integrated_gradients"):
            values = torch.tensor([r["values"][metric][name] for r in rows], dtype=torch.float64)
            assert res.summary[metric][name] == pytest.approx(values.nanmean().item(), rel=1e-12)


def test_a_dataloader_a_dataset_and_labels_as_target(tmp_path):
    """A DataLoader without shuffling gives its batch size; target='label' reads the items' labels; curves
    are written and averaged on request."""
    net = load_digits_cnn()
    x, y = load_digits("test", 6)
    data = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(data, batch_size=3)
    res = fastattr.evaluate_dataset(net, loader, {"s": "saliency"}, ["deletion"], out=tmp_path / "a.jsonl",
                                    target="label", curves=True)
    rows = _rows(tmp_path / "a.jsonl")
    assert [r["target"] for r in rows] == y.tolist()
    ev = fastattr.evaluate(net, x[:3], y[:3], attributions={"s": fastattr.saliency(net, x[:3], y[:3])},
                           metrics=["deletion"], generator=0)
    assert [r["values"]["deletion"]["s"] for r in rows[:3]] == ev["deletion"]["s"].tolist()
    assert rows[0]["curves"]["deletion"]["s"] == ev.curves["deletion"]["s"][0].tolist()
    mean = torch.tensor([r["curves"]["deletion"]["s"] for r in rows], dtype=torch.float64).mean(0)
    assert res.curves["deletion"]["s"] == pytest.approx(mean.tolist())
    with pytest.raises(ValueError, match="shuffle=False"):
        fastattr.evaluate_dataset(net, torch.utils.data.DataLoader(data, batch_size=3, shuffle=True), ["saliency"],
                                  out=tmp_path / "b.jsonl")


@pytest.mark.parametrize("kwargs,error,message", [
    ({"data": [1, 2]}, TypeError, "data must be a map-style"),
    ({"methods": {}}, ValueError, "methods must be a non-empty"),
    ({"methods": ["nope"]}, ValueError, "methods['nope'] = 'nope' is not one of"),
    ({"target": "class"}, ValueError, "target must be None, 'pred', 'label'"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"out": "/nonexistent/folder/rows.jsonl"}, ValueError, "out: the folder"),
    ({"generator": 1.5}, ValueError, "generator must be an int"),
    ({"target": "label"}, ValueError, "target='label' needs items"),
])
def test_bad_arguments_get_an_error_naming_them(tmp_path, kwargs, error, message):
    x, _ = load_digits("test", 4)
    call = {"model": load_digits_cnn(), "data": x, "methods": ["saliency"], "metrics": ["deletion"],
            "out": tmp_path / "r.jsonl", **kwargs}
    with pytest.raises(error) as info:
        fastattr.evaluate_dataset(call.pop("model"), call.pop("data"), call.pop("methods"), **call)
    assert message in str(info.value)


_SCRIPT = """
import resource, sys, numpy as np, torch
import fastattr
torch.set_num_threads(1)

class Images(torch.utils.data.Dataset):  # one image read from disk per item (no mapping kept): nothing stays
    def __init__(self, path, n):
        self.path, self.n = path, n
        with open(path, "rb") as f:
            np.lib.format.read_magic(f)
            np.lib.format.read_array_header_1_0(f)
            self.offset = f.tell()
    def __len__(self):
        return self.n
    def __getitem__(self, i):
        with open(self.path, "rb") as f:
            f.seek(self.offset + i * 3 * 32 * 32)
            row = np.fromfile(f, dtype=np.uint8, count=3 * 32 * 32)
        return torch.from_numpy(row.reshape(3, 32, 32).astype(np.float32) / 255.0)

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                          torch.nn.Flatten(), torch.nn.Linear(16, 5)).eval()
path, n, out, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
res = fastattr.evaluate_dataset(net, Images(path, n), ["saliency", "input_x_gradient"],
                                ["deletion", "sparseness"], out=out, batch_size=50, step=0.25, resume=resume)
if res is not None:
    print("rows", res.n, "peak_rss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(0)
    array = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.uint8, shape=(20_000, 3, 32, 32))
    for start in range(0, 20_000, 2_000):
        array[start:start + 2_000] = rng.integers(0, 256, (2_000, 3, 32, 32), dtype=np.uint8)
    array.flush()
    del array
    (folder / "run.py").write_text(textwrap.dedent(_SCRIPT))
    return folder


def _run(folder, n, out, resume=False, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(folder / "run.py"), str(folder / "images.npy"), str(n), str(out),
                           "1" if resume else "0"], capture_output=True, text=True, env=env, timeout=600, **kw)


def test_peak_memory_does_not_grow_with_the_dataset(images, tmp_path):
    """2 000 and 20 000 images of 3×32×32 read from disk one batch at a time: the peak RSS of the two runs
    within 10 % of each other (the rows go to the file, the summary is read back from it)."""
    peaks = {}
    for n in (2_000, 20_000):
        proc = _run(images, n, tmp_path / f"rows{n}.jsonl")
        assert proc.returncode == 0, proc.stderr[-2000:]
        words = proc.stdout.split()
        assert int(words[words.index("rows") + 1]) == n
        peaks[n] = int(words[words.index("peak_rss_kb") + 1])
    assert abs(peaks[20_000] - peaks[2_000]) <= 0.1 * peaks[2_000], peaks


def test_a_run_killed_half_way_and_resumed_gives_the_uninterrupted_rows(images, tmp_path):
    """SIGKILL once 1 000 of 3 000 rows are on disk (possibly mid-line), then resume=True: the rows are those
    of a run that was never interrupted."""
    full = tmp_path / "full.jsonl"
    assert _run(images, 3_000, full).returncode == 0
    cut = tmp_path / "cut.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(images / "run.py"), str(images / "images.npy"), "3000", str(cut),
                             "0"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if cut.exists() and cut.stat().st_size > 0 and sum(1 for _ in open(cut)) >= 1_000:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 1_000 <= sum(1 for _ in open(cut)) < 3_000
    resumed = _run(images, 3_000, cut, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert cut.read_text() == full.read_text()


def test_torchrun_two_processes_over_a_stream_give_the_rows_of_one(images, tmp_path):
    """Each rank reads only its batches (b ≡ rank mod 2) and rank 0 merges the parts in example order."""
    one = tmp_path / "one.jsonl"
    assert _run(images, 450, one).returncode == 0
    two = tmp_path / "two.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(images / "run.py"), str(images / "images.npy"), "450", str(two), "0"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("rows 450") == 1  # only rank 0 returns the summary
    assert two.read_text() == one.read_text()
    assert not list(tmp_path.glob("two.jsonl.rank*"))


def test_resume_of_a_finished_run_runs_nothing(tmp_path):
    """resume=True on a complete file keeps every row and runs no batch (the model is never called)."""
    net = load_digits_cnn()
    x, _ = load_digits("test", 6)
    out = tmp_path / "r.jsonl"
    fastattr.evaluate_dataset(net, x, ["saliency"], ["deletion"], out=out, batch_size=4)
    before = out.read_text()
    calls = []

    class Counted(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, z):
            calls.append(z.shape[0])
            return self.net(z)

    res = fastattr.evaluate_dataset(Counted(), x, ["saliency"], ["deletion"], out=out, batch_size=4, resume=True)
    assert out.read_text() == before and res.n == 6 and not calls
    assert json.loads(before.splitlines()[0])["index"] == 0
