"""How a sweep's trial is held to its worker's share of the host's cores (``cluster.share``,
``cluster.confined``): the real CPU affinity and the real BLAS pools of this process."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from mnistops import cluster


@pytest.mark.parametrize(
    ("cpus", "peers", "name", "cores", "expected"),
    [
        ([0, 1], ["0", "1"], "0", None, (1, {0})),
        ([0, 1], ["0", "1"], "1", None, (1, {1})),
        ([0, 1], ["0"], "0", None, (2, {0, 1})),
        ([0, 1], ["0"], "0", 1, (1, {0})),
        ([0, 1], ["0", "1"], "1", 2, (2, {0, 1})),  # more asked for than there are: they wrap round
        ([4, 5, 6, 7], ["0", "1", "2"], "2", None, (1, {6})),
        ([0, 1, 2, 3], ["0", "1"], "1", 3, (3, {3, 0, 1})),
        ([0, 1, 2, 3], ["0", "1"], "1", 9, (4, {0, 1, 2, 3})),
        ([0, 1], ["0", "1"], "7", None, (1, None)),  # not among the workers the sweep saw: not pinned
        ([0, 1, 2, 3], [], "", None, (4, None)),  # not a Dask worker
    ],
)
def test_a_host_s_cores_are_dealt_out_to_its_workers(
    cpus: list[int], peers: list[str], name: str, cores: int | None, expected: tuple[int, set[int] | None]
) -> None:
    assert cluster.share(cpus, peers, name, cores) == expected


def _blas_threads() -> set[int]:
    np.ones((64, 64)) @ np.ones((64, 64))  # the BLAS library is loaded
    return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_confined_pins_the_thread_and_its_children_and_holds_blas_then_restores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    before_threads = _blas_threads()
    monkeypatch.setattr(cluster, "_this_worker", lambda: ("127.0.0.1", "1"))
    seen: dict[str, object] = {}

    def child() -> None:
        seen["child"] = os.sched_getaffinity(0)

    with cluster.confined({"127.0.0.1": ["0", "1"]}) as n:
        seen["count"] = n
        seen["thread"] = os.sched_getaffinity(0)
        t = threading.Thread(target=child)
        t.start()
        t.join()
        seen["blas"] = _blas_threads()
    n_each = len(cpus) // 2
    assert seen["count"] == n_each
    assert seen["thread"] == seen["child"] == set(cpus[n_each : 2 * n_each])
    assert seen["blas"] <= {n_each}
    assert os.sched_getaffinity(0) == set(cpus)
    assert _blas_threads() == before_threads


def test_outside_a_worker_nothing_is_pinned_but_blas_is_held_to_the_cores_asked_for() -> None:
    before = os.sched_getaffinity(0)
    with cluster.confined({}, 1) as n:
        assert n == 1
        assert os.sched_getaffinity(0) == before
        assert _blas_threads() <= {1}
