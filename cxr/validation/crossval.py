"""k-fold cross-validation as papers report it (`data.folds: k`): every labelled image of
data/raw in exactly one test fold, folds grouped by patient and by identical or near-identical
images and stratified by class; each fold trains and evaluates with the pipeline's own code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cxr.atomic import write_json
from cxr.checksums import tree_digest
from cxr.config import Params
from cxr.data.grouping import Grouping, assign_folds, image_groups, regroup, split_groups
from cxr.data.splits import SPLITS, DatasetError, file_metadata
from cxr.data.store import SplitStore, write_store
from cxr.evaluate.run import evaluate
from cxr.summaries import accuracy_key
from cxr.train.features import cache_features
from cxr.train.run import train
from cxr.train.state import run_signature
from cxr.validation.kept_folds import KeptFolds, code_digest

FOLD_METRICS = ("accuracy", "f1_macro")
DESCRIPTIVE = ("fold", "source", "classes", "untestable", "left_out_shared_groups", "n")  # named, not averaged
CLASS_METRICS = ("sensitivity", "specificity")


class Pool:
    """Every image of the decoded store's `splits` (train, val and test together by default), with its
    raw file and labels."""

    def __init__(self, store_dir: Path, image_size: int, splits: tuple[str, ...] = SPLITS):
        self.parts = [SplitStore(store_dir, name, image_size) for name in splits]
        first = self.parts[0]
        self.classes, self.multilabel, self.image_size = first.classes, first.multilabel, image_size
        self.rows = [(k, i) for k, part in enumerate(self.parts) for i in range(len(part))]
        self.files = [self.parts[k].files[i] for k, i in self.rows]
        self.labels = np.concatenate([part.labels for part in self.parts])
        self.sources = [self.parts[k].sources[i] for k, i in self.rows]
        self.patients = [self.parts[k].patients[i] for k, i in self.rows]

    def strata(self) -> list[str]:
        first = self.labels.argmax(1) if self.multilabel else self.labels
        return [self.classes[int(c)] for c in first]

    def row_bytes(self, members: list[int]):
        for j in members:
            k, i = self.rows[j]
            yield self.parts[k][[i]][0].numpy().tobytes()


def pool_metadata(pool: Pool, raw_dir: Path) -> list[dict[str, str]]:
    """labels.csv's columns (patient_id, source, ...) of every pooled image; empty where absent."""
    meta: dict[Path, dict[str, str]] = {}
    for split in SPLITS:
        meta.update(file_metadata(raw_dir / split))
    return [meta.get(raw_dir / f, {}) for f in pool.files]


def pool_groups(pool: Pool, raw_dir: Path, meta: list[dict[str, str]], near_bits: int) -> list[int]:
    """The group of every pooled image: one patient's films and identical or near-identical images."""
    patients = [m.get("patient_id") or None for m in meta]
    return image_groups([raw_dir / f for f in pool.files], patients, Grouping(near_bits))


def refuse_thin_classes(group: list[int], strata: list[str], k: int) -> None:
    """Every fold needs each class in its test and validation parts: a class with fewer than k groups
    (patients, or near-identical images) leaves some fold without it. Refused before any fold trains."""
    groups_of: dict[str, set[int]] = {}
    for g, cls in zip(group, strata, strict=True):
        groups_of.setdefault(cls, set()).add(g)
    thin = {cls: len(gs) for cls, gs in sorted(groups_of.items()) if len(gs) < k}
    if thin:
        most = min(len(gs) for gs in groups_of.values())
        listed = ", ".join(f"{cls!r} has {n}" for cls, n in thin.items())
        raise DatasetError(
            f"data.folds: {k} folds need at least {k} images (or patients) of each class to test every class in "
            f"every fold; {listed}; use data.folds: {most} or fewer (or add images)"
        )


def kfold_members(group: list[int], strata: list[str], k: int, seed: int) -> list[dict[str, list[int]]]:
    """Per fold i, the pooled images of each split: test = fold i, val = fold i + 1, train = the rest
    (cxr.data.grouping.assign_folds over the groups, stratified by class)."""
    fold_of = assign_folds(group, strata, k, seed)
    out = []
    for fold in range(k):
        role = {fold: "test", (fold + 1) % k: "val"}
        out.append({name: [j for j, f in enumerate(fold_of) if role.get(f, "train") == name] for name in SPLITS})
    return out


def source_members(pool: Pool, meta: list[dict[str, str]], group: list[int], params: Params) -> tuple[list, list]:
    """Leave-one-source-out (`data.folds: source`): per source of labels.csv's `source` column, that
    source's films are the test fold, validation is carved by patient (data.split.val) from the other
    sources and training is the rest. A group (patient, duplicate) that reaches into the test source is
    left out of training, and a test film of a class no other source has is left out of the test fold
    and counted as untestable, never scored against a model that never saw its class."""
    sources = [m.get("source", "") for m in meta]
    missing = [f for f, s in zip(pool.files, sources, strict=True) if not s]
    if missing:
        raise DatasetError(
            f"data.folds: source needs a `source` for every image in labels.csv; {len(missing)} have none "
            f"(e.g. {missing[0]}); fill the column or use a number of folds"
        )
    names = sorted(set(sources))
    if len(names) < 2:
        raise DatasetError(f"data.folds: source needs two or more sources in labels.csv; found {names}")
    strata = pool.strata()
    folds, info = [], []
    for name in names:
        touched = {group[j] for j, s in enumerate(sources) if s == name}
        rest = [j for j, s in enumerate(sources) if s != name and group[j] not in touched]
        seen = {strata[j] for j in rest}
        test = [j for j, s in enumerate(sources) if s == name and strata[j] in seen]
        untestable = sorted({strata[j] for j, s in enumerate(sources) if s == name} - seen)
        if not test:
            raise DatasetError(
                f"data.folds: source: every class of source {name!r} ({', '.join(untestable)}) is missing from "
                "the other sources, so none of its films can be tested; use a number of folds"
            )
        split = split_groups(regroup(group, rest), [strata[j] for j in rest], params.data.split.val, 0.0, params.seed)
        folds.append({"train": [j for j, r in zip(rest, split, strict=True) if r == "train"],
                      "val": [j for j, r in zip(rest, split, strict=True) if r == "val"], "test": test})  # fmt: skip
        held = [strata[j] for j, s in enumerate(sources) if s == name]
        info.append({
            "source": name,
            "classes": sorted({strata[j] for j in test}),
            "untestable": {c: held.count(c) for c in untestable},
            "left_out_shared_groups": sum(1 for j, s in enumerate(sources) if s != name and group[j] in touched),
        })  # fmt: skip
    return folds, info


def write_fold_store(pool: Pool, members: dict[str, list[int]], out_dir: Path) -> dict[str, int]:
    """A decoded store for one fold from the pooled images of each split."""
    splits = {
        name: ([pool.files[j] for j in idx], pool.labels[idx].tolist(), pool.row_bytes(idx))
        for name, idx in members.items()
    }
    first = pool.parts[0]
    columns = {column: {name: [values[j] for j in idx] for name, idx in members.items()}
               for column, values in (("sources", pool.sources), ("patients", pool.patients))}  # fmt: skip
    write_store(
        out_dir, pool.image_size, pool.classes, pool.multilabel, splits, first.channels, first.preprocessing, columns
    )
    return {name: len(idx) for name, idx in members.items()}


def fold_summary(scores: dict) -> dict:
    """Accuracy, macro F1 and per-class sensitivity/specificity of one fold's test scores."""
    out = {"accuracy": scores[accuracy_key(scores)], "f1_macro": scores["f1_macro"]}
    for cls, report in scores["screening"].items():
        for key in CLASS_METRICS:
            out[f"{key}_{cls}"] = report[key]
    return out


def aggregate(folds: list[dict]) -> dict:
    """Mean and standard deviation (population, over folds) of every fold metric, plus the folds."""
    keys = [key for key in folds[0] if key not in DESCRIPTIVE]
    out: dict = {"k": len(folds)}
    for key in keys:
        values = np.asarray([f[key] for f in folds if f[key] is not None], dtype=np.float64)
        out[f"{key}_mean"] = round(float(values.mean()), 6) if len(values) else None
        out[f"{key}_std"] = round(float(values.std()), 6) if len(values) else None
    out["folds"] = folds
    return out


def pooled_scores(prediction_files: list[Path]) -> dict:
    """Accuracy and macro F1 over every fold's test predictions together (each image scored once, by the
    model that never saw it, or its source). Macro F1 is over the classes the tests hold: with one
    source per fold a fold's own macro F1 mostly averages in classes it does not hold; multi-label: none."""
    import csv

    from sklearn.metrics import accuracy_score, f1_score

    true, predicted = [], []
    for path in prediction_files:
        with Path(path).open(newline="") as f:
            for row in csv.DictReader(f):
                true.append(row["true"])
                predicted.append(row["predicted"])
    if not true or any(";" in t for t in true + predicted):
        return {"n": len(true), "accuracy": None, "f1_macro": None, "classes": []}
    tested = sorted(set(true))
    return {
        "n": len(true),
        "accuracy": round(float(accuracy_score(true, predicted)), 6),
        "f1_macro": round(float(f1_score(true, predicted, labels=tested, average="macro", zero_division=0)), 6),
        "classes": tested,
    }


def fold_signature(params: Params, classes: tuple[str, ...], fold: int, decoded: Path, code: str) -> dict:
    """Everything that makes fold `fold`'s result: the params that change one, its images, the code."""
    return {
        "run": run_signature(params, classes),
        "evaluate": params.evaluate.model_dump(mode="json"),
        "folds": params.data.folds,
        "fold": fold,
        "images": tree_digest(decoded),
        "code": code,
    }


def run_fold(params: Params, where: Path, raw_dir: Path) -> dict:
    """Train and evaluate one fold from its decoded store; its test scores."""
    cache_features(params, where / "decoded", where / "features")
    train(params, where / "decoded", where / "model.pt", where / "last.pt", where / "live", where / "features")
    return evaluate(
        params, where / "model.pt", where / "decoded", raw_dir, where / "test.json", where / "predictions.csv",
        where / "eval",
    )  # fmt: skip


def cross_validate(
    params: Params, raw_dir: Path, store_dir: Path, work_dir: Path, metrics_path: Path, kept_dir: Path | None = None
) -> dict:
    """Train and evaluate once per fold under `work_dir/fold{i}`; write and return metrics/cv.json.
    Each finished fold is kept in `kept_dir`; with train.resume, a kept fold made under the same
    signature is reused instead of trained again."""
    if params.data.folds == 0:
        result = {"k": 0, "folds": []}
        write_json(metrics_path, result)
        return result
    # fold models that evaluate will average (evaluate.ensemble: folds) never see val or test: those
    # splits stay for the ensemble's thresholds and scores, and the folds are made from train alone
    pooled = ("train",) if params.evaluate.ensemble == "folds" else SPLITS
    pool = Pool(store_dir, params.train.image_size, pooled)
    meta = pool_metadata(pool, raw_dir)  # labels.csv read once, for patients and sources
    group = pool_groups(pool, raw_dir, meta, params.verify.near_duplicate_bits)
    if params.data.folds == "source":
        members, about = source_members(pool, meta, group, params)
    else:
        refuse_thin_classes(group, pool.strata(), params.data.folds)
        members = kfold_members(group, pool.strata(), params.data.folds, params.seed)
        about = [{} for _ in members]
    k = len(members)
    quiet = params.evaluate.model_copy(update={"bootstrap": 0, "grid_images": 0})  # the spread is over folds
    fold_params = params.model_copy(update={"evaluate": quiet})
    kept, code = (KeptFolds(kept_dir), code_digest()) if kept_dir else (None, "")
    folds = []
    for fold in range(k):
        where = work_dir / f"fold{fold}"
        sizes = write_fold_store(pool, members[fold], where / "decoded")
        named = f" (source {about[fold]['source']})" if about[fold] else ""
        print(f"crossval: fold {fold + 1}/{k}{named}: " + ", ".join(f"{n} {c}" for n, c in sizes.items()))
        signature = fold_signature(fold_params, pool.classes, fold, where / "decoded", code) if kept else {}
        if kept and params.train.resume and kept.restore(fold, where, signature):
            print(f"crossval: fold {fold + 1}/{k}: kept from an earlier run with the same params, images and code")
            scores = json.loads((where / "test.json").read_text())
        else:
            scores = run_fold(fold_params, where, raw_dir)
            if kept:
                kept.keep(fold, where, signature)
        folds.append({"fold": fold, **about[fold], "n": scores["n"], **fold_summary(scores)})
    result = aggregate(folds)
    result["protocol"] = "leave-one-source-out" if params.data.folds == "source" else "k-fold"
    result["pool"] = "+".join(pooled)
    result["pooled"] = pooled_scores([work_dir / f"fold{fold}" / "predictions.csv" for fold in range(k)])
    write_json(metrics_path, result)
    return result
