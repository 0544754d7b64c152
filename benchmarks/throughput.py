"""`python -m benchmarks.throughput`: the pipeline's training and evaluation against the notebook way.

Both run in this process, on the same generated data: demo phantoms stored as 1024 px PNGs
(the size of the published datasets' files), trained at 224 px. The baseline is written the
way the course notebooks (and torchvision's transfer-learning tutorial) do it: `ImageFolder`
with PIL transforms decoding every file in every epoch, a DataLoader, a plain fp32 loop, and
the frozen CNN's forward pass in every epoch. The pipeline runs its own code: the decode-once
store (`cxr/data/store.py`), the feature cache (`cxr/train/features.py`), `cxr/train/loop.py`'s loops with
channels_last, inference mode and, on CUDA, mixed precision.

Cases: (a) Task 1, ResNet18 frozen with a new head, 10 epochs, from the PNGs (the pipeline's
time includes decoding every split once and extracting the features); (b) one epoch of full
ResNet18 fine-tuning (the store is built once per dataset and image size and shared by every
epoch and experiment, so it is timed separately); (c) scoring the test split. The machine's
fp32 matmul rate is measured too, and the pipeline's ResNet18 training rate reported as a
fraction of it. Prints a table, then one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision import datasets, transforms

from cxr.config import parse_params
from cxr.data.decoding import build_store
from cxr.data.demo import write_demo_dataset
from cxr.data.store import SplitStore
from cxr.model.decisions import decide, probabilities
from cxr.model.inference import IMAGENET_MEAN, IMAGENET_STD, Runtime, predict_logits
from cxr.model.losses import make_loss
from cxr.model.networks import build_model, freeze, head_name
from cxr.train.features import EXTRACT_BATCH, extract
from cxr.train.loop import Fit, train_epoch

REPO = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable, device: torch.device):
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


def make_data(root: Path, train_per_class: int, test_per_class: int, size: int) -> Path:
    """Demo phantoms as PNGs under root/{train,val,test}/{class}; reused when already complete."""
    done = root / ".complete"
    if done.is_file():
        return root
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["demo"].update(
        image_size=size, train_per_class=train_per_class, val_per_class=4, test_per_class=test_per_class
    )
    params = parse_params(raw)
    write_demo_dataset(root, params.data, params.seed)
    done.touch()
    return root


def new_model(hidden: int, image_size: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet18", 2, (hidden,), 0.2, image_size)


# ---------------------------------------------------------------- the notebook way
def notebook_loader(folder: Path, image_size: int, batch_size: int, workers: int, shuffle: bool) -> DataLoader:
    transform = transforms.Compose(
        [
            transforms.Resize((image_size, image_size)),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    dataset = datasets.ImageFolder(str(folder), transform=transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers)


def notebook_train(model: nn.Module, loader: DataLoader, epochs: int, lr: float, device: torch.device) -> None:
    model.to(device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()


def notebook_eval(model: nn.Module, loader: DataLoader, device: torch.device) -> torch.Tensor:
    model.to(device).eval()
    outs = []
    with torch.no_grad():
        for x, _ in loader:
            outs.append(model(x.to(device)).cpu())
    return torch.cat(outs)


# ---------------------------------------------------------------- the pipeline
def fit_epoch(model, inputs, labels, optimizer, batch_size: int, generator, runtime: Runtime, prepare, epoch=1):
    """One epoch of `cxr.train.loop.train_epoch` with two-class cross-entropy, as every benchmark trains."""
    fit = Fit(
        net=model,
        model=model,
        optimizer=optimizer,
        loss_fn=make_loss("ce", 2),
        decide=lambda z: decide(probabilities(z, "ce"), ("infected", "normal"), False),
        runtime=runtime,
        prepare=prepare,
        prepare_eval=prepare,
        scaler=runtime.grad_scaler(),
    )
    train_epoch(fit, inputs, labels, batch_size, generator, epoch=epoch)


def pipeline_frozen(raw: Path, store_dir: Path, hidden: int, args, runtime: Runtime) -> float:
    """Decode once, extract once, train the head for args.epochs epochs; returns the decode time."""
    _, decode_s = timed(lambda: build_store(raw, store_dir, args.image_size, multilabel=False), runtime.device)
    images = SplitStore(store_dir, "train")
    model = new_model(hidden, args.image_size, args.seed)
    freeze(model, "backbone")
    runtime.prepare_model(model)
    feats = extract(model, images, EXTRACT_BATCH, runtime)
    head = model.get_submodule(head_name(model))
    optimizer = torch.optim.SGD(head.parameters(), lr=args.lr, momentum=0.9)
    labels, generator = torch.from_numpy(images.labels), torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        fit_epoch(head, feats, labels, optimizer, args.batch_size, generator, runtime, runtime.features, epoch + 1)
    return decode_s


def pipeline_finetune(store_dir: Path, hidden: int, args, runtime: Runtime) -> nn.Module:
    images = SplitStore(store_dir, "train")
    model = runtime.prepare_model(new_model(hidden, args.image_size, args.seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    labels, generator = torch.from_numpy(images.labels), torch.Generator().manual_seed(args.seed)
    fit_epoch(model, images, labels, optimizer, args.batch_size, generator, runtime, runtime.images)
    return model


# ---------------------------------------------------------------- machine figures
def matmul_flops(device: torch.device, sizes: tuple[int, ...] = (1024, 2048, 4096), tries: int = 5) -> float:
    """The fp32 matrix-product ceiling (FLOP/s): the best of `tries` timings of each of several large
    square products, at the process's thread count (torch.get_num_threads()). One small product
    timed a few times can land below what training reaches (a fraction above 1); the best large one
    is what the cores can do."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        a @ b  # warm-up: thread pool, caches
        repeats = max(1, (2048 // n) ** 3)  # about the same work per timing for every size
        for _ in range(tries):
            _, seconds = timed(lambda a=a, b=b, r=repeats: [a @ b for _ in range(r)], device)
            best = max(best, 2 * n**3 * repeats / seconds)
    return best


def training_flops_per_image(image_size: int, batch: int, runtime: Runtime) -> float:
    """FLOPs of one ResNet18 training step (forward and backward), per image, counted by PyTorch."""
    model = runtime.prepare_model(new_model(64, image_size, 0))
    x = torch.randn(batch, 3, image_size, image_size, device=runtime.device)
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(model(x), torch.zeros(batch, dtype=torch.long, device=runtime.device)).backward()
    return counter.get_total_flops() / batch


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "CPU"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-per-class", type=int, default=120, help="training images per class (2 classes)")
    parser.add_argument("--test-per-class", type=int, default=60)
    parser.add_argument("--file-size", type=int, default=1024, help="side of the stored PNGs")
    parser.add_argument("--image-size", type=int, default=224, help="side the CNN sees")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of case (a)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="baseline DataLoader workers")
    parser.add_argument("--data", type=Path, default=REPO / ".bench", help="where generated data is kept")
    parser.add_argument("--skip", nargs="*", default=[], choices=["frozen", "finetune", "eval"])
    args = parser.parse_args(argv)

    runtime = Runtime.select()
    device = runtime.device
    n = 2 * args.train_per_class
    raw = make_data(
        args.data / f"png{args.file_size}-{args.train_per_class}-{args.test_per_class}",
        args.train_per_class,
        args.test_per_class,
        args.file_size,
    )
    store_dir = args.data / "store"
    name = torch.cuda.get_device_name() if device.type == "cuda" else cpu_name()
    print(
        f"device: {device} ({name}), {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"pipeline precision {runtime.dtype or torch.float32}, baseline fp32 with {args.workers} DataLoader workers"
    )
    print(
        f"data: {n} training and {2 * args.test_per_class} test PNGs of {args.file_size} px, "
        f"trained at {args.image_size} px"
    )
    rows, result, decode_s = [], {}, None

    def row(case: str, base_s: float, pipe_s: float, images: int) -> float:
        speedup = base_s / pipe_s
        rows.append((case, base_s, pipe_s, speedup, images / base_s, images / pipe_s))
        print(f"  {case}: baseline {base_s:.2f} s, pipeline {pipe_s:.2f} s, x{speedup:.2f}", flush=True)
        return speedup

    loader = notebook_loader(raw / "train", args.image_size, args.batch_size, args.workers, shuffle=True)
    if "frozen" not in args.skip:
        model = new_model(64, args.image_size, args.seed)
        for p in model.parameters():
            p.requires_grad = False
        for p in model.fc.parameters():
            p.requires_grad = True
        _, base_s = timed(lambda: notebook_train(model, loader, args.epochs, args.lr, device), device)
        decode_s, pipe_s = timed(lambda: pipeline_frozen(raw, store_dir, 64, args, runtime), device)
        result["frozen_speedup"] = row(f"(a) ResNet18 frozen, {args.epochs} epochs", base_s, pipe_s, n * args.epochs)
        print(f"      of which decoding all splits once: {decode_s:.2f} s")
    if not (store_dir / "index.json").is_file():
        _, decode_s = timed(lambda: build_store(raw, store_dir, args.image_size, multilabel=False), device)
    if "finetune" not in args.skip:
        model = new_model(64, args.image_size, args.seed)
        _, base_s = timed(lambda: notebook_train(model, loader, 1, args.lr, device), device)
        _, pipe_s = timed(lambda: pipeline_finetune(store_dir, 64, args, runtime), device)
        result["finetune_speedup"] = row("(b) ResNet18 full fine-tuning, 1 epoch", base_s, pipe_s, n)
        if decode_s is not None:  # as if the store were built for this one epoch alone
            result["finetune_speedup_with_decode"] = base_s / (pipe_s + decode_s)
        flops = training_flops_per_image(args.image_size, args.batch_size, runtime)
        peak = matmul_flops(device)
        achieved = flops * n / pipe_s
        result["train_peak_fraction"] = achieved / peak
        result["train_images_per_s"] = n / pipe_s
        result["matmul_peak_gflops"], result["threads"] = peak / 1e9, torch.get_num_threads()
        print(
            f"      ResNet18 training: {flops / 1e9:.2f} GFLOP per image, {achieved / 1e9:.1f} GFLOP/s; "
            f"fp32 matmul peak {peak / 1e9:.1f} GFLOP/s (best large product, {torch.get_num_threads()} threads); "
            f"fraction {result['train_peak_fraction']:.2f}"
        )
    if "eval" not in args.skip:
        model = new_model(64, args.image_size, args.seed)
        test_loader = notebook_loader(raw / "test", args.image_size, 64, args.workers, shuffle=False)
        base_logits, base_s = timed(lambda: notebook_eval(model, test_loader, device), device)
        test = SplitStore(store_dir, "test")
        runtime.prepare_model(model)
        logits, pipe_s = timed(lambda: predict_logits(model, test, 64, runtime), device)
        result["eval_speedup"] = row("(c) evaluation of the test split", base_s, pipe_s, len(test))
        agree = (logits.argmax(1) == base_logits.argmax(1)).float().mean().item()
        print(f"      same decisions as the baseline on {agree:.1%} of test images")

    print()
    print(f"| case | baseline s | pipeline s | speedup | baseline img/s | pipeline img/s |   ({name})")
    print("|---|---|---|---|---|---|")
    for case, base_s, pipe_s, speedup, base_rate, pipe_rate in rows:
        print(f"| {case} | {base_s:.1f} | {pipe_s:.1f} | {speedup:.2f} | {base_rate:.1f} | {pipe_rate:.1f} |")
    if decode_s is not None:
        print(f"decoding every split once into the store: {decode_s:.1f} s")
    result = {k: round(v, 3) for k, v in result.items()}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
