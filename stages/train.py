"""Stage `train`: fine-tune a torchvision CNN on data/raw and keep the best checkpoint."""

from __future__ import annotations

import sys

import torch
from dvclive import Live
from torch import nn
from tqdm import tqdm

from cxr.checkpoint import ModelSpec, save_checkpoint
from cxr.config import load_params
from cxr.images import IMAGENET_MEAN, IMAGENET_STD, load_pixels, scan_split
from cxr.models import build_model, freeze
from cxr.paths import MODEL_PATH, RAW_DIR, TRAIN_LIVE_DIR
from cxr.training import evaluate_epoch, seed_everything, select_device, train_epoch
from cxr.weights import WeightsError


def main() -> None:
    params = load_params()
    cfg = params.train
    generator = seed_everything(params.seed)
    device = select_device()

    train_split = scan_split(RAW_DIR, "train")
    val_split = scan_split(RAW_DIR, "val", train_split.classes)
    train_x, val_x = (load_pixels(s, cfg.image_size) for s in (train_split, val_split))
    train_y, val_y = (torch.tensor(s.labels) for s in (train_split, val_split))

    spec = ModelSpec(
        arch=cfg.arch,
        classes=train_split.classes,
        task=params.data.task,
        hidden=tuple(cfg.head.hidden),
        dropout=cfg.head.dropout,
        image_size=cfg.image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    try:
        model = build_model(cfg.arch, len(spec.classes), spec.hidden, spec.dropout, cfg.image_size, cfg.weights)
    except WeightsError as exc:
        sys.exit(f"train: {exc}")
    n_trainable = freeze(model, cfg.freeze)
    model.to(device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, momentum=cfg.momentum)
    loss_fn = nn.CrossEntropyLoss()
    print(
        f"train: {cfg.arch} (weights={cfg.weights}, freeze={cfg.freeze}) on {device}, "
        f"{n_trainable:,} trainable parameters, {len(train_y)} train / {len(val_y)} val images, "
        f"classes {list(spec.classes)}"
    )

    best = None
    with Live(dir=str(TRAIN_LIVE_DIR), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        live.log_metric("trainable_params", n_trainable, plot=False)
        for epoch in tqdm(range(cfg.epochs), desc="epochs", unit="epoch"):
            fit = train_epoch(model, train_x, train_y, optimizer, loss_fn, cfg.batch_size, generator, device)
            val = evaluate_epoch(model, val_x, val_y, loss_fn, cfg.batch_size, device)
            for split, result in (("train", fit), ("val", val)):
                live.log_metric(f"{split}/loss", result.loss)
                live.log_metric(f"{split}/accuracy", result.accuracy)
                live.log_metric(f"{split}/f1", result.f1)
            tqdm.write(
                f"epoch {epoch + 1}/{cfg.epochs}: train loss {fit.loss:.4f} acc {fit.accuracy:.3f} | "
                f"val loss {val.loss:.4f} acc {val.accuracy:.3f} f1 {val.f1:.3f}"
            )
            if best is None or (val.f1, -val.loss) > (best[1].f1, -best[1].loss):
                best = (epoch + 1, val)
                save_checkpoint(MODEL_PATH, model, spec, epoch=epoch + 1, val_f1=val.f1, val_loss=val.loss)
            live.next_step()
        live.log_metric("best/epoch", best[0], plot=False)
        live.log_metric("best/val_f1", best[1].f1, plot=False)
        live.log_metric("best/val_accuracy", best[1].accuracy, plot=False)
    print(f"train: best epoch {best[0]} (val f1 {best[1].f1:.3f}) saved to {MODEL_PATH}")


if __name__ == "__main__":
    main()
