"""Knowing when not to answer: per image an out-of-distribution score, an uncertainty and the
abstention rule fitted on validation (`evaluate.coverage`).

- `ood_score`: Mahalanobis distance of the image's features to the training films (cxr/model/ood.py;
  for a fold ensemble, the mean over its members, each with its own fitted density).
- `uncertainty`: the largest standard deviation of a class probability over the passes that are
  there: the ensemble's members x the test-time views; with one model and one view, MC dropout
  (MC_SAMPLES passes of the head with its dropout on); with no dropout either, the image and its
  mirror image.
- abstention: a film is *flagged* when it fails a model-free check (cxr/data/film_checks.py) or its
  ood_score is over the threshold that keeps `evaluate.coverage` of the validation films; it is
  also left *uncertain* when its uncertainty is over the threshold that keeps the same share of the
  validation films the flag passed. Both thresholds are split-conformal quantiles (the
  ceil((n + 1) coverage)-th smallest), so a new film like the validation films is flagged with
  probability at most 1 - coverage. Together they answer about coverage^2 of such films.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from cxr.data.radiograph import InputRecipe, RecipeError
from cxr.model.checkpoint import CheckpointError
from cxr.model.ensemble import Ensemble
from cxr.model.inference import TTA_VIEWS, Runtime, predict_logits, predict_probabilities
from cxr.model.networks import head_name
from cxr.model.ood import FeatureDensity, FeatureTap, has_dropout
from cxr.model.spec import ModelSpec

MC_SAMPLES = 16
DISTANCE_CHUNK = 4096  # rows per distance computation: memory stays bounded on large sets


@dataclass
class Assessment:
    """Per image: class probabilities (N, C), ood_score (N,; NaN without a fitted density) and
    uncertainty (N,), and what the uncertainty is a spread over."""

    probs: np.ndarray
    ood: np.ndarray
    uncertainty: np.ndarray
    spread_over: str


def members_of(model) -> list:
    return list(model.members) if isinstance(model, Ensemble) else [model]


def _distance(density: FeatureDensity | None, features: torch.Tensor) -> np.ndarray:
    if density is None or not len(features):
        return np.full(len(features), np.nan)
    parts = [density.distance(features[i : i + DISTANCE_CHUNK]) for i in range(0, len(features), DISTANCE_CHUNK)]
    return torch.cat(parts).double().numpy()


def require_recipe(spec: ModelSpec) -> None:
    """Refuse a checkpoint whose input recipe this version cannot rebuild."""
    try:
        InputRecipe.from_name(spec.preprocessing)
    except RecipeError as exc:
        raise CheckpointError(f"checkpoint: {exc}; score it with the version that trained it") from exc


def assess(
    model,
    spec: ModelSpec,
    images,
    batch_size: int,
    tta: str,
    runtime: Runtime,
    densities: list[FeatureDensity | None],
    seed: int = 0,
) -> Assessment:
    """The one scoring path of evaluate, external sets, cross-validation folds, `stages.predict` and
    `stages.serve`: class probabilities of decoded images (a (N, C, S, S) uint8 array or tensor, or a
    SplitStore) averaged over the `tta` views (float64), with each image's ood_score and uncertainty
    (see the module docstring). `model` is on `runtime`; `densities`: one per member (or model)."""
    require_recipe(spec)
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    members, views = members_of(model), TTA_VIEWS[tta]
    n = len(images)
    if not n:
        return Assessment(np.zeros((0, len(spec.classes))), np.zeros(0), np.zeros(0), "")
    single = len(members) * len(views) == 1
    sample = single and has_dropout(members[0].get_submodule(head_name(members[0])))
    with FeatureTap(members, MC_SAMPLES if sample else 0, seed) as tap:
        probs = predict_probabilities(model, images, batch_size, runtime, spec.probabilities, tta)
        features, logits, sampled = tap.take()
        if single and not sample:  # no ensemble, no views, no dropout: the mirror image is the second pass
            predict_logits(model, images, batch_size, runtime, lambda b: runtime.images(b.flip(-1)))
            logits = [torch.cat([x, y]) for x, y in zip(logits, tap.take()[1], strict=True)]
    classes = len(spec.classes)
    if sample:
        passes = spec.probabilities(sampled[0].reshape(-1, classes)).reshape(MC_SAMPLES, n, classes)
        over = f"MC dropout ({MC_SAMPLES} passes of the head)"
    else:
        passes = torch.cat([spec.probabilities(x).reshape(-1, n, classes) for x in logits])
        over = f"{len(members)} model(s) x {len(views)} view(s)" if not single else "the image and its mirror image"
    spread = passes.double().std(0, unbiased=False).amax(1).numpy()
    ood = np.mean([_distance(d, f[:n]) for d, f in zip(densities, features, strict=True)], axis=0)
    return Assessment(probs.numpy().astype(np.float64), np.asarray(ood, np.float64), spread, over)


def joined(parts: list[Assessment], classes: int) -> Assessment:
    """Assessments of consecutive chunks as one."""
    if not parts:
        return Assessment(np.zeros((0, classes)), np.zeros(0), np.zeros(0), "")
    return Assessment(
        np.concatenate([p.probs for p in parts]),
        np.concatenate([p.ood for p in parts]),
        np.concatenate([p.uncertainty for p in parts]),
        parts[0].spread_over,
    )


@dataclass(frozen=True)
class Scorer:
    """What scores films the same way everywhere (evaluate, external, predict, serve): the model (or
    ensemble) with its densities, evaluate's batch size and test-time augmentation, the device, and
    the pixel limit of the model-free checks."""

    model: object
    spec: ModelSpec
    densities: list
    batch_size: int
    tta: str
    runtime: Runtime
    max_pixels: int

    def assess(self, images) -> Assessment:
        return assess(self.model, self.spec, images, self.batch_size, self.tta, self.runtime, self.densities)


DOUBT_COLUMNS = ("ood_score", "uncertainty", "abstain", "reason")


def doubt_cells(a: Assessment, i: int, reasons: list[str]) -> list[str]:
    """Image i's DOUBT_COLUMNS as CSV cells (an empty ood_score: the checkpoint has no fitted density)."""
    ood = "" if math.isnan(a.ood[i]) else f"{a.ood[i]:.4f}"
    return [ood, f"{a.uncertainty[i]:.6f}", "yes" if reasons[i] else "no", reasons[i]]


def conformal_threshold(scores: np.ndarray, coverage: float) -> float | None:
    """The ceil((n + 1) coverage)-th smallest finite score: a new exchangeable score exceeds it with
    probability at most 1 - coverage. None (flag nothing) when there are too few scores for that."""
    scores = np.sort(np.asarray(scores, np.float64)[np.isfinite(scores)])
    k = math.ceil((len(scores) + 1) * coverage)
    return float(scores[k - 1]) if 0 < k <= len(scores) else None


@dataclass(frozen=True)
class Abstention:
    """The fitted rule (recorded in metrics/test.json under `abstention`)."""

    coverage: float
    ood_threshold: float | None
    uncertainty_threshold: float | None

    @classmethod
    def fit(cls, coverage: float, val: Assessment, checks: list[str]) -> Abstention:
        readable = np.asarray([not c for c in checks], bool)
        ood_cut = conformal_threshold(val.ood[readable], coverage)
        kept = readable & (val.ood <= ood_cut if ood_cut is not None else True)
        return cls(coverage, ood_cut, conformal_threshold(val.uncertainty[kept], coverage))

    @classmethod
    def from_json(cls, data: dict | None) -> Abstention | None:
        return cls(**{k: data.get(k) for k in ("coverage", "ood_threshold", "uncertainty_threshold")}) if data else None

    def to_json(self) -> dict:
        return asdict(self)

    def flags(self, a: Assessment, checks: list[str]) -> list[str]:
        """Per image, why it is out of distribution ('' when it is not): a failed check or a high ood_score."""
        out = []
        for check, ood in zip(checks, a.ood, strict=True):
            if check:
                out.append(check)
            elif self.ood_threshold is not None and ood > self.ood_threshold:
                out.append(
                    f"unlike the training films: ood score {ood:.1f} over {self.ood_threshold:.1f} "
                    f"(evaluate.coverage {self.coverage:g})"
                )
            else:
                out.append("")
        return out

    def reasons(self, a: Assessment, checks: list[str]) -> list[str]:
        """Per image, why the model abstains ('' = it answers)."""
        out = []
        for flag, spread in zip(self.flags(a, checks), a.uncertainty, strict=True):
            if not flag and self.uncertainty_threshold is not None and spread > self.uncertainty_threshold:
                flag = f"uncertain: spread {spread:.3f} over {self.uncertainty_threshold:.3f}"
            out.append(flag)
        return out


def checks_only(checks: list[str], n: int) -> list[str]:
    """Abstention reasons with no fitted rule (no evaluate metrics for this model): the failed checks only."""
    return list(checks) if checks else [""] * n


def right(labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """Whether each decision is right (multi-label: every class)."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    return (labels == preds).all(1) if labels.ndim == 2 else labels == preds


def risk_coverage(correct: np.ndarray, uncertainty: np.ndarray, points: int = 101) -> list[dict]:
    """The error rate among the most certain films at each coverage (ranked by uncertainty): the
    risk-coverage curve, about `points` rows of {coverage, risk, accuracy}."""
    n = len(correct)
    if not n:
        return []
    order = np.argsort(uncertainty, kind="stable")
    cumulative = np.cumsum(~np.asarray(correct, bool)[order])
    counts = np.unique(np.linspace(1, n, min(points, n)).round().astype(int))
    return [
        {
            "coverage": round(k / n, 6),
            "risk": round(cumulative[k - 1] / k, 6),
            "accuracy": round(1 - cumulative[k - 1] / k, 6),
        }
        for k in counts
    ]


def selective_scores(labels, preds, reasons: list[str], classes, multilabel: bool) -> dict:
    """Accuracy on every film and on the films answered, the answered share, per-class sensitivity on the answered."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    answered = np.asarray([not r for r in reasons], bool)
    correct = right(labels, preds)
    out = {
        "n": len(correct),
        "answered": int(answered.sum()),
        "answered_share": float(answered.mean()) if len(correct) else 0.0,
        "accuracy_all": float(correct.mean()) if len(correct) else None,
        "accuracy_answered": float(correct[answered].mean()) if answered.any() else None,
    }
    sensitivity = {}
    for i, cls in enumerate(classes):
        truth = (labels[:, i] > 0) if multilabel else labels == i
        hit = (preds[:, i] > 0) if multilabel else preds == i
        kept = truth & answered
        sensitivity[cls] = float(hit[kept].mean()) if kept.any() else None
    out["sensitivity_answered"] = sensitivity
    return out
