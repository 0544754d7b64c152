"""Named datasets: the course's Google Drive shares, so `-S data.preset=...` reproduces them.

The ids are the ones the published course reports link to. They could not be opened from the
machine this was written on (no internet), so the archives' layout is detected at download time
and `expected` holds only the split sizes the reports state.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    gdrive_ids: tuple[str, ...]  # tried in order: the first that downloads is used
    expected: dict[str, int] = field(default_factory=dict)  # images per split, when published


PRESETS = {
    # COVID-19 infected vs normal chest X-rays (course dataset, Task 1 and 2; data.task: binary)
    "covid-binary": Preset(
        ("1-FzZhQO9oHIT9SNOWYoKsuz7fe447vtR", "1-HQQciKYfwAO3oH7ci6zhg45DduvkpnK"),
        {"train": 4919 + 7081, "val": 615 + 885, "test": 615 + 885},
    ),
    # covid / pneumonia / normal chest X-rays (course dataset, Part 2; about 6200/628/629 images;
    # data.task: multiclass or multilabel)
    "covid-3class": Preset(("1eytbwaLQBv12psV8I-aMkIli9N3bf8nO",)),
}
