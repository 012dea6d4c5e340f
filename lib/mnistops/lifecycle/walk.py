"""The compiled loops of :mod:`mnistops.lifecycle.packed` (importing this module needs numba; nothing
else imports it)."""

from __future__ import annotations

import numba
import numpy as np

LANES = 32  # (row, tree) walks stepped together


@numba.njit(nogil=True, cache=True)
def _leaves(x, nodes, thresholds, roots, leaves):  # type: ignore[no-untyped-def]
    """``leaves[i, t]``: the leaf row ``i`` of ``x`` reaches in tree ``t``. The (row, tree) pairs
    are walked LANES at a time, a step of each in turn, so that their memory loads overlap.
    ``nodes`` rows are (feature, threshold bits, left, right); ``thresholds`` is the same table
    read as float32."""
    trees = roots.shape[0]
    pairs = x.shape[0] * trees
    node = np.empty(LANES, np.int32)
    row = np.empty(LANES, np.int64)
    for first in range(0, pairs, LANES):
        lanes = min(LANES, pairs - first)
        for k in range(lanes):
            node[k] = roots[(first + k) % trees]
            row[k] = (first + k) // trees
        walking = True
        while walking:
            walking = False
            for k in range(lanes):
                at = node[k]
                if at >= 0:
                    if x[row[k], nodes[at, 0]] <= thresholds[at, 1]:
                        node[k] = nodes[at, 2]
                    else:
                        node[k] = nodes[at, 3]
                    walking = True
        for k in range(lanes):
            leaves[row[k], (first + k) % trees] = ~node[k]


@numba.njit(nogil=True, cache=True)
def walk(x, out, nodes, thresholds, value, roots):  # type: ignore[no-untyped-def]
    """Add every tree's leaf probabilities for each row of float32 ``x`` to ``out``, in tree order."""
    leaves = np.empty((x.shape[0], roots.shape[0]), np.int32)
    _leaves(x, nodes, thresholds, roots, leaves)
    for i in range(x.shape[0]):
        for t in range(roots.shape[0]):
            for c in range(value.shape[1]):
                out[i, c] += value[leaves[i, t], c]
