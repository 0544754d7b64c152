"""DICOM radiographs (`.dcm`, via pydicom) decoded as a radiologist's viewer shows them.

Hospitals export DICOM, and its stored values are not what anyone looks at: MONOCHROME1 films
store bright bone as low values, 12-16 bit detectors need the file's VOI LUT or window to be read,
and an unwindowed or inverted film is itself a source shortcut a model learns. So a file becomes
8-bit grayscale by the standard's own steps (PS3.3 C.11): the modality LUT (rescale slope and
intercept), then the VOI LUT sequence or the first window (LINEAR, LINEAR_EXACT or SIGMOID),
mapped to 0..1; without either, the stored range is stretched (as for 16-bit PNGs); MONOCHROME1
is inverted last, so a MONOCHROME1 film and its MONOCHROME2 twin decode to the same pixels.
The pixel limit is read from the header before the pixel data are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PHOTOMETRIC = {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422"}  # palette colour is refused


class DicomError(ValueError):
    """A DICOM file this decoder cannot turn into a radiograph, with why."""


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """A VOI window to 0..1 (PS3.3 C.11.2.1.2: LINEAR, LINEAR_EXACT, SIGMOID)."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if function not in ("", "LINEAR"):
        raise DicomError(f"VOI LUT function {function!r} is not LINEAR, LINEAR_EXACT or SIGMOID")
    if width < 1:
        raise DicomError(f"window width {width} is below 1")
    return np.clip((values - (center - 0.5)) / max(width - 1.0, 1.0) + 0.5, 0.0, 1.0)


def _first(value) -> float:
    """The first of a possibly multi-valued DICOM number (WindowCenter may hold several windows)."""
    from pydicom.multival import MultiValue

    return float(value[0] if isinstance(value, MultiValue) else value)


def film_values(ds) -> np.ndarray:
    """The displayed intensity of every pixel of a read dataset, 0 (black) .. 1 (white), float64."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DicomError(f"{frames} frames; a radiograph has one (export the film as a single-frame file)")
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in PHOTOMETRIC:
        raise DicomError(f"photometric interpretation {photometric!r} is not one a radiograph is stored in")
    pixels = ds.pixel_array
    if pixels.ndim == 3:  # colour secondary capture: pydicom gives RGB; ITU-R 601 luma, as for colour PNGs
        rgb = pixels.astype(np.float64)
        return (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114) / 255.0
    modality = np.asarray(apply_modality_lut(pixels, ds))
    values = modality.astype(np.float64)
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        indices = modality if modality.dtype.kind in "iu" else np.rint(modality).astype(np.int64)  # a table is indexed
        out = np.asarray(apply_voi(indices, ds, index=0), dtype=np.float64) / float(2**bits - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        function = str(getattr(ds, "VOILUTFunction", "") or "").upper()
        out = _window(values, _first(ds.WindowCenter), _first(ds.WindowWidth), function)
    else:
        lo, hi = float(values.min()), float(values.max())
        out = (values - lo) / (hi - lo or 1.0)
    return 1.0 - out if photometric == "MONOCHROME1" else out


def dicom_header(path: Path):
    """A DICOM file's header (pydicom Dataset), its pixel data not read; DicomError naming the file if unreadable."""
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises several types for a bad file
        raise DicomError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc


def dicom_size(path: Path) -> tuple[int, int]:
    """(width, height x frames) from a DICOM file's header, its pixel data not read."""
    header = dicom_header(path)
    if "Rows" not in header or "Columns" not in header:
        raise DicomError(f"{path}: a DICOM file without image rows and columns (not an image)")
    return int(header.Columns), int(header.Rows) * int(getattr(header, "NumberOfFrames", 1) or 1)


def read_dicom(path: Path) -> Image.Image:
    """A DICOM file as an 8-bit grayscale PIL image (format "DICOM"), or DicomError naming why not.
    Check its size first (dicom_size; cxr.data.images.open_image does)."""
    import pydicom

    try:
        values = film_values(pydicom.dcmread(path))
    except DicomError as exc:
        raise DicomError(f"{path}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - e.g. a compressed transfer syntax without its decoder
        raise DicomError(f"{path}: pixel data do not decode ({type(exc).__name__}: {exc})") from exc
    img = Image.fromarray(np.round(values * 255.0).astype(np.uint8), mode="L")
    img.format = "DICOM"
    return img
