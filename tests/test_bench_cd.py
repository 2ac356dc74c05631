"""fastattr bench cd / cdep produce their tables (tiny settings; timings are not asserted)."""
import torch

from fastattr.bench import cd as bench_cd
from fastattr.bench import cdep as bench_cdep


def test_cd_block_bench_runs_and_reports_every_row():
    table = bench_cd.run_blocks("cpu", repeat=1)
    names = [row[0] for row in table.rows]
    assert names[:3] == ["forward of 64 inputs (floor)", "fastattr CD (beta, 64 masks batched)",
                         "fastattr CD pair reference (batched)"]
    assert all(row[1] > 0 for row in table.rows)
    assert "acd.cd per mask" in names        # acd is a test dependency


def test_color_digits_data_and_a_short_cdep_run():
    x, y = bench_cdep.color_digits("test", invert=True)
    assert x.shape[1:] == (3, 8, 8)
    colour = x.amax((2, 3)) / x.amax((1, 2, 3))[:, None]
    torch.testing.assert_close(colour, bench_cdep.COLOURS[9 - y] / bench_cdep.COLOURS[9 - y].amax(1, keepdim=True))
    table = bench_cdep.run(seeds=(0,), epochs=1, lams=(1.0,), form="l1")
    assert [r[0] for r in table.rows] == ["vanilla", "cdep λ=1"]
    assert all(0.0 <= float(r[2]) <= 1.0 for r in table.rows)
