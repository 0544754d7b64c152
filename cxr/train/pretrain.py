"""Stage pretrain: self-supervised pretraining of `train.arch`'s backbone on films without labels.

`pretrain.method: simclr` (Chen et al. 2020): each film is seen twice through random views (`pretrain.views`:
crops, small rotations, flips and the acquisition augmentations train already has; never colour), and the network
learns features under which a film's two views agree and differ from the batch's other films (NT-Xent loss on a
projection head that is dropped afterwards). Why SimCLR for this project: it needs nothing but the batch (no
momentum encoder or queue to keep in step, no collapse-avoiding tricks to tune, which BYOL and DINO need), works at the
64-256 batches a single GPU or a CPU affords, and is the method MoCo-CXR and the CXR self-supervision literature
compare against; MAE needs a vision transformer. The loss is a few lines written here rather than a dependency:
lightly's brings PyTorch Lightning and its own transforms, which assume colour; ours are the radiograph-safe batch
augmentations of cxr/train/augment.py, run on the device.

The films: the train split's (labels ignored) plus every film of `pretrain.folders`, each checked against the val and
test splits (exact or near copies, as verify finds them) so that no evaluation film enters through them. The stage
writes models/pretrained.pt (the backbone's tensors and what it is: method, network, image size, input recipe),
metrics/pretrain.json (films, epochs, final loss, the file's sha256) and a dvclive loss curve; after each epoch a
state file lets `pretrain.resume: true` continue a killed run. `pretrain.method: none` writes a file that holds no
backbone (and nothing else changes).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr.atomic import write_json, write_text
from cxr.checksums import sha256_of
from cxr.config import Params
from cxr.data.images import IMAGE_SUFFIXES
from cxr.data.known_films import KnownFilms
from cxr.data.store import SplitStore, decode_all
from cxr.errors import ConfigError, PipelineError
from cxr.model.architectures import replace_module
from cxr.model.checkpoint import cpu_state, save_payload
from cxr.model.inference import Runtime, compiled
from cxr.model.networks import backbone, feature_width
from cxr.model.weights import PRETRAINED_FORMAT
from cxr.paths import (
    DECODED_DIR,
    PRETRAIN_LAST,
    PRETRAIN_LIVE_DIR,
    PRETRAIN_METRICS,
    PRETRAINED_PATH,
    RAW_DIR,
    user_path,
)
from cxr.progress import progress
from cxr.train.augment import augment_batch
from cxr.train.log import read_curves, run_log
from cxr.train.loop import seed_everything

PROJECTION_HIDDEN = 2048  # the projection head's hidden width at most (the backbone's width when smaller)
WEIGHT_DECAY = 1e-4


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss for projections (2n, d) of n films' two views, rows i and i + n of one film: each view must
    pick its twin out of the other 2n - 1 views (cross-entropy over cosine similarities / temperature)."""
    z = F.normalize(z.float(), dim=1)
    n = z.shape[0] // 2
    similarity = (z @ z.T) / temperature
    self_pair = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    similarity = similarity.masked_fill(self_pair, float("-inf"))
    twin = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(similarity, twin)


class Contrastive(nn.Module):
    """The backbone (its classifier replaced by nothing) and a projection head on its pooled features."""

    def __init__(self, arch: str, image_size: int, projection: int):
        super().__init__()
        self.body, replaced = backbone(arch, image_size)
        width = feature_width(self.body, image_size, replaced)
        replace_module(self.body, replaced, nn.Identity())
        hidden = min(width, PROJECTION_HIDDEN)
        self.head = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, projection))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


class Films:
    """The films pretraining reads: the train split's store rows, then the folders' decoded films."""

    def __init__(self, store: SplitStore, extra: np.ndarray):
        self.store, self.extra = store, torch.from_numpy(extra)
        self.shape = (store.channels, store.image_size, store.image_size)

    def __len__(self) -> int:
        return len(self.store) + len(self.extra)

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        out = torch.empty((len(idx), *self.shape), dtype=torch.uint8)
        stored = idx < len(self.store)
        if stored.any():
            out[stored] = self.store[idx[stored]]
        if (~stored).any():
            out[~stored] = self.extra[idx[~stored] - len(self.store)]
        return out


def folder_films(params: Params, store: SplitStore, raw_dir: Path) -> tuple[np.ndarray, dict[str, int]]:
    """Every film of `pretrain.folders`, decoded as the store's (its size and input recipe), after checking that
    none repeats a val or test film; refused by name otherwise (and for a missing folder or an unreadable film)."""
    folders = params.pretrain.folders
    if not folders:
        return np.zeros((0, store.channels, store.image_size, store.image_size), np.uint8), {}
    verify = params.verify
    known = KnownFilms.read(raw_dir, verify.near_duplicate_bits, verify.max_pixels, splits=("val", "test"))
    rows, counts = [], {}
    for folder in folders:
        path = user_path(folder)
        if not path.is_dir():
            raise ConfigError(f"pretrain.folders: {folder!r} is not a folder; give folders of unlabelled films")
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConfigError(f"pretrain.folders: {folder!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        copies = [f for f, again in zip(files, known.repeated(files), strict=True) if again]
        if copies:
            shown = ", ".join(str(f) for f in copies[:5]) + (f" and {len(copies) - 5} more" if len(copies) > 5 else "")
            raise PipelineError(
                f"pretrain.folders: {len(copies)} film(s) of {folder} repeat a val or test film, exactly or nearly: "
                f"{shown}. Remove them from the folder: no film the model is evaluated on may enter its training, "
                "with labels or without"
            )
        good, pixels, problems = decode_all(files, store.image_size, verify.max_pixels, store.preprocessing)
        if problems:
            raise PipelineError(f"pretrain.folders: {problems[0][0]}: {problems[0][1]} (remove or replace it)")
        rows.append(pixels)
        counts[folder] = len(good)
    return np.concatenate(rows), counts


@dataclass
class Pretraining:
    """What a pretraining run holds between epochs."""

    model: Contrastive
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    generator: torch.Generator

    loss: float = float("nan")  # the latest epoch's mean loss

    def state(self, epoch: int, signature: dict, curves: dict[str, str]) -> dict:
        return {
            "epoch": epoch,
            "loss": self.loss,
            "model": cpu_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "signature": signature,
            "curves": curves,
        }

    def restore(self, state: dict) -> int:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.loss = float(state["loss"])
        return int(state["epoch"])


def resumed(params: Params, run: Pretraining, signature: dict, last: Path) -> tuple[int, dict | None]:
    """(finished epochs, curves) of an interrupted run when pretrain.resume asks and its signature matches."""
    if not params.pretrain.resume or not last.is_file():
        return 0, None
    state = torch.load(last, map_location="cpu", weights_only=True)
    if state.get("signature") != signature:
        print(f"pretrain: {last} was written for other params or films; starting at epoch 1")
        return 0, None
    start = run.restore(state)
    print(f"pretrain: resuming from {last} after epoch {start}")
    return start, state.get("curves")


def write_none(out: Path, live_dir: Path, metrics: Path) -> dict:
    """pretrain.method none: a file that holds no backbone, an empty curve and metrics saying so."""
    save_payload(out, {"format": PRETRAINED_FORMAT, "method": "none"})
    write_text(Path(live_dir) / "plots/metrics/loss.tsv", "step\tloss\n")
    result = {"method": "none"}
    write_json(metrics, result)
    print(f"pretrain: pretrain.method is none: nothing to pretrain ({out} holds no backbone)")
    return result


def epoch_loss(run: Pretraining, films: Films, params: Params, runtime: Runtime, step) -> float:
    """One pass over the films in a seeded order, two views each: the mean loss (read once, at the end)."""
    cfg = params.pretrain
    total, seen = torch.zeros((), device=runtime.device), 0
    run.model.train()
    for idx in torch.randperm(len(films), generator=run.generator).split(cfg.batch_size):
        if len(idx) < 2:  # a lone film has no negatives (and batch norm needs two)
            continue
        x = runtime.unit(films[idx])
        views = torch.cat([augment_batch(x, cfg.views, run.generator), augment_batch(x, cfg.views, run.generator)])
        with runtime.autocast():
            loss = step(views)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        total += loss.detach() * len(idx)
        seen += len(idx)
    return float(total) / max(seen, 1)


def pretrain(
    params: Params,
    store_dir: Path = DECODED_DIR,
    raw_dir: Path = RAW_DIR,
    out: Path = PRETRAINED_PATH,
    last: Path = PRETRAIN_LAST,
    live_dir: Path = PRETRAIN_LIVE_DIR,
    metrics: Path = PRETRAIN_METRICS,
) -> dict:
    """Pretrain per `params.pretrain`; write `out`, `metrics` and the loss curve under `live_dir`."""
    cfg = params.pretrain
    if cfg.method == "none":
        return write_none(out, live_dir, metrics)
    start_time = time.perf_counter()
    store = SplitStore(store_dir, "train", params.train.image_size)
    extra, counts = folder_films(params, store, raw_dir)
    films = Films(store, extra)
    runtime = Runtime.select()  # mixed precision on CUDA, fp32 on the CPU
    run = new_run(params, store.image_size, runtime)
    signature = {
        "seed": params.seed,
        "arch": params.train.arch,
        "pretrain": cfg.model_dump(exclude={"resume"}),
        "films": sha256_of(Path(store_dir) / "train.npy") + ":" + hashlib.sha256(extra.tobytes()).hexdigest(),
    }
    start, curves = resumed(params, run, signature, last)
    model = run.model
    step = compiled(lambda views: nt_xent(model(runtime.normalise(views)), cfg.temperature), params.train.compile)
    print(
        f"pretrain: {cfg.method} on {params.train.arch}, {len(store)} train films"
        + "".join(f" + {n} from {folder}" for folder, n in counts.items())
        + f" at {store.image_size} px, batch {cfg.batch_size}, {cfg.epochs} epochs on {runtime.device}"
    )
    with run_log(live_dir, start, enabled=True, curves=curves) as log:
        for epoch in progress(range(start, cfg.epochs), desc="pretrain", unit="epoch", initial=start, total=cfg.epochs):
            began = time.perf_counter()
            loss = run.loss = epoch_loss(run, films, params, runtime, step)
            took = time.perf_counter() - began
            if not np.isfinite(loss):
                raise PipelineError(
                    f"pretrain: the loss is {loss} in epoch {epoch + 1}: lower pretrain.lr (e.g. to {cfg.lr / 10:g})"
                )
            run.scheduler.step()
            log.epoch({"loss": loss})
            save_payload(last, run.state(epoch + 1, signature, read_curves(live_dir)))
            print(f"pretrain epoch {epoch + 1}/{cfg.epochs}: loss {loss:.4f} | {took:.1f} s, "
                  f"{len(films) / took if took > 0 else float('nan'):.0f} films/s")  # fmt: skip
    result = write_backbone(params, run, store, counts, out, metrics)
    print(f"pretrain: {out} (sha256 {result['sha256']}) in {time.perf_counter() - start_time:.0f} s")
    return result


def new_run(params: Params, image_size: int, runtime: Runtime) -> Pretraining:
    """The network, optimizer (AdamW, cosine decay to 0) and batch order at epoch 0, seeded."""
    cfg = params.pretrain
    generator = seed_everything(params.seed)
    model = runtime.prepare_model(Contrastive(params.train.arch, image_size, cfg.projection))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs)
    return Pretraining(model, optimizer, schedule, runtime.grad_scaler(), generator)


def write_backbone(params: Params, run: Pretraining, store: SplitStore, counts: dict, out: Path, metrics: Path) -> dict:
    """models/pretrained.pt (the backbone's tensors and what it is) and metrics/pretrain.json (with its sha256)."""
    cfg = params.pretrain
    films = len(store) + sum(counts.values())
    save_payload(out, {
        "format": PRETRAINED_FORMAT, "method": cfg.method, "arch": params.train.arch, "image_size": store.image_size,
        "preprocessing": store.preprocessing, "films": films, "epochs": cfg.epochs,
        "backbone": cpu_state(run.model.body),
    })  # fmt: skip
    result = {
        "method": cfg.method,
        "arch": params.train.arch,
        "films": {"train": len(store), **counts},
        "epochs": cfg.epochs,
        "loss": run.loss,
        "file": str(out),
        "sha256": sha256_of(out),
    }
    write_json(metrics, result)
    return result
