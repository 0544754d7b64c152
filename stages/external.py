"""Stage `external`: score the model on the further folders of evaluate.external."""

from __future__ import annotations

from cxr.atomic import write_json
from cxr.config import load_params
from cxr.model.ensemble import scored_paths
from cxr.paths import CV_DIR, EXTERNAL_LIVE_DIR, EXTERNAL_METRICS, EXTERNAL_SUMMARY, MODEL_PATH, RAW_DIR, TEST_METRICS
from cxr.stage import stage
from cxr.summaries import external_summary, headline_text
from cxr.validation.external import validate_externally


@stage("external")
def main() -> None:
    params = load_params()
    paths = scored_paths(params.evaluate.ensemble, MODEL_PATH, CV_DIR)
    results = validate_externally(params, paths, TEST_METRICS, RAW_DIR, EXTERNAL_METRICS, EXTERNAL_LIVE_DIR)
    write_json(EXTERNAL_SUMMARY, external_summary(results))
    for name, s in results.items():
        print(
            f"external: {name}: {headline_text(s)} on {s['n']} images "
            f"({s['leaks_excluded']} repeating training images left out) -> {EXTERNAL_METRICS}"
        )
    if not results:
        print("external: evaluate.external is empty; nothing to score")


if __name__ == "__main__":
    main()
