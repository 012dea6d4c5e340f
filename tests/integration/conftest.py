"""Fixtures of the integration tests that more than one module reads."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from support import ROOT, SeedStore, env_for, run_batch, run_cli, runs_in


@pytest.fixture(scope="session")
def seed_store(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> SeedStore:
    """The seed's settings (120 trees, depth 20: accuracy 0.9669, macro F1 0.9666 on all of MNIST),
    trained once through the notebook batch and once through ``mnistops train --force``, into one
    store. The seed tests of test_notebooks.py and test_train.py read it; their xdist group
    (``seed``) keeps them on one worker, which builds it once. Each full-MNIST training costs about
    20 s of CPU: the two doors were tested on two stores before, one more training in all."""
    work = tmp_path_factory.mktemp("seed")
    seed = str(ROOT / "configs" / "seed.yaml")
    t0 = time.perf_counter()
    proc = run_batch(work, session_cache, "--config", seed, "--jobs", "2", "--json")
    batch_seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    batch, batch_runs = json.loads(proc.stdout), runs_in(work)
    env = env_for(work, session_cache)
    proc = run_cli("train", "--config", seed, "--force", "--json", env=env, cwd=work, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return SeedStore(work, batch, batch_runs, json.loads(proc.stdout), batch_seconds)
