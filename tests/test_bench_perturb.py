"""fastattr bench perturb builds its table at a tiny size and refuses rows that disagree with the
reference (timings are not asserted)."""
import importlib

import pytest
import torch

from fastattr import _backend
from fastattr.bench import perturb


def _rows(table):
    return {row[0]: row for row in table.rows}


def test_perturb_bench_table_has_every_row_on_a_tiny_case():
    table = perturb.run((2, 3, 8, 8), 4, device="cpu", repeat=1)
    expected = ["fastattr[reference]"] + (["fastattr[cpp]"] if _backend.cpp_available() else [])
    quantus = importlib.util.find_spec("quantus") is not None
    expected += [perturb.TORCH_MASKS] + ([perturb.QUANTUS] if quantus else [])
    assert [row[0] for row in table.rows] == expected  # no Triton row on the CPU, even in the interpreter
    rows = _rows(table)
    assert rows["fastattr[reference]"][2] == 1.0
    assert all(isinstance(row[1], float) and row[1] > 0 and row[2] > 0 for row in table.rows)
    if quantus:
        assert rows[perturb.QUANTUS][3] == 1.0 and all(row[3] > 0 for row in table.rows)
    assert table.params == {"shape": [2, 3, 8, 8], "steps": 4, "pixels_per_step": 16, "dtype": "float32",
                            "device": "cpu", "repeat": 1}
    assert "[8, 3, 8, 8]" in table.name and "torch threads" in table.notes[0]


def test_check_same_catches_a_wrong_chunk():
    gen = torch.Generator().manual_seed(1)
    good = torch.rand(6, 3, 4, 4, generator=gen)
    perturb.check_same("copy", good.clone(), good)
    wrong = good.clone()
    wrong[5, 2, 3, 1] += 0.5
    with pytest.raises(RuntimeError, match="wrong: 1 of 288 values differ"):
        perturb.check_same("wrong", wrong, good)
    with pytest.raises(RuntimeError, match="shape: got"):
        perturb.check_same("shape", good[:3], good)
    with pytest.raises(RuntimeError, match="dtype: got torch.float64"):
        perturb.check_same("dtype", good.double(), good)


def test_run_refuses_an_implementation_that_disagrees(monkeypatch):
    # An insertion chunk in place of the deletion chunk: the check before timing must stop the run.
    def inserting(x, baseline, rank, counts):
        rank_map = rank.view(x.shape[0], 1, *x.shape[2:])
        return lambda: torch.cat([torch.where(rank_map < n, x, baseline) for n in counts])

    monkeypatch.setattr(perturb, "_torch_masks", inserting)
    with pytest.raises(RuntimeError, match="torch: per-step bool masks"):
        perturb.run((2, 3, 8, 8), 4, device="cpu", repeat=1)


def test_missing_quantus_leaves_a_note_and_bad_steps_are_refused(monkeypatch):
    monkeypatch.setattr(perturb, "_quantus_replace", lambda: None)
    table = perturb.run((1, 2, 4, 4), 2, device="cpu", repeat=1)
    assert perturb.QUANTUS not in _rows(table) and all(row[3] == "-" for row in table.rows)
    assert any("quantus not installed" in note for note in table.notes)
    with pytest.raises(ValueError, match="steps must be >= 1 and divide H·W = 16, got 3"):
        perturb.run((1, 2, 4, 4), 3, device="cpu", repeat=1)


def test_perturb_bench_is_registered_with_the_cli():
    from fastattr.cli import BENCHES, build_parser

    assert importlib.import_module(BENCHES["perturb"]) is perturb
    assert build_parser().parse_args(["bench", "perturb"]).which == "perturb"
