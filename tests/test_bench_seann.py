"""``fastattr bench seann`` at tiny sizes: every table runs, the released-code loops pick what fastattr
picks, and the reproduction scores SEA-NN and the maps it ensembles with the library's MDRS / AUPC."""
import pytest
import torch

import fastattr
from fastattr.bench import seann


@pytest.mark.usefixtures("one_thread")
def test_greedy_training_and_op_tables_on_a_tiny_case():
    greedy = seann.greedy_table(repeat=1, batch=2, baseline_images=1, side=5, hidden=(8, 4))
    assert [r[0] for r in greedy.rows][1].startswith("fastattr") and all(r[1] > 0 and r[2] > 0 for r in greedy.rows)
    assert not any("differ" in note for note in greedy.notes)
    training = seann.training_table(repeat=1, batch=2, epochs=2, baseline_images=1, side=5, hidden=(8, 4))
    assert len(training.rows) == 3 and all(r[1] > 0 for r in training.rows)
    op = seann.op_table(repeat=1, batch=2, side=5, hidden=(8, 4))
    assert len(op.rows) == 2 and all(r[1] > 0 for r in op.rows)


def test_released_greedy_is_the_plain_greedy():
    dsf = fastattr.DeepSubmodular(16, (6, 3), batch=1, init=(0.0, 1.0), generator=2, dtype=torch.float64)
    f, _ = seann._released_dsf(dsf, 0)
    assert seann.released_greedy(f, 16, 16) == dsf.greedy()[0][0].tolist()


@pytest.mark.usefixtures("one_thread")
def test_reproduction_table_on_a_tiny_case():
    table = seann.reproduction_table(n=3, epochs=2, device="cpu")
    names = [r[0] for r in table.rows]
    assert names[-1] == "SEA-NN" and len(names) == len(seann.REPRODUCTION_METHODS) + 2
    assert all(1 <= r[1] <= 64 and r[2] > 0 for r in table.rows)
