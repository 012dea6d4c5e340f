"""The served forest in packed form: every tree's nodes in one table, walked by compiled code.

scikit-learn walks a forest one tree at a time, each a call with its own set-up: for one image
that set-up is nearly all of the time. Here the internal nodes of all trees are packed into one
table of 16-byte rows (feature, threshold, left, right: one cache line read per step; a leaf is a
negative child, the bitwise complement of its row in the leaf table), walked by a loop that numba
compiles once and caches on disk (:mod:`mnistops.lifecycle.walk`). A walk is bound by memory
latency, one dependent load per level; so 32 (row, tree) walks are stepped together, a level of
each in turn, and their loads overlap. 150 trees of depth 25 (``benchmarks/bench_forest.py``,
2-core Intel Xeon): one image 0.037 ms, 64 images 1.6 ms, against 1.6 ms and 7.6 ms one tree at
a time (:func:`mnistops.lifecycle.versions.forest_proba`) and 23 ms and 33 ms through
``predict_proba``.

The answers are the forest's own, bit for bit: thresholds are compared as scikit-learn compares
them (a float32 feature against the threshold; the float32 rounded down from the float64
threshold decides every float32 feature the same way), each tree's leaf probabilities are
scikit-learn's own ``tree_.value`` rows, added tree by tree in the forest's order and divided by
the number of trees, as ``predict_proba`` with one job does. ``tests/integration/test_serve.py``
checks the whole held-out split.

numba is an ordinary dependency, but nothing else needs it: where it cannot be imported,
:func:`pack` returns None and the forest answers through scikit-learn (the reference path, which
MLflow's own ``pyfunc`` loading always takes).
"""

from __future__ import annotations

import itertools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SPLIT_ROWS = 256  # from this many rows on, the rows are split over the cores (threads; no GIL held)
CORES = os.cpu_count() or 1


@dataclass(frozen=True)
class PackedForest:
    """A fitted forest's trees as flat arrays (see the module's docstring)."""

    # int32 (internal nodes, 4): feature, threshold (float32 bits), left, right. A child is an
    # internal node's row, or ~leaf. One node is 16 bytes: one cache line read per step.
    nodes: np.ndarray
    value: np.ndarray  # float64 (leaves, classes): each leaf's class probabilities (tree_.value)
    roots: np.ndarray  # int32: each tree's root (an internal node, or ~leaf for a one-leaf tree)

    @property
    def nbytes(self) -> int:
        """The memory the packed arrays hold."""
        return self.nodes.nbytes + self.value.nbytes + self.roots.nbytes

    def proba(self, features: np.ndarray) -> np.ndarray:
        """``float64 (n, classes)``: the forest's ``predict_proba`` of float32 ``features``."""
        x = np.ascontiguousarray(features, dtype=np.float32)
        out = np.zeros((len(x), self.value.shape[1]), dtype=np.float64)
        walk = _compiled()
        args = (self.nodes, self.nodes.view(np.float32), self.value, self.roots)
        if len(x) < SPLIT_ROWS or CORES == 1:
            walk(x, out, *args)
        else:  # each thread its own rows; the compiled walk releases the GIL
            bounds = np.linspace(0, len(x), CORES + 1).astype(int)
            parts = [_pool().submit(walk, x[a:b], out[a:b], *args) for a, b in itertools.pairwise(bounds)]
            for part in parts:
                part.result()
        out /= len(self.roots)
        return out


def pack(forest: Any) -> PackedForest | None:
    """``forest`` (a fitted scikit-learn forest classifier) packed, or None where numba is missing."""
    if _compiled() is None:
        return None
    nodes, value, roots = [], [], []
    internal_seen = leaves_seen = 0
    for estimator in forest.estimators_:
        tree = estimator.tree_
        is_leaf = tree.children_left < 0
        inner, leaves = np.flatnonzero(~is_leaf), np.flatnonzero(is_leaf)
        code = np.empty(tree.node_count, dtype=np.int64)  # a node's row in the packed arrays
        code[inner] = internal_seen + np.arange(len(inner))
        code[leaves] = ~(leaves_seen + np.arange(len(leaves)))
        rows = np.empty((len(inner), 4), dtype=np.int32)
        rows[:, 0] = tree.feature[inner]
        rows[:, 1] = _round_down(tree.threshold[inner]).view(np.int32)
        rows[:, 2] = code[tree.children_left[inner]]
        rows[:, 3] = code[tree.children_right[inner]]
        nodes.append(rows)
        value.append(tree.value[leaves, 0, :])
        roots.append(code[0])
        internal_seen, leaves_seen = internal_seen + len(inner), leaves_seen + len(leaves)
    packed = PackedForest(
        np.ascontiguousarray(np.concatenate(nodes)),
        np.ascontiguousarray(np.concatenate(value), dtype=np.float64),
        np.asarray(roots, dtype=np.int32),
    )
    packed.proba(np.zeros((1, forest.n_features_in_), np.float32))  # compiled (or read from numba's cache) now
    return packed


def _round_down(threshold: np.ndarray) -> np.ndarray:
    """The largest float32 at most each float64 threshold: ``x <= t32`` iff ``x <= t`` for every float32 x."""
    t32 = threshold.astype(np.float32)
    above = t32.astype(np.float64) > threshold
    return np.where(above, np.nextafter(t32, np.float32(-np.inf)), t32).astype(np.float32)


_WALK: Any = None
_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(CORES, thread_name_prefix="mnistops-forest")
    return _POOL


def _compiled() -> Any:
    """The compiled walk (compiled on first use, then cached by numba on disk), or None without numba."""
    global _WALK
    if _WALK is None:
        try:
            from mnistops.lifecycle import walk
        except ImportError as exc:
            log.warning("numba is not importable (%s): the forest answers through scikit-learn", exc)
            _WALK = False
        else:
            _WALK = walk.walk
    return _WALK or None
