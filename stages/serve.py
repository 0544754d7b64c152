"""`python -m stages.serve [--port N] [--model models/model.pt]`: try a model in the browser.

Starts a server on 127.0.0.1 (this machine only) with a page where a film (PNG, JPEG or DICOM) is
dropped and its class probabilities against the decision thresholds, the Grad-CAM overlay, the
out-of-distribution and uncertainty flags and the reason for an abstention are shown, with a link
to the model card. Programs POST the film as the multipart field `file` to /predict and get JSON:
probabilities, decision, ood_score, uncertainty, abstain, reason (a 4xx JSON {"error": ...} for a
bad upload). Thresholds and the abstention rule are evaluate's for this model (metrics/test.json).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cxr.data.images import DEFAULT_MAX_PIXELS
from cxr.evaluate.doubt import Scorer
from cxr.evaluate.run import load_abstention, load_decision_thresholds
from cxr.model.checkpoint import CheckpointError
from cxr.model.ensemble import load_scorer, member_paths
from cxr.model.inference import Runtime
from cxr.paths import MODEL_PATH, TEST_METRICS
from cxr.serve.app import MAX_BYTES, Service, make_server
from cxr.stage import stage

CARD = Path("models/MODEL_CARD.md")


def build_service(args: argparse.Namespace) -> Service:
    if args.model.suffix.lower() in (".onnx", ".pt2", ".ts") or args.model.name.endswith(".torchscript.pt"):
        raise CheckpointError(
            f"{args.model}: serve loads the PyTorch checkpoint (models/model.pt, or models/cv), not an exported "
            "file: the Grad-CAM overlay and the feature density behind ood_score need the network itself"
        )
    paths = member_paths(args.model) if args.model.is_dir() else [args.model]  # a folder: its fold models' ensemble
    model, spec, payload = load_scorer(paths)
    runtime = Runtime.select().scaled(spec)
    runtime.prepare_model(model)
    thresholds, tta = load_decision_thresholds(args.metrics, paths)
    scorer = Scorer(model, spec, payload["densities"], 32, tta, runtime, args.max_pixels)
    return Service(scorer, thresholds, load_abstention(args.metrics, paths), args.card, args.max_mb * 2**20)


def argparse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stages.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default %(default)s; 0: any free)")
    parser.add_argument(
        "--model", type=Path, default=MODEL_PATH, help=f"checkpoint, or models/cv for the fold ensemble ({MODEL_PATH})"
    )
    parser.add_argument("--metrics", type=Path, default=TEST_METRICS, help="evaluate's thresholds and abstention rule")
    parser.add_argument("--card", type=Path, default=CARD, help="the model card the page links to")
    parser.add_argument("--max-mb", type=int, default=MAX_BYTES // 2**20, help="largest upload (default %(default)s)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest film in pixels")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> None:
    args = argparse_args(argv)
    server = make_server(build_service(args), args.port)
    host, port = server.server_address[:2]
    print(f"serve: {args.model} at http://{host}:{port}/ (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@stage("serve")
def main() -> None:
    run()


if __name__ == "__main__":
    main()
