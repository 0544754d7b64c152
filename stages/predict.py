"""`python -m stages.predict PATH [PATH ...] [--model models/model.pt] [--out FILE]`: classify new X-rays.

Images and folders (searched recursively) in; per-class probabilities and the decision out, as
CSV (or JSON when FILE ends in .json) to FILE or standard output. Images are decoded, resized
and normalised exactly as the checkpoint's training data were. The decision threshold is the
one `evaluate` fitted on validation for this checkpoint (read from metrics/test.json when that
file was written for the same model), else 0.5. Missing paths, non-images and unreadable files
are named on standard error and the rest are still predicted; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxr.atomic import write_text
from cxr.data.images import DEFAULT_MAX_PIXELS
from cxr.evaluate.doubt import Scorer
from cxr.evaluate.predict import assess_files, decide, find_images, render
from cxr.evaluate.run import load_abstention, load_decision_thresholds
from cxr.model.ensemble import load_scorer, member_paths
from cxr.model.inference import Runtime
from cxr.paths import MODEL_PATH, TEST_METRICS
from cxr.stage import stage

IMAGES_PER_PASS = 256  # images decoded and predicted together


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    parser.add_argument(
        "--model",
        type=Path,
        default=MODEL_PATH,
        help=f"checkpoint, or a folder of fold checkpoints (models/cv: their ensemble; default {MODEL_PATH})",
    )
    parser.add_argument("--out", type=Path, help="write CSV (or JSON for *.json) here instead of standard output")
    parser.add_argument("--metrics", type=Path, default=TEST_METRICS, help="where evaluate's thresholds are read")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="larger images are skipped by name (default %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default %(default)s)")
    args = parser.parse_args(argv)
    if args.out is not None and args.out.is_dir():  # checked before the model loads: nothing to lose
        parser.error(f"--out {args.out} is a folder; give a file in it, e.g. --out {args.out / 'predictions.csv'}")

    paths = member_paths(args.model) if args.model.is_dir() else [args.model]  # a folder: its fold models' ensemble
    model, spec, payload = load_scorer(paths)
    runtime = Runtime.select().scaled(spec)
    runtime.prepare_model(model)
    thresholds, tta = load_decision_thresholds(args.metrics, paths)
    rule = load_abstention(args.metrics, paths)
    scorer = Scorer(model, spec, payload["densities"], args.batch_size, tta, runtime, args.max_pixels)
    found = find_images(args.paths)
    scored = assess_files(scorer, found.files, rule, IMAGES_PER_PASS)
    problems = list(found.problems) + scored.problems
    for path, why in problems:
        print(f"predict: skipped {path}: {why}", file=sys.stderr)
    if not scored.files:
        print("predict: no readable images among the given paths", file=sys.stderr)
        return 1
    decisions, used = decide(spec, scored.doubt.probs, thresholds)
    source = f"fitted by evaluate ({args.metrics})" if thresholds else "default"
    where = ", ".join(f"{c} {t:.3f}" for c, t in used.items()) or "argmax"
    abstained = sum(bool(r) for r in scored.reasons)
    doubt = "fitted by evaluate" if rule else f"model-free checks only: no abstention rule in {args.metrics} for it"
    print(
        f"predict: {len(scored.files)} images with {args.model} ({spec.arch}, {spec.image_size} px); "
        f"threshold {where} ({source}); abstains on {abstained} ({doubt})",
        file=sys.stderr,
    )
    text = render(scored, decisions, spec.classes, "json" if args.out and args.out.suffix == ".json" else "csv")
    if args.out:
        write_text(args.out, text)
        print(f"predict: wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 1 if problems else 0


@stage("predict")
def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
