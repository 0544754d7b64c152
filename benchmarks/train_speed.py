"""`python -m benchmarks.train_speed`: training images/s of ResNet18 and VGG16, plain fp32 vs the pipeline.

Random uint8 images go through `cxr.train.loop.train_epoch` exactly as the store's rows do, so the
figure includes normalisation and the host-to-device copy. Two settings per model: plain fp32 in
the default memory format, and the pipeline's own (channels_last, plus mixed precision on
CUDA); `--compile` adds torch.compile. Prints a table, then one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from benchmarks.throughput import cpu_name, fit_epoch, sync
from cxr.model.inference import Runtime
from cxr.model.networks import build_model


def images_per_second(arch: str, runtime: Runtime, args, compile_model: bool = False) -> float:
    torch.manual_seed(0)
    model = runtime.prepare_model(build_model(arch, 2, (64,), 0.2, args.image_size))
    net = torch.compile(model) if compile_model else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    n = args.batch_size * args.steps
    images = torch.randint(0, 256, (n, 3, args.image_size, args.image_size), dtype=torch.uint8)
    labels = torch.randint(0, 2, (n,))
    generator = torch.Generator().manual_seed(0)

    def epoch(count: int) -> None:
        rows = count * args.batch_size
        fit_epoch(net, images[:rows], labels[:rows], optimizer, args.batch_size, generator, runtime, runtime.images)

    return _rate(epoch, runtime, args)


def _rate(run: Callable[[int], None], runtime: Runtime, args) -> float:
    """Images/s of `run(args.steps)` batches after `run(args.warmup)` (cuDNN autotuning, compilation,
    allocator warm-up), timed with the device synchronised at both ends."""
    run(args.warmup)
    sync(runtime.device)
    start = time.perf_counter()
    run(args.steps)
    sync(runtime.device)
    return args.steps * args.batch_size / (time.perf_counter() - start)


def model_only(arch: str, runtime: Runtime, args) -> float:
    """The same training steps on one batch already on the device, never waiting for the loss:
    the ceiling the data path and the per-batch loss check are measured against."""
    torch.manual_seed(0)
    model = runtime.prepare_model(build_model(arch, 2, (64,), 0.2, args.image_size))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    x = runtime.images(torch.randint(0, 256, (args.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8))
    y = torch.randint(0, 2, (args.batch_size,), device=runtime.device)
    model.train()

    def steps(count: int) -> None:
        for _ in range(count):
            with runtime.autocast():
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return _rate(steps, runtime, args)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["resnet18", "vgg16"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed batches per setting")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args(argv)

    pipeline = Runtime.select()
    plain = Runtime(pipeline.device, None, channels_last=False)
    name = torch.cuda.get_device_name() if pipeline.device.type == "cuda" else cpu_name()
    settings = [("fp32", plain, False), (f"channels_last + {pipeline.dtype or 'fp32'}", pipeline, False)]
    if args.compile:
        settings.append((f"channels_last + {pipeline.dtype or 'fp32'} + compile", pipeline, True))
    print(f"{name}: training images/s at {args.image_size} px, batch {args.batch_size}, {args.steps} timed batches")
    print("| model | " + " | ".join(s[0] for s in settings) + " | model steps alone, batch on the device |")
    print("|---" * (len(settings) + 2) + "|")
    result = {"device": name}
    for arch in args.archs:
        rates = [images_per_second(arch, runtime, args, compiled) for _, runtime, compiled in settings]
        ceiling = model_only(arch, pipeline, args)
        print(f"| {arch} | " + " | ".join(f"{r:.1f}" for r in rates) + f" | {ceiling:.1f} |", flush=True)
        result[arch] = {label: round(rate, 1) for (label, _, _), rate in zip(settings, rates, strict=True)}
        result[arch]["model_only"] = round(ceiling, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
