"""One training run as short steps: build it, restore it, train epochs (log, keep the best, save
the state), summarise. The loops are in cxr/train/loop.py, the training state in cxr/train/state.py."""

from __future__ import annotations

import contextlib
import functools
import math
import time
from pathlib import Path

import torch

from cxr.checksums import tree_digest
from cxr.config import Params
from cxr.data.store import SplitStore, StoreError
from cxr.data.subsets import label_subset
from cxr.errors import ConfigError
from cxr.model.checkpoint import save_checkpoint
from cxr.model.inference import Runtime, pin_compute
from cxr.model.losses import balanced_class_weights, make_loss
from cxr.model.networks import head_name
from cxr.model.ood import FIT_LIMIT, training_density
from cxr.model.spec import initial_model, starting_point
from cxr.paths import DECODED_DIR, FEATURES_DIR, LAST_PATH, MODEL_PATH, TRAIN_LIVE_DIR
from cxr.progress import progress
from cxr.train.augment import augment_batch, is_active
from cxr.train.averaging import WeightAverage
from cxr.train.distributed import Distributed, Rows
from cxr.train.exclusive import training_lock
from cxr.train.features import cache_applies, load_features
from cxr.train.log import RunLog, read_curves, run_log
from cxr.train.loop import (
    EpochResult,
    Fit,
    NonFiniteLossError,
    evaluate_epoch,
    release_large_blocks,
    seed_everything,
    source_balanced,
    train_epoch,
)
from cxr.train.optim import make_optimizer, make_schedule
from cxr.train.state import Run, restore_training_state, run_signature, save_training_state, shadow_of


def _inputs(
    params: Params, store_dir: Path, features_dir: Path, model, preprocessing: str, runtime: Runtime, generator
):
    """Train and val inputs, how to prepare a training batch (None: cached features, used as they
    are) and a note saying which path runs."""
    cfg = params.train
    # the rows decode made must be the ones the spec records (train.input)
    stores = {name: SplitStore(store_dir, name, cfg.image_size, preprocessing) for name in ("train", "val")}
    if stores["train"].multilabel != (params.data.task == "multilabel"):
        raise StoreError(f"{store_dir}: decoded for another data.task; run `dvc repro` so decode follows params")
    labels = {name: torch.from_numpy(s.labels) for name, s in stores.items()}
    use_cache, why = cache_applies(cfg)
    if use_cache:
        features = load_features(features_dir, model)
        data = {name: (features[name], labels[name]) for name in stores}
        note = f"cached features from {features_dir} ({why}): the backbone ran once, not every epoch"
        return data, None, note
    augment = functools.partial(augment_batch, cfg=cfg.augment, generator=generator)
    # on the device as uint8 (normalised inside the step), or as [0, 1] floats augmented first
    prepare = (lambda batch: augment(runtime.unit(batch))) if is_active(cfg.augment) else runtime.to_device
    data = {name: (stores[name], labels[name]) for name in stores}
    return data, prepare, f"full forward pass per batch ({why})"


def labelled_share(params: Params, train_store: SplitStore, data: dict) -> tuple[list[int] | None, str]:
    """data.label_fraction: keep that share of the training films in `data` (seeded, by class, patients whole);
    (the rows kept, or None for all; a note for the log)."""
    fraction = params.data.label_fraction
    if fraction >= 1.0:
        return None, ""
    labels = train_store.labels
    strata = [str(int(c)) for c in (labels.argmax(1) if train_store.multilabel else labels)]
    rows = label_subset(strata, train_store.patients, fraction, params.seed)
    index = torch.as_tensor(rows)
    inputs, targets = data["train"]
    data["train"] = (inputs[index] if isinstance(inputs, torch.Tensor) else Rows(inputs, index), targets[index])
    return rows, f"train: data.label_fraction {fraction:g}: {len(rows)} of {len(labels)} training films (seeded, by " \
        "class, each patient's films together)"


def build_run(params: Params, store_dir: Path, features_dir: Path, dist: Distributed) -> Run:
    """Data, model, optimizer, schedule and loss of a run at epoch 0, on this process's device."""
    cfg = params.train
    environment = pin_compute(cfg.threads, cfg.deterministic)
    generator = seed_everything(params.seed)  # the same on every process: same weights, same batches
    runtime = Runtime.select(cfg.precision, dist.device())
    dist.start(runtime.device)
    if cfg.batch_size % dist.world:
        raise ConfigError(
            f"train.batch_size: {cfg.batch_size} images per batch cannot be split evenly between "
            f"{dist.world} processes; use a multiple of {dist.world}"
        )
    train_store = SplitStore(store_dir, "train", cfg.image_size)
    classes, sources = train_store.classes, train_store.sources
    model, spec, trainable = initial_model(params, classes)
    runtime = runtime.scaled(spec)  # the network's input channels and scaling (torchxrayvision's differ)
    data, prepare, note = _inputs(params, store_dir, features_dir, model, spec.preprocessing, runtime, generator)
    kept, share = labelled_share(params, train_store, data)
    if kept is not None:
        sources = [sources[i] for i in kept]
    cached = prepare is None  # only the head runs: the backbone's output is cached
    net = model.get_submodule(head_name(model)) if cached else model
    runtime.prepare_model(model)
    weights = (
        balanced_class_weights(data["train"][1].numpy(), len(classes)) if cfg.class_weights == "balanced" else None
    )
    step_net = dist.wrap(net)  # DistributedDataParallel under torchrun: gradients averaged over processes
    optimizer = make_optimizer((p for p in model.parameters() if p.requires_grad), cfg)
    fit = Fit(
        net=step_net,
        model=net,
        optimizer=optimizer,
        loss_fn=make_loss(cfg.loss, len(classes), cfg.focal.alpha, cfg.focal.gamma, cfg.label_smoothing, weights,
                          uncertain=any(y.is_floating_point() and bool(y.isnan().any()) for _, y in data.values())),
        decide=lambda logits: spec.decide(spec.probabilities(logits)),
        runtime=runtime,
        prepare=runtime.features if cached else prepare,
        prepare_eval=runtime.features if cached else runtime.images,
        scaler=runtime.grad_scaler(),
        freeze_mode="none" if cached else cfg.freeze,
        dist=dist,
        average=WeightAverage(net, cfg.ema),
        normalise=torch.nn.Identity() if cached else runtime.normalise,
        compile=cfg.compile,
        check_every=cfg.finite_check_every,
        sampling=source_balanced(sources, f"{store_dir}/train") if cfg.sampler == "source" else None,
    )
    run = Run(params, spec, model, fit, make_schedule(optimizer, cfg.schedule, cfg.epochs), generator, data, trainable)
    run.environment = environment
    run.start = starting_point(cfg.weights)
    run.say(f"train: {note}")
    if share:
        run.say(share)
    return run


def restore(run: Run, last_path: Path, signature: dict) -> tuple[int, dict | None]:
    """(finished epochs, best scores) of an interrupted run when train.resume asks for it; else (0, None)."""
    if not run.params.train.resume:
        return 0, None
    if not last_path.is_file() and not shadow_of(last_path).is_file():
        run.say(f"train: train.resume is set but {last_path} does not exist; starting at epoch 1")
        return 0, None
    start, best = restore_training_state(last_path, run, signature)
    done = start >= run.params.train.epochs
    run.say(
        f"train: resuming from {last_path} after epoch {start}"
        + ("; that run had finished, nothing is left to train (to go on with a killed run of other params, "
           "give those params with train.resume=true)" if done else "")
    )
    return start, best


def keep_best_model(run: Run, model_path: Path, best: dict | None) -> None:
    """After a resume: DVC removes models/model.pt before the stage runs, and a later epoch may never
    beat the best one, so write it back from the training state."""
    if best is not None and run.best_weights is not None and run.fit.dist.is_main and not model_path.is_file():
        save_checkpoint(model_path, run.best_weights, run.spec, **best, **origin(run))
        run.say(f"train: {model_path} restored from the training state (best epoch {best['epoch']})")


def origin(run: Run) -> dict:
    """The checkpoint's record of the weights the run started from (nothing for none and imagenet)."""
    return {"start": run.start} if run.start else {}


def describe(run: Run) -> str:
    cfg, fit = run.params.train, run.fit
    processes = f", {fit.dist.world} processes" if fit.dist.active else ""
    started = f"; started from {run.start['file']} (sha256 {run.start['sha256']})" if run.start else ""
    return (
        f"train: {cfg.network} (weights={cfg.weights}, freeze={cfg.freeze}, loss={cfg.loss}, "
        f"optimizer={cfg.optimizer}, schedule={cfg.schedule.name}) on {fit.runtime.device} "
        f"({fit.runtime.dtype or torch.float32}), {run.trainable:,} trainable parameters, "
        f"{len(run.data['train'][1])} train / {len(run.data['val'][1])} val images, "
        f"classes {list(run.spec.classes)}{processes}{started}"
    )


def log_epoch(log: RunLog, run: Run, epoch: int, lr: float, fit: EpochResult, val: EpochResult, took: float) -> None:
    """One epoch's curves and its line in the log, with its training time and images per second (in the line
    only: the curves stay what the run computed, the same on any machine)."""
    log.epoch({f"{split}/{key}": getattr(result, key) for split, result in (("train", fit), ("val", val))
               for key in ("loss", "accuracy", "f1")} | {"lr": lr})  # fmt: skip
    rate = len(run.data["train"][1]) / took if took > 0 else float("nan")
    run.say(
        f"epoch {epoch + 1}/{run.params.train.epochs}: lr {lr:.3g} | train loss {fit.loss:.4f} "
        f"acc {fit.accuracy:.3f} | val loss {val.loss:.4f} acc {val.accuracy:.3f} f1 {val.f1:.3f} "
        f"| training {took:.1f} s, {rate:.0f} img/s",
    )


def one_epoch(run: Run, epoch: int) -> tuple[float, EpochResult, EpochResult, float]:
    """Train one epoch, score validation, step the schedule: (lr used, train result, val result, training seconds)."""
    cfg = run.params.train
    lr = run.optimizer.param_groups[0]["lr"]
    train_x, train_y = run.data["train"]
    start = time.perf_counter()
    fit = train_epoch(run.fit, train_x, train_y, cfg.batch_size, run.generator, epoch=epoch + 1)
    took = time.perf_counter() - start
    val = evaluate_epoch(run.fit, *run.data["val"], cfg.batch_size)
    run.scheduler.step()
    return lr, fit, val, took


def refuse_non_finite(val: EpochResult, epoch: int, lr: float) -> None:
    """A NaN or infinite validation loss means broken weights: stop before they can become 'best'."""
    if not (math.isfinite(val.loss) and math.isfinite(val.f1)):
        raise NonFiniteLossError(
            f"train: validation loss is {val.loss} after epoch {epoch + 1} (lr {lr:g}); training stopped and the "
            f"last good checkpoint kept. Lower train.lr (e.g. to {lr / 10:g}) and run again."
        )


def is_better(val: EpochResult, best: dict | None) -> bool:
    """Best epoch: highest val macro F1, ties broken by the lower val loss."""
    return best is None or (val.f1, -val.loss) > (best["val_f1"], -best["val_loss"])


def stalled(run: Run, epoch: int, best: dict) -> bool:
    """`train.patience`: no better val macro F1 for that many epochs (early stopping)."""
    patience = run.params.train.patience
    if patience and epoch + 1 - best["epoch"] >= patience and epoch + 1 < run.params.train.epochs:
        run.say(f"train: no better val F1 for {patience} epochs (train.patience); stopping after epoch {epoch + 1}")
        return True
    return False


def scored_state(run: Run) -> dict:
    """The weights the checkpoint keeps: with train.ema, the trained part replaced by its average."""
    state = run.model.state_dict()
    if run.fit.scored is run.fit.model:
        return state
    prefix = "" if run.fit.model is run.model else head_name(run.model) + "."
    state.update({prefix + k: v for k, v in run.fit.scored.state_dict().items()})
    return state


def attach_density(run: Run, store_dir: Path, model_path: Path, best: dict) -> None:
    """Fit the best model's feature density on the training split (cxr/model/ood.py) and store it in
    the checkpoint, where evaluate, external, predict and serve read it for each image's ood_score."""
    if run.best_weights is None:
        return
    model = run.spec.build()
    model.load_state_dict(run.best_weights)
    # as evaluate scores: its features are the ones compared
    runtime = Runtime.select(device=run.fit.runtime.device).scaled(run.spec)
    runtime.prepare_model(model)
    store = SplitStore(store_dir, "train", run.spec.image_size, run.spec.preprocessing)
    density = training_density(model, store, store.labels, runtime, run.params.train.batch_size)
    save_checkpoint(model_path, run.best_weights, run.spec, **best, **origin(run), ood=density.payload())
    run.say(
        f"train: feature density of {min(len(store), FIT_LIMIT)} training films ({density.layer}) kept with the model"
    )


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
    lock = training_lock(Path(last_path).parent / ".train.lock") if dist.is_main else contextlib.nullcontext()
    try:
        with lock:
            return _train(params, store_dir, model_path, last_path, live_dir, features_dir, dist)
    finally:
        dist.stop()


def _train(params: Params, store_dir, model_path, last_path, live_dir, features_dir, dist: Distributed) -> dict:
    """The run itself, under the training lock (see `train`)."""
    if params.train.low_memory and release_large_blocks() and dist.is_main:
        print("train: train.low_memory: allocations over 8 MiB are returned to the system when freed")
    run = build_run(params, store_dir, features_dir, dist)
    signature = {**run_signature(params, run.spec.classes), "data": tree_digest(store_dir)}  # the decoded images
    start, best = restore(run, last_path, signature)
    keep_best_model(run, model_path, best)
    run.say(describe(run))
    with run_log(live_dir, start, enabled=dist.is_main, curves=run.curves) as log:
        log.value("trainable_params", run.trainable)
        for epoch in progress(range(start, params.train.epochs), desc="epochs", unit="epoch", initial=start,
                          total=params.train.epochs, disable=not dist.is_main):  # fmt: skip
            lr, fit, val, took = one_epoch(run, epoch)
            refuse_non_finite(val, epoch, lr)
            log_epoch(log, run, epoch, lr, fit, val, took)
            if is_better(val, best):
                best = {"epoch": epoch + 1, "val_f1": val.f1, "val_loss": val.loss, "val_accuracy": val.accuracy}
                run.best_weights = {k: v.detach().cpu().clone() for k, v in scored_state(run).items()}
                if dist.is_main:
                    save_checkpoint(model_path, run.best_weights, run.spec, **best, **origin(run))
            if dist.is_main:
                save_training_state(last_path, run, epoch + 1, best, signature, read_curves(live_dir))
            if stalled(run, epoch, best):
                break
        log.summary("best", {k: best[k] for k in ("epoch", "val_f1", "val_accuracy")})
        log.summary("environment", run.environment)  # what the numbers were computed with
    if dist.is_main:
        attach_density(run, store_dir, model_path, best)
    run.say(f"train: best epoch {best['epoch']} (val f1 {best['val_f1']:.3f}) saved to {model_path}")
    return {**best, "environment": run.environment}
