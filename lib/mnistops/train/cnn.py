"""The convolutional model: PyTorch on the CPU, seeded and deterministic.

The recipe (architecture, batch size, AdamW, one-cycle learning rate, random shifts as
augmentation, early stopping) lives in :class:`mnistops.train.models.CNNParams`. A validation slice
is carved from the *training* rows (the test rows are touched once, by the pipeline, at the
end); the weights of the best validation epoch are kept. With the same seed, data and thread
count, two runs give the same weights bit for bit (``torch.use_deterministic_algorithms``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mnistops.progress import NullReporter, Reporter
from mnistops.train.models import MODEL_FORMAT, EpochCallback
from mnistops.train.pyfunc_model import build_cnn

log = logging.getLogger(__name__)


def _shift(batch: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image ``(B, 784)`` by its own random offset in ``[-s, s]`` pixels."""
    b = batch.shape[0]
    s = max_shift
    padded = nn.functional.pad(batch.view(b, 28, 28), (s, s, s, s))
    dy = torch.randint(0, 2 * s + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * s + 1, (b,), generator=gen)
    base = torch.arange(28)
    rows = (base[None, :] + dy[:, None])[:, :, None]
    cols = (base[None, :] + dx[:, None])[:, None, :]
    return padded[torch.arange(b)[:, None, None], rows, cols].reshape(b, 784)


class TorchCNN:
    """A small CNN behind the :class:`mnistops.train.models.Model` interface."""

    kind = "torch"
    held_out_proba: np.ndarray | None = None  # never set: see fit
    name = "cnn"

    def __init__(self, params: dict[str, Any], preprocess: str = "none", seed: int = 42) -> None:
        self.params = params
        self.seed = seed
        if preprocess != "none":
            log.warning("model.preprocess=%s is ignored by the CNN (it normalises with batch norm)", preprocess)
        self.threads = int(params["threads"]) or (os.cpu_count() or 1)
        torch.manual_seed(seed)
        self.net = build_cnn(tuple(params["channels"]), params["hidden"], params["dropout"], params["convs_per_block"])
        self.history: list[dict[str, float]] = []

    def _setup(self) -> None:
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(True)

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        progress: Reporter | None = None,
        on_epoch: EpochCallback | None = None,
        held_out: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Train on ``float32 (n, 784)`` / ``uint8 (n,)``; keep the best validation epoch.

        ``held_out`` is not used: early stopping watches a slice of the training rows, and
        the held-out rows are scored once, after training, by the pipeline.
        """
        self._setup()
        progress = progress or NullReporter()
        p = self.params
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        perm = np.random.default_rng(self.seed).permutation(len(y))
        n_val = max(1, round(p["val_fraction"] * len(y)))
        val_idx, tr_idx = torch.from_numpy(perm[:n_val]), torch.from_numpy(perm[n_val:])
        xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))  # shares memory: no copy
        ys = torch.from_numpy(y.astype(np.int64))
        bs = int(p["batch_size"])
        steps = -(-len(tr_idx) // bs)
        opt = torch.optim.AdamW(self.net.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        sched: Any = (
            torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p["lr"], total_steps=p["epochs"] * steps)
            if p["schedule"] == "onecycle"
            else None
        )
        loss_fn = nn.CrossEntropyLoss(label_smoothing=p["label_smoothing"])
        best_acc, best_state, stale = -1.0, copy.deepcopy(self.net.state_dict()), 0
        for epoch in range(1, p["epochs"] + 1):
            t0 = time.perf_counter()
            self.net.train()
            order = tr_idx[torch.randperm(len(tr_idx), generator=gen)]
            task = progress.task(f"epoch {epoch}/{p['epochs']}", total=steps)
            total_loss = 0.0
            for i in range(steps):
                rows = order[i * bs : (i + 1) * bs]
                xb = xs[rows]
                if p["augment_shift"]:
                    xb = _shift(xb, p["augment_shift"], gen)
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(self.net(xb), ys[rows])
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                total_loss += loss.detach().item() * len(rows)
                task.update(1)
            task.close()
            val_acc = float((self._proba(xs[val_idx]).argmax(1) == ys[val_idx].numpy()).mean())
            stats = {"train_loss": total_loss / len(tr_idx), "val_accuracy": val_acc,
                     "epoch_time_s": time.perf_counter() - t0}  # fmt: skip
            self.history.append(stats)
            log.info("epoch %d: loss %.4f, val accuracy %.4f, %.1f s", epoch, *stats.values())
            if on_epoch is not None:
                on_epoch(epoch, stats)
            if val_acc > best_acc:
                best_acc, best_state, stale = val_acc, copy.deepcopy(self.net.state_dict()), 0
            else:
                stale += 1
                if stale >= p["patience"]:
                    log.info("early stop after epoch %d: no better validation accuracy for %d epochs", epoch, stale)
                    break
        self.net.load_state_dict(best_state)

    def _proba(self, x: torch.Tensor) -> np.ndarray:
        self.net.eval()
        with torch.inference_mode():
            out = [torch.softmax(self.net(x[i : i + 512]), 1) for i in range(0, len(x), 512)]
        return torch.cat(out).numpy() if out else np.zeros((0, 10), np.float32)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``float32 (n, 10)`` for ``float32 (n, 784)`` features."""
        self._setup()
        return self._proba(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The network's weights."""
        return self.net.state_dict()

    def save(self, directory: Path) -> None:
        """``model.pt`` (weights only) and ``meta.json`` (kind, recipe) for the pyfunc model."""
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.net.state_dict(), directory / "model.pt")
        (directory / "meta.json").write_text(json.dumps(
            {"format": MODEL_FORMAT, "kind": self.kind, "name": self.name, "file": "model.pt", "params": self.params}
        ))  # fmt: skip
