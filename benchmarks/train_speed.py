"""`python -m benchmarks.train_speed`: the pipeline's training step and scoring against plain PyTorch,
same model, precision, memory format and batch, measured in one run.

- plain step: a batch already on the device and already normalised, forward + loss + backward +
  fused SGD (momentum 0.9), never waiting for the device; eager, and with `--compile` compiled (with
  `--cuda-graphs` also compiled with mode "reduce-overhead": replayed as CUDA graphs);
- pipeline: `cxr.train.loop.train_epoch` over one-channel uint8 images on the CPU, as the decoded
  store gives them (copy to the device, normalisation, step, non-finite checks, decisions), with
  the optimizer `cxr.train.optim` builds; eager, and with `--compile` its compiled whole step;
- scoring: `cxr.model.inference.predict_logits` over uint8 images against a plain eval-mode forward
  of a normalised batch on the device (eager, compiled), at `--eval-batch-size`.

Prints one table row per model and batch size with each rate and the pipeline's ratio to the best
plain figure, then one line of JSON with every figure, the device, torch version and batch sizes.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
from torch import nn

from benchmarks.throughput import cpu_name, sync
from cxr.model.inference import CUDA_GRAPHS, Runtime, compiled, predict_logits
from cxr.model.networks import build_model
from cxr.train.loop import Fit, train_epoch
from cxr.train.optim import fused_where_possible

MODE_TAGS = {False: "eager", True: "compiled", CUDA_GRAPHS: "graphed"}  # train.compile -> the figures' names


def _model(arch: str, runtime: Runtime, image_size: int) -> nn.Module:
    torch.manual_seed(0)
    return runtime.prepare_model(build_model(arch, 2, (64,), 0.2, image_size))


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    params = list(model.parameters())
    return torch.optim.SGD(params, lr=0.001, momentum=0.9, **fused_where_possible(torch.optim.SGD, params))


def _rate(run: Callable[[int], None], device: torch.device, batch: int, steps: int, warmup: int) -> float:
    """Images/s of `run(steps)` batches after `run(warmup)` (cuDNN autotuning, compilation, allocator
    warm-up), timed with the device synchronised at both ends."""
    run(warmup)
    sync(device)
    start = time.perf_counter()
    run(steps)
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def plain_step(arch: str, runtime: Runtime, args, batch: int, mode: bool | str) -> float:
    """The reference: what the same model trains at with nothing around it."""
    model = _model(arch, runtime, args.image_size)
    net = compiled(model, mode)
    optimizer = _sgd(model)
    x = runtime.images(torch.randint(0, 256, (batch, 1, args.image_size, args.image_size), dtype=torch.uint8))
    y = torch.randint(0, 2, (batch,), device=runtime.device)
    model.train()

    def steps(count: int) -> None:
        for _ in range(count):
            with runtime.autocast():
                loss = nn.functional.cross_entropy(net(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return _rate(steps, runtime.device, batch, args.steps, args.warmup)


def pipeline_step(arch: str, runtime: Runtime, args, batch: int, mode: bool | str) -> float:
    """`train_epoch` as the train stage runs it on uint8 store rows."""
    model = _model(arch, runtime, args.image_size)
    n = batch * max(args.steps, args.warmup)
    images = torch.randint(0, 256, (n, 1, args.image_size, args.image_size), dtype=torch.uint8)
    labels = torch.randint(0, 2, (n,))
    fit = Fit(
        net=model,
        model=model,
        optimizer=_sgd(model),
        loss_fn=nn.CrossEntropyLoss(),
        decide=lambda logits: logits.argmax(1),
        runtime=runtime,
        prepare=runtime.to_device,
        prepare_eval=runtime.images,
        scaler=runtime.grad_scaler(),
        normalise=runtime.normalise,
        compile=mode,
        check_every=args.check_every,
    )
    generator = torch.Generator().manual_seed(0)

    def epoch(count: int) -> None:
        rows = count * batch
        train_epoch(fit, images[:rows], labels[:rows], batch, generator)

    return _rate(epoch, runtime.device, batch, args.steps, args.warmup)


def plain_scoring(arch: str, runtime: Runtime, args, mode: bool | str) -> float:
    model = _model(arch, runtime, args.image_size).eval()
    net = compiled(model, mode)
    batch = args.eval_batch_size
    x = runtime.images(torch.randint(0, 256, (batch, 1, args.image_size, args.image_size), dtype=torch.uint8))

    @torch.inference_mode()
    def steps(count: int) -> None:
        for _ in range(count):
            with runtime.autocast():
                net(x).float()

    return _rate(steps, runtime.device, batch, args.steps, args.warmup)


def pipeline_scoring(arch: str, runtime: Runtime, args, mode: bool | str) -> float:
    model = _model(arch, runtime, args.image_size)
    batch = args.eval_batch_size
    images = torch.randint(0, 256, (batch * max(args.steps, args.warmup), 1, args.image_size, args.image_size),
                           dtype=torch.uint8)  # fmt: skip

    def score(count: int) -> None:
        predict_logits(model, images[: count * batch], batch, runtime, compile=mode)

    return _rate(score, runtime.device, batch, args.steps, args.warmup)


def measure(arch: str, runtime: Runtime, args, batch: int) -> dict:
    """Every figure of one model at one training batch size; ratios are pipeline / best plain."""
    modes = [False] + [True] * args.compile + [CUDA_GRAPHS] * args.cuda_graphs
    out = {}
    for mode in modes:
        tag = MODE_TAGS[mode]
        out[f"plain_{tag}"] = round(plain_step(arch, runtime, args, batch, mode), 1)
        out[f"pipeline_{tag}"] = round(pipeline_step(arch, runtime, args, batch, mode), 1)
        out[f"plain_scoring_{tag}"] = round(plain_scoring(arch, runtime, args, mode), 1)
        out[f"pipeline_scoring_{tag}"] = round(pipeline_scoring(arch, runtime, args, mode), 1)

    def best(prefix: str, scoring: bool) -> float:
        return max(v for k, v in out.items() if k.startswith(prefix) and ("scoring" in k) == scoring)

    out["train_ratio"] = round(best("pipeline_", False) / best("plain_", False), 3)
    out["scoring_ratio"] = round(best("pipeline_scoring", True) / best("plain_scoring", True), 3)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["resnet18", "vgg16"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[64, 256, 512], help="training batch sizes")
    parser.add_argument("--eval-batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=80, help="timed batches per setting (20 varied by 6%%)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--check-every", type=int, default=25, help="train.finite_check_every")
    parser.add_argument("--compile", action="store_true", help="also time compiled plain and pipeline steps")
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="also time both compiled with mode reduce-overhead (train.compile: reduce-overhead)",
    )
    parser.add_argument("--precision", default="auto", help="train.precision of every setting")
    args = parser.parse_args(argv)

    runtime = Runtime.select(args.precision)
    name = torch.cuda.get_device_name() if runtime.device.type == "cuda" else cpu_name()
    result: dict = {"device": name, "torch": torch.__version__, "dtype": str(runtime.dtype or torch.float32),
                    "image_size": args.image_size, "eval_batch_size": args.eval_batch_size, "runs": {}}  # fmt: skip
    print(f"{name}, torch {torch.__version__}, {result['dtype']}, channels_last={runtime.channels_last}, "
          f"{args.image_size} px: images/s ({args.steps} timed batches after {args.warmup})")  # fmt: skip
    for arch in args.archs:
        for batch in args.batch_size:
            figures = measure(arch, runtime, args, batch)
            result["runs"][f"{arch}@{batch}"] = figures
            print(f"{arch} batch {batch}: " + ", ".join(f"{k} {v}" for k, v in figures.items()), flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
