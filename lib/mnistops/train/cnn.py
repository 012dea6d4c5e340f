"""The convolutional model: PyTorch on the CPU or a CUDA GPU, seeded and deterministic.

The recipe (architecture, batch size, AdamW, one-cycle learning rate, random shifts as
augmentation, early stopping, device, mixed precision) lives in
:class:`mnistops.catalog.CNNParams`. A validation slice is carved from the *training* rows
(the test rows are touched once, by the pipeline, at the end); the weights of the best validation
epoch are kept. With the same seed, data, device and thread count, two runs give the same weights
bit for bit (``torch.use_deterministic_algorithms``; on CUDA with ``CUBLAS_WORKSPACE_CONFIG``).

``device: auto`` takes CUDA when torch sees a GPU. On CUDA the training images are moved to the
GPU once (56,000 x 784 floats, 175 MB) and batches are cut and shifted there: no data loader on
the hot path. ``amp: bf16`` runs the forward pass under bfloat16 autocast (weights stay float32).
The saved weights are always CPU tensors: the model loads and predicts on a machine without a GPU.

This module needs only numpy and torch (the GPU benchmark runs it where MLflow is not installed).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mnistops import record
from mnistops.progress import NullReporter, Reporter

log = logging.getLogger(__name__)
MODEL_FORMAT = "mnistops-model/1"  # as mnistops.train.models.MODEL_FORMAT (checked by a test)
CUBLAS_WORKSPACE = ":4096:8"  # cuBLAS's deterministic workspace (PyTorch's reproducibility notes)


class DeviceError(ValueError):
    """``device: cuda`` where torch sees no CUDA GPU (a ConfigError once raised through mnistops)."""


def resolve_device(wanted: str) -> torch.device:
    """``auto``: CUDA when torch sees a GPU, else the CPU; ``cuda`` only where there is one."""
    if wanted == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            "model.params.device is cuda, but torch sees no CUDA GPU here "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}): use device: auto or cpu"
        )
    if wanted == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def device_tags(device: torch.device) -> dict[str, str]:
    """What a run records of the device it trained on."""
    tags = {record.DEVICE: device.type, record.TORCH: torch.__version__}
    if device.type == "cuda":
        tags.update(
            {
                record.DEVICE_NAME: torch.cuda.get_device_name(device),
                record.DEVICE_CUDA: str(torch.version.cuda),
                record.DEVICE_CUDNN: str(torch.backends.cudnn.version()),
            }
        )
    return tags


def _shift(batch: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image ``(B, 784)`` by its own random offset in ``[-s, s]`` pixels (on the
    batch's device, with ``gen``, a generator of that device)."""
    b = batch.shape[0]
    s = max_shift
    dev = batch.device
    padded = nn.functional.pad(batch.view(b, 28, 28), (s, s, s, s))
    dy = torch.randint(0, 2 * s + 1, (b,), generator=gen, device=dev)
    dx = torch.randint(0, 2 * s + 1, (b,), generator=gen, device=dev)
    base = torch.arange(28, device=dev)
    rows = (base[None, :] + dy[:, None])[:, :, None]
    cols = (base[None, :] + dx[:, None])[:, None, :]
    return padded[torch.arange(b, device=dev)[:, None, None], rows, cols].reshape(b, 784)


EpochCallback = Callable[[int, dict[str, float]], None]


def build_cnn(channels: tuple[int, int], hidden: int, dropout: float, convs_per_block: int = 1) -> Any:
    """The network, as the saved model's own file builds it (``pyfunc_model.build_cnn``), imported
    lazily: that file imports MLflow, which a machine with only torch (a GPU box) may not have."""
    from mnistops.train.pyfunc_model import build_cnn as build

    return build(channels, hidden, dropout, convs_per_block)


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
        self.device = resolve_device(str(params.get("device", "auto")))
        # bf16 autocast pays on a GPU; on a CPU it is many times slower (measured here: one epoch of
        # 3,000 images took 181 s): there the recipe runs in float32.
        self.amp = params.get("amp", "off") == "bf16" and self.device.type == "cuda"
        if params.get("amp", "off") == "bf16" and not self.amp:
            log.warning("model.params.amp=bf16 applies on CUDA only: training in float32 on the CPU")
        torch.manual_seed(seed)
        self.net = build_cnn(tuple(params["channels"]), params["hidden"], params["dropout"], params["convs_per_block"])
        self.history: list[dict[str, float]] = []
        self.tags = device_tags(self.device)

    def _setup(self) -> None:
        torch.set_num_threads(self.threads)
        if self.device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
            torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
        self.net.to(self.device)

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
        dev = self.device
        torch.manual_seed(self.seed)
        gen = torch.Generator(device=dev).manual_seed(self.seed)
        perm = np.random.default_rng(self.seed).permutation(len(y))
        n_val = max(1, round(p["val_fraction"] * len(y)))
        val_idx, tr_idx = torch.from_numpy(perm[:n_val]).to(dev), torch.from_numpy(perm[n_val:]).to(dev)
        # On the CPU this shares the array's memory; on a GPU the images move there once.
        xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dev)
        ys = torch.from_numpy(y.astype(np.int64)).to(dev)
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
            order = tr_idx[torch.randperm(len(tr_idx), generator=gen, device=dev)]
            task = progress.task(f"epoch {epoch}/{p['epochs']}", total=steps)
            total_loss = 0.0
            for i in range(steps):
                rows = order[i * bs : (i + 1) * bs]
                xb = xs[rows]
                if p["augment_shift"]:
                    xb = _shift(xb, p["augment_shift"], gen)
                opt.zero_grad(set_to_none=True)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.amp):
                    loss = loss_fn(self.net(xb), ys[rows])
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                total_loss += loss.detach().double() * len(rows)  # summed on the device: no sync per step
                task.update(1)
            task.close()
            total_loss = float(total_loss)
            val_acc = float((self._proba(xs[val_idx]).argmax(1) == ys[val_idx].cpu().numpy()).mean())
            stats = {
                "train_loss": total_loss / len(tr_idx),
                "val_accuracy": val_acc,
                "epoch_time_s": time.perf_counter() - t0,
            }
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
        """Probabilities in float32 (the forward pass in float32 too: scoring is not autocast)."""
        self.net.eval()
        with torch.inference_mode():
            out = [torch.softmax(self.net(x[i : i + 512].to(self.device)), 1) for i in range(0, len(x), 512)]
        return torch.cat(out).float().cpu().numpy() if out else np.zeros((0, 10), np.float32)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``float32 (n, 10)`` for ``float32 (n, 784)`` features."""
        self._setup()
        return self._proba(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The network's weights, as CPU tensors."""
        return {k: v.detach().cpu() for k, v in self.net.state_dict().items()}

    def save(self, directory: Path) -> None:
        """``model.pt`` (weights only, CPU tensors) and ``meta.json`` (kind, recipe) for the pyfunc model."""
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), directory / "model.pt")
        (directory / "meta.json").write_text(
            json.dumps(
                {
                    "format": MODEL_FORMAT,
                    "kind": self.kind,
                    "name": self.name,
                    "file": "model.pt",
                    "params": self.params,
                }
            )
        )
