"""Update pruning: each client keeps only the largest entries of its update."""

from __future__ import annotations

import numpy as np
import pytest

from engine.clients.pruning import prune_update
from engine.data.cohort import load_cohort
from engine.federation.inprocess import run_federation
from engine.federation.server_view import ServerView
from engine.orchestration.presets import build_config


def test_keeps_the_largest_update_entries_of_each_tensor():
    glob = [np.ones((2, 2), np.float32), np.zeros(4, np.float32)]
    local = [np.array([[1.5, 0.9], [1.0, 4.0]], np.float32),
             np.array([0.1, -3.0, 0.2, 0.05], np.float32)]
    out = prune_update(local, glob, 0.5)
    np.testing.assert_allclose(out[0], [[1.5, 1.0], [1.0, 4.0]])
    np.testing.assert_allclose(out[1], [0.0, -3.0, 0.2, 0.0])
    assert out[0].dtype == np.float32


def test_zero_fraction_and_integer_buffers_pass_through():
    glob = [np.zeros(3, np.float32), np.array(5, np.int64)]
    local = [np.array([1.0, 2.0, 3.0], np.float32), np.array(7, np.int64)]
    out = prune_update(local, glob, 0.0)
    np.testing.assert_array_equal(out[0], local[0])
    assert prune_update(local, glob, 0.9)[1] == 7


def test_exact_share_is_zeroed_even_with_ties():
    glob = [np.zeros(100, np.float32)]
    out = prune_update([np.ones(100, np.float32)], glob, 0.9)
    assert int((out[0] == 0).sum()) == 90


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_rejects_fractions_outside_unit_interval(fraction):
    with pytest.raises(ValueError, match="prune fraction"):
        prune_update([np.ones(2)], [np.zeros(2)], fraction)


def test_server_view_holds_the_pruned_upload(runs_dir):

    cfg = build_config("smoke", sets=["federation.rounds=1", "defenses.prune_fraction=0.9"])
    run_federation(cfg, load_cohort(cfg.data, cfg.seed), run_dir=runs_dir)
    rnd = ServerView(runs_dir)[1]
    c = rnd.clients[0]
    update = [u - g for u, g in zip(rnd.client_params(c), rnd.global_params, strict=True)
              if np.issubdtype(g.dtype, np.floating)]
    assert all(int((d == 0).sum()) >= int(0.9 * d.size) for d in update)
    assert sum(int((d != 0).sum()) for d in update) > 0
