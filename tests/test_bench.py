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


def test_vgg_style_model_shape():
    from fastattr.bench.ig import vgg_style

    assert vgg_style()(torch.rand(2, 3, 64, 64)).shape == (2, 10)


def test_metrics_bench_table_on_a_small_case():
    from fastattr.bench import metrics

    table = metrics.run(n_images=2, steps=4, repeat=1)
    names = [r[0] for r in table.rows]
    assert names[:3] == ["model-only floor", "fastattr insertion + deletion", "fastattr deletion"]
    assert table.params["inputs"] == 2 * 2 * 5 and table.params["floor_batch"] in (8, 16, 24, 32, 40, 48, 64, 96, 128, 256, 512, 1024)
