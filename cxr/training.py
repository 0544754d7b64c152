"""The training and inference loops over in-memory uint8 image tensors."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn
from tqdm import tqdm

from cxr.errors import PipelineError
from cxr.images import normalize
from cxr.models import train_mode


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return the generator that orders training batches."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def select_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA (bf16 where supported, else fp16); full fp32 on the CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


class NonFiniteLossError(PipelineError, FloatingPointError):
    """The loss became NaN or infinite: training stops at once instead of producing garbage."""


def make_grad_scaler(device: torch.device) -> torch.amp.GradScaler | None:
    """A loss scaler where autocast uses fp16 (CUDA without bf16); None elsewhere."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
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
    pixels: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable,
    decide: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    epoch: int = 1,
    scaler: torch.amp.GradScaler | None = None,
) -> EpochResult:
    """One pass over the training images in a seeded random order.

    `decide` turns logits into predicted labels for the running accuracy and F1. `scaler` (from
    `make_grad_scaler`, one per run) scales fp16 losses on CUDA; None means no scaling.
    Raises NonFiniteLossError naming the epoch and batch when the loss is NaN or infinite.
    """
    train_mode(model)
    loss_sum, seen_labels, seen_preds = 0.0, [], []
    order = list(batches(len(labels), batch_size, generator))
    for batch, idx in enumerate(tqdm(order, desc=f"epoch {epoch}", unit="batch", leave=False), start=1):
        x = normalize(pixels[idx].to(device, non_blocking=True))
        y = labels[idx].to(device, non_blocking=True)
        with autocast(device):
            logits = model(x)
            loss = loss_fn(logits.float(), y)
        if not torch.isfinite(loss):
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
        loss_sum += loss.item() * len(idx)
        seen_labels.append(y.cpu())
        seen_preds.append(decide(logits.detach().float()).cpu())
    return summarize(loss_sum, torch.cat(seen_labels).numpy(), torch.cat(seen_preds).numpy())


@torch.inference_mode()
def predict_logits(model: nn.Module, pixels: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Logits for every image, in order, with the model in eval mode (float32, on the CPU)."""
    model.eval()
    out = []
    for idx in batches(len(pixels), batch_size, None):
        with autocast(device):
            out.append(model(normalize(pixels[idx].to(device))).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def evaluate_epoch(
    model: nn.Module,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: Callable,
    decide: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    device: torch.device,
) -> EpochResult:
    logits = predict_logits(model, pixels, batch_size, device)
    loss = loss_fn(logits, labels).item() * len(labels)
    return summarize(loss, labels.numpy(), decide(logits).numpy())
