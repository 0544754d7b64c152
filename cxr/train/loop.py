"""The training and inference loops: batches of stored images or cached features, on any device."""

from __future__ import annotations

import contextlib
import ctypes
import random
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn
from tqdm import tqdm

from cxr.config import ConfigError
from cxr.train.distributed import Distributed, Rows
from cxr.errors import PipelineError
from cxr.data.images import standardize
from cxr.model.networks import train_mode


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return the generator that orders training batches."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def select_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def amp_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for `train.precision` on `device`; None means plain fp32.

    auto: bf16 on CUDA where supported, else fp16 (with loss scaling); fp32 on the CPU, where
    bf16 only pays on CPUs with native bf16 units (AMX / AVX512-BF16).
    """
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        if precision == "bf16":
            raise ConfigError("train.precision: 'bf16' is not supported by this GPU; use 'auto' (fp16) or 'fp32'")
        return torch.float16
    return torch.bfloat16


@dataclass(frozen=True)
class Runtime:
    """Where and how the network runs: device, autocast dtype and memory format.

    channels_last (NHWC) lets cuDNN and oneDNN pick their fastest convolutions; measured in
    benchmarks/throughput.py.
    """

    device: torch.device
    dtype: torch.dtype | None = None
    channels_last: bool = True

    @classmethod
    def select(cls, precision: str = "auto", device: torch.device | None = None) -> Runtime:
        device = device or select_device()
        return cls(device, amp_dtype(device, precision))

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def images(self, batch: torch.Tensor, augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """uint8 images (B, 3, H, W) on the CPU -> standardised float input on the device."""
        x = batch.to(self.device, non_blocking=True).float().div_(255.0)
        if augment is not None:
            x = augment(x)
        x = standardize(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def features(self, batch: torch.Tensor, augment=None) -> torch.Tensor:
        """Cached feature rows: only moved to the device."""
        return batch.to(self.device, non_blocking=True)


SINGLE = Distributed()  # one process
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def release_large_blocks(threshold: int = 8 << 20) -> bool:
    """`train.low_memory`: have glibc serve every allocation above `threshold` bytes with its own
    mapping, returned to the system when freed, instead of from a heap that keeps growing with
    fragments of freed activations. Lowers the peak memory of CPU training (measured in
    benchmarks/memory.py) at the cost of page faults; False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))


class NonFiniteLossError(PipelineError, FloatingPointError):
    """The loss became NaN or infinite: training stops at once instead of producing garbage."""


def make_grad_scaler(runtime: Runtime) -> torch.amp.GradScaler | None:
    """A loss scaler where autocast uses fp16 (CUDA without bf16); None elsewhere."""
    if runtime.device.type == "cuda" and runtime.dtype == torch.float16:
        return torch.amp.GradScaler("cuda")
    return None


@dataclass
class EpochResult:
    loss: float
    accuracy: float
    f1: float


def batches(n: int, batch_size: int, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
    """Index batches over n items: shuffled by `generator`, or in order when it is None."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    yield from order.split(batch_size)


def prefetched(inputs, order: list[torch.Tensor], pin: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(indices, CPU batch) pairs, each batch read (and pinned, for CUDA) in a background thread
    while the one before it computes: `pread` and pinning release the GIL."""
    if not order:
        return

    def load(idx: torch.Tensor) -> torch.Tensor:
        batch = inputs[idx]
        return batch.pin_memory() if pin else batch

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(load, order[0])
        for i, idx in enumerate(order):
            batch = pending.result()
            if i + 1 < len(order):
                pending = pool.submit(load, order[i + 1])
            yield idx, batch


def summarize(loss_sum: float, labels: np.ndarray, preds: np.ndarray) -> EpochResult:
    """Mean loss, accuracy (subset accuracy for multi-label rows) and macro F1."""
    exact = (labels == preds) if labels.ndim == 1 else (labels == preds).all(1)
    return EpochResult(
        loss=loss_sum / max(len(labels), 1),
        accuracy=float(exact.mean()) if len(labels) else 0.0,
        f1=float(f1_score(labels, preds, average="macro", zero_division=0)),
    )


def train_epoch(
    model: nn.Module,
    inputs,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable,
    decide: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    generator: torch.Generator,
    runtime: Runtime,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    *,
    epoch: int = 1,
    scaler: torch.amp.GradScaler | None = None,
    freeze_mode="none",
    dist: Distributed = SINGLE,
) -> EpochResult:
    """One pass over the training inputs in a seeded random order.

    `inputs[idx]` gives a CPU batch (uint8 images from the store, or cached features) and
    `prepare` turns it into the model's input on the device (augmenting it when asked).
    `decide` turns logits into predicted labels for the running accuracy and F1. `scaler`
    (from `make_grad_scaler`, one per run) scales fp16 losses; None means no scaling.
    Raises NonFiniteLossError naming the epoch and batch when the loss is NaN or infinite.
    Under `dist`, each process trains on its share of every batch (a batch smaller than the
    number of processes is left out) and the returned scores cover all processes.
    """
    train_mode(model, freeze_mode)
    loss_sums, seen_labels, seen_preds = [], [], []
    order = [dist.share(b) for b in batches(len(labels), batch_size, generator) if len(b) >= dist.world]
    loader = prefetched(inputs, order, pin=runtime.device.type == "cuda")
    quiet = not dist.is_main
    progress = tqdm(loader, total=len(order), desc=f"epoch {epoch}", unit="batch", leave=False, disable=quiet)
    for batch, (idx, cpu_batch) in enumerate(progress, start=1):
        x = prepare(cpu_batch)
        y = labels[idx].to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits = model(x)
            loss = loss_fn(logits.float(), y)
        if not torch.isfinite(loss):  # the one wait for the device per batch
            lr = optimizer.param_groups[0]["lr"]
            raise NonFiniteLossError(
                f"train: loss is {loss.item()} at epoch {epoch}, batch {batch}/{len(order)} (lr {lr:g}); "
                f"training stopped. Lower train.lr (e.g. to {lr / 10:g}) and run again."
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        loss_sums.append(loss.detach() * len(idx))  # stays on the device until the epoch ends
        seen_labels.append(y)
        seen_preds.append(decide(logits.detach().float()))
    loss_sum = np.array([torch.stack(loss_sums).sum().item() if loss_sums else 0.0])
    seen = (loss_sum, torch.cat(seen_labels).cpu().numpy(), torch.cat(seen_preds).cpu().numpy())
    loss_sum, all_labels, all_preds = dist.concat_arrays(*seen) if dist.active else seen
    return summarize(float(loss_sum.sum()), all_labels, all_preds)


@torch.inference_mode()
def predict_logits(
    model: nn.Module, inputs, batch_size: int, runtime: Runtime, prepare: Callable | None = None
) -> torch.Tensor:
    """Logits for every input, in order, with the model in eval mode (float32, on the CPU).

    `inputs[idx]` gives CPU batches; `prepare` defaults to `runtime.images` (uint8 images).
    """
    model.eval()
    prepare = prepare or runtime.images
    out = []
    order = list(batches(len(inputs), batch_size, None))
    for _, batch in prefetched(inputs, order, runtime.device.type == "cuda"):
        with runtime.autocast():
            out.append(model(prepare(batch)).float())
    return torch.cat(out).cpu() if out else torch.empty(0)


def evaluate_epoch(
    model: nn.Module,
    inputs,
    labels: torch.Tensor,
    loss_fn: Callable,
    decide: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    runtime: Runtime,
    prepare: Callable | None = None,
    dist: Distributed = SINGLE,
) -> EpochResult:
    """Loss, accuracy and F1 over all inputs; under `dist`, each process scores a share."""
    mine = dist.share(torch.arange(len(inputs)))
    part = predict_logits(model, Rows(inputs, mine) if dist.active else inputs, batch_size, runtime, prepare)
    logits = dist.gather_rows(part, len(inputs))
    loss = loss_fn(logits, labels).item() * len(labels)
    return summarize(loss, labels.numpy(), decide(logits).numpy())
