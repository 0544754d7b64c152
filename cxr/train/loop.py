"""The training and validation loops: batches of stored images or cached features, on any device."""

from __future__ import annotations

import copy
import ctypes
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn

from cxr.errors import PipelineError
from cxr.model.inference import Runtime, batches, compiled, predict_logits, prefetched
from cxr.model.networks import train_mode
from cxr.progress import progress
from cxr.train.averaging import WeightAverage
from cxr.train.distributed import Distributed, Rows

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return the generator that orders training batches."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


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


@dataclass
class EpochResult:
    loss: float
    accuracy: float
    f1: float


@dataclass
class Fit:
    """What the loops need, built once per run.

    `net` is what takes optimisation steps (the model, or its head alone on cached features;
    wrapped in DistributedDataParallel where asked) and `model` the plain module validation runs.
    `prepare` turns a CPU batch into the input on the device (augmenting it), `normalise` turns that
    into the network's input inside the step (compiled with it under `compile`), `prepare_eval`
    does both without augmentation. `decide` turns logits into labels (cxr.model.decisions).
    `scaler` scales fp16 losses and does nothing when disabled. `check_every`: steps between looks
    at the device's non-finite-loss flags (train.finite_check_every).
    """

    net: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable
    decide: Callable[[torch.Tensor], torch.Tensor]
    runtime: Runtime
    prepare: Callable[[torch.Tensor], torch.Tensor]
    prepare_eval: Callable[[torch.Tensor], torch.Tensor]
    scaler: torch.amp.GradScaler
    freeze_mode: str | list = "none"
    dist: Distributed = field(default_factory=Distributed)
    average: WeightAverage = field(default_factory=WeightAverage.off)  # train.ema
    normalise: Callable[[torch.Tensor], torch.Tensor] = nn.Identity()
    compile: bool | str = False  # train.compile: false, true or "reduce-overhead" (CUDA graphs)
    sampling: torch.Tensor | None = None  # per training image, its chance of each draw (train.sampler); None: shuffle
    check_every: int = 1

    def __post_init__(self):
        # the whole forward step (input conversion, normalisation, network, loss) as one function,
        # compiled as one graph where asked; backward and the optimizer run outside it
        self.forward = compiled(self._forward, self.compile)

    def _forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.runtime.autocast():
            logits = self.net(self.normalise(x))
            loss = self.loss_fn(logits.float(), y)
        return loss, logits

    @property
    def scored(self) -> nn.Module:
        """What validation scores and the checkpoint keeps: the weight average, or the trained model."""
        return self.average.module(self.model)


class FiniteGuard:
    """Non-finite losses found without waiting for the device every batch: each step's flag stays
    on the device and is looked at every `fit.check_every` steps and at the epoch's end. A bad one
    restores the weights, optimizer, average and scaler state of the last good look, and the error
    names the first bad batch."""

    def __init__(self, fit: Fit):
        self.fit = fit
        self.losses: list[torch.Tensor] = []  # since the last good look, on the device
        self.good_batches = 0  # batches finished at the last good look
        self.good = self._snapshot()

    def _snapshot(self) -> dict:
        fit = self.fit
        return {
            "model": {k: v.detach().clone() for k, v in fit.model.state_dict().items()},
            "optimizer": copy.deepcopy(fit.optimizer.state_dict()),
            "average": copy.deepcopy(fit.average.state_dict()),
            "scaler": fit.scaler.state_dict(),
        }

    def _restore(self) -> None:
        fit = self.fit
        fit.model.load_state_dict(self.good["model"])
        fit.optimizer.load_state_dict(self.good["optimizer"])
        fit.average.load_state_dict(self.good["average"])
        if self.good["scaler"]:
            fit.scaler.load_state_dict(self.good["scaler"])

    def record(self, loss: torch.Tensor) -> None:
        self.losses.append(loss.detach())
        if len(self.losses) >= self.fit.check_every:
            self.check()

    def check(self) -> None:
        """Look at the flags (one wait for the device); raise NonFiniteLossError on a bad loss."""
        if not self.losses:
            return
        losses = torch.stack(self.losses)
        bad = ~torch.isfinite(losses)
        if bad.any():
            first = int(bad.nonzero()[0, 0])
            self._restore()
            raise NonFiniteLossError(
                f"loss is {losses[first].item()}", self.good_batches + first + 1, self.good_batches
            )
        self.good_batches += len(self.losses)
        self.losses = []
        self.good = self._snapshot()


def summarize(loss_sum: float, labels: np.ndarray, preds: np.ndarray) -> EpochResult:
    """Mean loss, accuracy (subset accuracy for multi-label rows) and macro F1; an uncertain finding (NaN)
    counts in neither: a row is exact when its known findings are, and each finding's F1 is over its known rows."""
    if labels.ndim == 2 and np.isnan(labels).any():
        known = ~np.isnan(labels)
        exact = ((labels == preds) | ~known).all(1)
        f1 = np.mean([f1_score(labels[k, i], preds[k, i], zero_division=0) for i, k in enumerate(known.T) if k.any()])
    else:
        exact = (labels == preds) if labels.ndim == 1 else (labels == preds).all(1)
        f1 = f1_score(labels, preds, average="macro", zero_division=0)
    return EpochResult(
        loss=loss_sum / max(len(labels), 1),
        accuracy=float(exact.mean()) if len(labels) else 0.0,
        f1=float(f1),
    )


def _step(fit: Fit, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step; returns (loss, logits) without waiting for the device."""
    loss, logits = fit.forward(x, y)
    fit.optimizer.zero_grad(set_to_none=True)
    fit.scaler.scale(loss).backward()
    fit.scaler.step(fit.optimizer)
    fit.scaler.update()
    fit.average.update(fit.model)
    return loss, logits


def source_balanced(sources: Sequence[str], where: str) -> torch.Tensor:
    """`train.sampler: source`: each image's chance of a draw, so that every source is drawn equally
    often (1 / (sources x its source's images)). With no source named at all (no `source` column) the
    films are one source, drawn equally; refused, naming `where`, when only some name one."""
    unnamed = sum(1 for s in sources if not s)
    if unnamed and unnamed < len(sources):
        raise PipelineError(
            f"train.sampler: source needs a `source` for every training image in labels.csv; {unnamed} of "
            f"{len(sources)} in {where} have none; fill the column or use train.sampler: shuffle"
        )
    names, index = np.unique(np.asarray(sources), return_inverse=True)
    counts = np.bincount(index)
    return torch.from_numpy(1.0 / (len(names) * counts[index])).to(torch.float64)


def epoch_order(n: int, batch_size: int, generator: torch.Generator, sampling: torch.Tensor | None):
    """An epoch's batches of training indices: a seeded shuffle, or n seeded draws with replacement
    weighted by `sampling`."""
    if sampling is None:
        return batches(n, batch_size, generator)
    return torch.multinomial(sampling, n, replacement=True, generator=generator).split(batch_size)


def train_epoch(fit: Fit, inputs, labels: torch.Tensor, batch_size: int, generator: torch.Generator, epoch: int = 1):
    """One pass over the training inputs in a seeded random order; returns an EpochResult.

    `inputs[idx]` gives a CPU batch (uint8 images from the store, or cached features). Raises
    NonFiniteLossError naming the epoch and the first bad batch when the loss is NaN or infinite
    (found within `fit.check_every` batches; the state of the last good look is restored). Under
    `fit.dist`, each process trains on its share of every batch (a batch smaller than the number
    of processes is left out) and the returned scores cover all processes.
    """
    dist, runtime = fit.dist, fit.runtime
    train_mode(fit.model, fit.freeze_mode, frozen_bn_eval=True)
    loss_sums, seen_labels, seen_preds = [], [], []
    # a last batch leaving a process one image is left out: BatchNorm cannot train on one value per channel
    order = [dist.share(b) for b in epoch_order(len(labels), batch_size, generator, fit.sampling)
             if len(b) >= 2 * dist.world]  # fmt: skip
    loader = prefetched(inputs, order, runtime.device, labels=labels)
    bar = progress(loader, total=len(order), desc=f"epoch {epoch}", unit="batch", leave=False, disable=not dist.is_main)
    guard = FiniteGuard(fit)
    try:
        for idx, cpu_batch, cpu_labels in bar:
            y = runtime.to_device(cpu_labels)
            loss, logits = _step(fit, fit.prepare(cpu_batch), y)
            guard.record(loss)
            loss_sums.append(loss.detach() * len(idx))  # stays on the device until the epoch ends
            seen_labels.append(y)
            seen_preds.append(fit.decide(logits.detach().float()))
        guard.check()
    except NonFiniteLossError as exc:
        what, first, restored = exc.args
        lr = fit.optimizer.param_groups[0]["lr"]
        raise NonFiniteLossError(
            f"train: {what} at epoch {epoch}, batch {first}/{len(order)} (lr {lr:g}); training stopped "
            f"(the weights after batch {restored} restored). Lower train.lr (e.g. to {lr / 10:g}) and run again."
        ) from None
    loss_sum = np.array([torch.stack(loss_sums).sum().item() if loss_sums else 0.0])
    seen = (loss_sum, torch.cat(seen_labels).cpu().numpy(), torch.cat(seen_preds).cpu().numpy())
    loss_sum, all_labels, all_preds = dist.concat_arrays(*seen) if dist.active else seen
    return summarize(float(loss_sum.sum()), all_labels, all_preds)


def evaluate_epoch(fit: Fit, inputs, labels: torch.Tensor, batch_size: int) -> EpochResult:
    """Loss, accuracy and F1 of `fit.scored` over all inputs; under `fit.dist`, each process scores a share."""
    dist = fit.dist
    mine = dist.share(torch.arange(len(inputs)))
    rows = Rows(inputs, mine) if dist.active else inputs
    logits = dist.gather_rows(predict_logits(fit.scored, rows, batch_size, fit.runtime, fit.prepare_eval), len(inputs))
    loss = fit.loss_fn(logits, labels).item() * len(labels)
    return summarize(loss, labels.numpy(), fit.decide(logits).numpy())
