"""Where and how a network runs (device, precision, memory format) and batched inference:
shared by training, evaluation, feature caching and prediction, with no training loop in it."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import platform
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn

from cxr.errors import ConfigError, PipelineError

# ImageNet statistics: what torchvision's pretrained weights expect, stored in each checkpoint.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@functools.lru_cache(maxsize=16)
def _channel_stats(mean: tuple, std: tuple, device: torch.device, dtype: torch.dtype):
    # made once per device: building them per batch would copy to the GPU and wait for it every batch
    view = (1, len(mean), 1, 1)
    return torch.tensor(mean, dtype=dtype).view(view).to(device), torch.tensor(std, dtype=dtype).view(view).to(device)


def standardize(batch: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Float images in [0, 1] (N, 3, H, W), standardised per channel."""
    m, s = _channel_stats(tuple(mean), tuple(std), batch.device, batch.dtype)
    return (batch - m) / s


CUDA_GRAPHS = "reduce-overhead"  # train.compile's value for compiled code replayed as CUDA graphs


def compiled(fn: Callable, how: bool | str) -> Callable:
    """`fn` as train.compile asks: itself (false), compiled by torch.compile (true), or compiled with its
    kernels replayed as CUDA graphs ("reduce-overhead": fewer kernel launches, for small batches where they
    dominate; a plain compile off CUDA). Graph replays reuse their output memory, so each call starts a new
    step and returns copies: a loss or logits kept from one call stay valid after the next."""
    if not how:
        return fn
    if how != CUDA_GRAPHS:
        return torch.compile(fn)
    graphed = torch.compile(fn, mode=CUDA_GRAPHS)

    def replay(*args):
        torch.compiler.cudagraph_mark_step_begin()
        out = graphed(*args)
        return tuple(t.clone() for t in out) if isinstance(out, tuple) else out.clone()

    return replay


def select_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        for line in open("/proc/cpuinfo"):  # noqa: SIM115 - read until the first match
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pin_compute(threads: int = 0, deterministic: bool = False) -> dict:
    """Apply `train.threads` (0: torch's default, one per core) and `train.deterministic` to this process;
    return what it computes with, for the run's metrics. The thread count changes a CPU run's results
    (the order of floating-point sums), so it is a tracked param; `deterministic` asks PyTorch for
    deterministic kernels (on CUDA: cuBLAS workspace config, no cuDNN autotuning) and warns where an op has none."""
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    device = select_device()
    return {
        "threads": torch.get_num_threads(),
        "deterministic": deterministic,
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


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
    mean: tuple[float, ...] = IMAGENET_MEAN  # the input scaling the network was trained with (its spec's):
    std: tuple[float, ...] = IMAGENET_STD  # one entry per input channel

    def scaled(self, spec) -> Runtime:
        """This runtime feeding the network of `spec` (a ModelSpec): its channels and input scaling."""
        return dataclasses.replace(self, mean=tuple(spec.mean), std=tuple(spec.std))

    @classmethod
    def select(cls, precision: str = "auto", device: torch.device | None = None) -> Runtime:
        device = device or select_device()
        return cls(device, amp_dtype(device, precision))

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler that works where autocast uses fp16 (CUDA without bf16) and does nothing elsewhere."""
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """A CPU batch (pinned where it can be) on the device, as it is (uint8 images stay uint8)."""
        return batch.to(self.device, non_blocking=True)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Images on the device, uint8 or float in [0, 1] (B, 1 or 3, H, W) -> the standardised float
        input the network takes: 3 channels with ImageNet's statistics (a one-channel radiograph repeated into
        three), or 1 channel in [-1024, 1024] for torchxrayvision's (`mean`, `std`).
        Pure tensor arithmetic, so it compiles into the training step (train.compile)."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if x.shape[1] == 1 and len(self.mean) > 1:
            x = x.expand(-1, len(self.mean), -1, -1)
        x = standardize(x, self.mean, self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def unit(self, batch: torch.Tensor) -> torch.Tensor:
        """A CPU uint8 batch on the device as float in [0, 1], ready to augment."""
        return self.to_device(batch).float().div_(255.0)

    def images(self, batch: torch.Tensor, augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """uint8 images (B, 1 or 3, H, W) on the CPU -> standardised 3-channel float input on the
        device, augmented first where `augment` is given."""
        x = augment(self.unit(batch)) if augment is not None else self.to_device(batch)
        return self.normalise(x)

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """Cached feature rows: only moved to the device."""
        return batch.to(self.device, non_blocking=True)


def batches(n: int, batch_size: int, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
    """Index batches over n items: shuffled by `generator`, or in order when it is None."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    yield from order.split(batch_size)


def prefetched(
    inputs, order: list[torch.Tensor], device: torch.device, labels: torch.Tensor | None = None
) -> Iterator[tuple]:
    """(indices, batch) pairs, or (indices, batch, its labels) with `labels`, each read in a
    background thread while the one before it computes (`pread` and pinning release the GIL). On
    CUDA the batch is pinned and copied to the device there too, on a stream of its own, so the
    copy overlaps the previous batch's compute instead of queueing before it; elsewhere the batch
    stays on the CPU."""
    if not order:
        return
    copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def load(idx: torch.Tensor) -> tuple[tuple, torch.cuda.Event | None]:
        parts = (inputs[idx],) if labels is None else (inputs[idx], labels[idx])
        if copy_stream is None:
            return parts, None
        with torch.cuda.stream(copy_stream):
            parts = tuple(part.pin_memory().to(device, non_blocking=True) for part in parts)
            done = torch.cuda.Event()
            done.record(copy_stream)
        return parts, done

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(load, order[0])
        for i, idx in enumerate(order):
            parts, done = pending.result()
            if done is not None:  # compute waits for this copy only, on the device, not the host
                stream = torch.cuda.current_stream(device)
                stream.wait_event(done)
                for part in parts:
                    part.record_stream(stream)  # the allocator must not reuse it before compute is done
            if i + 1 < len(order):
                pending = pool.submit(load, order[i + 1])
            yield (idx, *parts)


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    inputs,
    batch_size: int,
    runtime: Runtime,
    prepare: Callable | None = None,
    compile: bool | str = False,
) -> torch.Tensor:
    """Logits for every input, in order, with the model in eval mode (float32, on the CPU).

    `inputs[idx]` gives CPU batches; without `prepare` they are uint8 images, copied to the device as
    they are and normalised inside the forward function, which `compile` compiles as one graph
    (`compiled`: true, or "reduce-overhead" for CUDA graphs).
    """
    model.eval()
    if prepare is None:
        prepare, forward = runtime.to_device, lambda x: model(runtime.normalise(x))
    else:
        forward = model
    forward = compiled(forward, compile)
    out = []
    order = list(batches(len(inputs), batch_size, None))
    for _, batch in prefetched(inputs, order, runtime.device):
        with runtime.autocast():
            out.append(forward(prepare(batch)).float())
    return torch.cat(out).cpu() if out else torch.empty(0)


# Test-time augmentation: each view is a function of the uint8 batch (B, C, H, W) before preparation.
TTA_VIEWS = {"none": (lambda b: b,), "hflip": (lambda b: b, lambda b: b.flip(-1))}


def predict_probabilities(
    model: nn.Module, inputs, batch_size: int, runtime: Runtime, to_probs: Callable, tta: str = "none"
) -> torch.Tensor:
    """Class probabilities for every image, averaged over the `evaluate.tta` views of each
    (`to_probs` turns logits into probabilities, e.g. ModelSpec.probabilities)."""
    views = TTA_VIEWS[tta]
    total = None
    for view in views:
        logits = predict_logits(model, inputs, batch_size, runtime, lambda b, v=view: runtime.images(v(b)))
        probs = to_probs(logits)
        total = probs if total is None else total + probs
    if total is not None and not torch.isfinite(total).all():
        raise NonFiniteOutputError(
            f"the model gives non-finite probabilities for {int((~torch.isfinite(total)).any(1).sum())} of "
            f"{len(total)} images: its weights are broken (a diverged run); retrain with a lower train.lr"
        )
    return total / len(views)


class NonFiniteOutputError(PipelineError, ArithmeticError):
    """A model whose outputs are NaN or infinite: scores and decisions from it would be meaningless."""
