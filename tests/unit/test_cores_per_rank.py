"""How many cores a rank takes for its jobs when cores_per_rank is not set."""
from __future__ import annotations

import pytest

from hpcpilot.workflow.hpc import cores_of_rank


@pytest.mark.parametrize("node_sets, expected", [
    ([set(range(32))] * 4, 8),  # unbound: all four ranks see the node's 32 CPUs and share them
    ([set(range(8 * r, 8 * r + 8)) for r in range(4)], 8),  # srun --cpus-per-task=8: each bound to its own 8
    ([{0, 1, 2}, {3, 4, 5, 6, 7}], None),  # bound unevenly: each its own count
    ([set(range(4))] * 8, 1),  # more ranks than CPUs: one each, oversubscribed
    ([{0, 1, 2, 3}], 4),  # one rank
    ([{0, 1, 2, 3}, {2, 3, 4, 5}], 3),  # overlapping: shared evenly
])
def test_a_rank_takes_its_own_cpus_or_its_share(node_sets, expected):
    for own in node_sets:
        assert cores_of_rank(own, node_sets) == (len(own) if expected is None else expected)
