"""One training run: data, model, optimizer, schedule, epochs, checkpoints, dvclive and resume."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch
from dvclive import Live
from torch import nn
from tqdm import tqdm

from cxr.atomic import atomic_path
from cxr.train.augment import augment_batch, is_active
from cxr.model.checkpoint import ModelSpec, save_checkpoint
from cxr.config import ConfigError, Params
from cxr.train.distributed import Distributed
from cxr.errors import PipelineError
from cxr.train.features import cache_applies, load_features
from cxr.data.images import IMAGENET_MEAN, IMAGENET_STD
from cxr.model.losses import decisions, make_loss, probabilities
from cxr.model.networks import freeze, head_name
from cxr.train.optim import make_optimizer, make_schedule
from cxr.paths import DECODED_DIR, FEATURES_DIR, LAST_PATH, MODEL_PATH, TRAIN_LIVE_DIR
from cxr.data.store import PREPROCESSING, SplitStore, StoreError
from cxr.train.loop import (
    Runtime,
    evaluate_epoch,
    make_grad_scaler,
    release_large_blocks,
    seed_everything,
    train_epoch,
)


class ResumeError(PipelineError, RuntimeError):
    """models/last.pt does not belong to the run being resumed."""


def run_signature(params: Params, classes: tuple[str, ...]) -> dict:
    """What must match for a resumed run to continue the interrupted one."""
    train = params.train.model_dump(exclude={"resume"})
    return {"seed": params.seed, "task": params.data.task, "classes": list(classes), "train": train}


def _save_last(path: Path, model, optimizer, scheduler, scaler, epoch: int, best, signature, generator) -> None:
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "epoch": epoch,  # epochs finished; also the next dvclive step
        "best": best,
        "signature": signature,
        "torch_rng": torch.get_rng_state(),
        "batch_rng": generator.get_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        torch.save(state, f)


def _load_last(path: Path, signature: dict) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["signature"] != signature:
        old, new = state["signature"], signature
        changed = sorted(
            {f"train.{k}" for k in new["train"] if old["train"].get(k) != new["train"][k]}
            | {k for k in ("seed", "task", "classes") if old[k] != new[k]}
        )
        raise ResumeError(
            f"train.resume: {path} was written by a run with different {', '.join(changed)}; "
            "set train.resume: false to start afresh, or restore the params of the interrupted run"
        )
    return state


def model_spec(params: Params, classes: tuple[str, ...], image_size: int) -> ModelSpec:
    cfg = params.train
    return ModelSpec(
        arch=cfg.arch,
        classes=classes,
        task=params.data.task,
        loss=cfg.loss,
        hidden=tuple(cfg.head.hidden),
        dropout=cfg.head.dropout,
        activation=cfg.head.activation,
        keep_classifier=cfg.head.keep_classifier,
        image_size=image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        preprocessing=PREPROCESSING,
    )


def build_training_model(params: Params, classes: tuple[str, ...]) -> tuple[nn.Module, ModelSpec, int]:
    """The model at epoch 0, frozen per train.freeze: (model, spec, trainable parameter count).

    Initial weights depend on params.seed alone, so the features stage and train build the
    same backbone.
    """
    spec = model_spec(params, classes, params.train.image_size)
    torch.manual_seed(params.seed)
    model = spec.build(weights=params.train.weights)
    return model, spec, freeze(model, params.train.freeze)


def train(
    params: Params,
    store_dir: Path = DECODED_DIR,
    model_path: Path = MODEL_PATH,
    last_path: Path = LAST_PATH,
    live_dir: Path = TRAIN_LIVE_DIR,
    features_dir: Path = FEATURES_DIR,
) -> dict:
    """Train per `params`; keep the best epoch (val macro F1) at `model_path`. Returns the best scores."""
    dist = Distributed.from_env()
    try:
        return _train(params, store_dir, model_path, last_path, live_dir, features_dir, dist)
    finally:
        dist.stop()


def _train(params, store_dir, model_path, last_path, live_dir, features_dir, dist: Distributed) -> dict:
    cfg = params.train
    multilabel = params.data.task == "multilabel"
    generator = seed_everything(params.seed)  # the same on every process: same weights, same batches
    runtime = Runtime.select(cfg.precision, dist.device())
    dist.start(runtime.device)
    if cfg.batch_size % dist.world:
        raise ConfigError(
            f"train.batch_size: {cfg.batch_size} images per batch cannot be split evenly between "
            f"{dist.world} processes; use a multiple of {dist.world}"
        )
    say = print if dist.is_main else (lambda *a, **k: None)
    if cfg.low_memory and release_large_blocks():
        say("train: train.low_memory: allocations over 8 MiB are returned to the system when freed")

    train_x, val_x = (SplitStore(store_dir, name, cfg.image_size) for name in ("train", "val"))
    train_y, val_y = (torch.from_numpy(s.labels) for s in (train_x, val_x))
    if train_x.multilabel != multilabel:
        raise StoreError(f"{store_dir}: decoded for another data.task; run `dvc repro` so decode follows params")

    model, spec, n_trainable = build_training_model(params, train_x.classes)
    use_cache, why = cache_applies(cfg)
    if use_cache:
        features = load_features(features_dir, model)
        train_x, val_x = features["train"], features["val"]
        net = model.get_submodule(head_name(model))  # only the head runs: the backbone's output is cached
        prepare = runtime.features
        say(f"train: cached features from {features_dir} ({why}): the backbone ran once, not every epoch")
    else:
        net = model
        augment = functools.partial(augment_batch, cfg=cfg.augment, generator=generator)
        prepare = functools.partial(runtime.images, augment=augment if is_active(cfg.augment) else None)
        say(f"train: full forward pass per batch ({why})")
    runtime.prepare_model(model)
    step_net = dist.wrap(net)  # DistributedDataParallel under torchrun: gradients averaged over processes
    step_net = torch.compile(step_net) if cfg.compile else step_net
    optimizer = make_optimizer((p for p in model.parameters() if p.requires_grad), cfg)
    scheduler = make_schedule(optimizer, cfg.schedule, cfg.epochs)
    scaler = make_grad_scaler(runtime)
    loss_fn = make_loss(cfg.loss, len(spec.classes), cfg.focal.alpha, cfg.focal.gamma)

    def decide(logits: torch.Tensor) -> torch.Tensor:
        return decisions(probabilities(logits, cfg.loss), multilabel)

    signature = run_signature(params, spec.classes)
    start, best = 0, None
    if cfg.resume and last_path.is_file():
        state = _load_last(last_path, signature)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        generator.set_state(state["batch_rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        start, best = state["epoch"], state["best"]
        say(f"train: resuming from {last_path} after epoch {start}")
    elif cfg.resume:
        say(f"train: train.resume is set but {last_path} does not exist; starting at epoch 1")

    processes = f", {dist.world} processes" if dist.active else ""
    say(
        f"train: {cfg.arch} (weights={cfg.weights}, freeze={cfg.freeze}, loss={cfg.loss}, "
        f"optimizer={cfg.optimizer}, schedule={cfg.schedule.name}) on {runtime.device} "
        f"({runtime.dtype or torch.float32}), {n_trainable:,} trainable parameters, "
        f"{len(train_y)} train / {len(val_y)} val images, classes {list(spec.classes)}{processes}"
    )
    logger = (
        Live(dir=str(live_dir), resume=start > 0, dvcyaml=None, save_dvc_exp=False, report=None)
        if dist.is_main
        else None
    )
    with logger or contextlib.nullcontext(_Silent()) as live:
        live.step = start  # dvclive's own resume skips step 0; the checkpoint knows the truth
        live.log_metric("trainable_params", n_trainable, plot=False)
        epochs = range(start, cfg.epochs)
        for epoch in tqdm(
            epochs, desc="epochs", unit="epoch", initial=start, total=cfg.epochs, disable=not dist.is_main
        ):
            lr = optimizer.param_groups[0]["lr"]
            fit = train_epoch(
                step_net,
                train_x,
                train_y,
                optimizer,
                loss_fn,
                decide,
                cfg.batch_size,
                generator,
                runtime,
                prepare,
                epoch=epoch + 1,
                scaler=scaler,
                freeze_mode="none" if use_cache else cfg.freeze,
                dist=dist,
            )
            eval_prepare = runtime.features if use_cache else runtime.images
            val = evaluate_epoch(net, val_x, val_y, loss_fn, decide, cfg.batch_size, runtime, eval_prepare, dist)
            scheduler.step()
            for split, result in (("train", fit), ("val", val)):
                live.log_metric(f"{split}/loss", result.loss)
                live.log_metric(f"{split}/accuracy", result.accuracy)
                live.log_metric(f"{split}/f1", result.f1)
            live.log_metric("lr", lr)
            if dist.is_main:
                tqdm.write(
                    f"epoch {epoch + 1}/{cfg.epochs}: lr {lr:.3g} | train loss {fit.loss:.4f} acc {fit.accuracy:.3f} | "
                    f"val loss {val.loss:.4f} acc {val.accuracy:.3f} f1 {val.f1:.3f}"
                )
            if best is None or (val.f1, -val.loss) > (best["val_f1"], -best["val_loss"]):
                best = {"epoch": epoch + 1, "val_f1": val.f1, "val_loss": val.loss, "val_accuracy": val.accuracy}
                if dist.is_main:
                    save_checkpoint(model_path, model, spec, **best)
            live.next_step()
            if dist.is_main:
                _save_last(last_path, model, optimizer, scheduler, scaler, epoch + 1, best, signature, generator)
        for key in ("epoch", "val_f1", "val_accuracy"):
            live.summary.setdefault("best", {})[key] = best[key]
    say(f"train: best epoch {best['epoch']} (val f1 {best['val_f1']:.3f}) saved to {model_path}")
    return best


class _Silent:
    """What processes other than the first log to: nothing (one set of dvclive files)."""

    step = 0
    summary: dict = {}

    def log_metric(self, *args, **kwargs) -> None:
        pass

    def next_step(self) -> None:
        pass
