"""DICOM films decode as a viewer shows them: windowed, VOI LUT applied, MONOCHROME1 inverted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxr.data.dicom import DicomError
from cxr.data.fingerprints import read_file
from cxr.data.images import ImageTooLarge, open_gray
from cxr.data.store import decode_all

RNG = np.random.default_rng(0)
STORED = (RNG.random((40, 56)) * 4095).astype(np.uint16)  # a 12-bit detector's values


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **tags) -> Path:
    """A single-frame uncompressed DICOM file of `pixels` (uint16, 12 bits stored) with extra tags."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def gray(path: Path) -> np.ndarray:
    return np.asarray(open_gray(path), dtype=np.int16)


def test_monochrome1_decodes_to_the_inverted_monochrome2_film(tmp_path):
    plain = gray(write_dicom(tmp_path / "m2.dcm", STORED))
    inverted = gray(write_dicom(tmp_path / "m1.dcm", 4095 - STORED, "MONOCHROME1"))
    assert np.abs(plain - inverted).max() <= 1 and (plain == inverted).mean() > 0.99
    # unwindowed: the stored range stretched, bright where the stored value is high
    expected = np.round((STORED - STORED.min()) / (STORED.max() - STORED.min()) * 255)
    assert np.abs(plain - expected).max() <= 1
    # the same with a window: both photometric interpretations still agree
    window = {"WindowCenter": 2048, "WindowWidth": 1024}
    a = gray(write_dicom(tmp_path / "w2.dcm", STORED, **window))
    b = gray(write_dicom(tmp_path / "w1.dcm", 4095 - STORED, "MONOCHROME1", WindowCenter=4095 - 2048 + 1,
                         WindowWidth=1024))  # fmt: skip
    assert np.abs(a - b).max() <= 2


def test_window_is_applied_per_the_standard(tmp_path):
    img = gray(write_dicom(tmp_path / "w.dcm", STORED, WindowCenter=2048, WindowWidth=1024))
    lo, hi = 2048 - 0.5 - 1023 / 2, 2048 - 0.5 + 1023 / 2
    assert (img[STORED <= lo] == 0).all() and (img[STORED > hi] == 255).all()
    inside = (STORED > lo + 20) & (STORED < hi - 20)
    expected = ((STORED - 2047.5) / 1023 + 0.5) * 255
    assert np.abs(img[inside] - expected[inside]).max() <= 1
    # the modality LUT comes first: rescaled values are what the window reads
    shifted = gray(write_dicom(tmp_path / "r.dcm", STORED, RescaleSlope=1, RescaleIntercept=-1024,
                               WindowCenter=2048 - 1024, WindowWidth=1024))  # fmt: skip
    assert np.array_equal(shifted, img)


def test_voi_lut_sequence_wins_over_the_window(tmp_path):
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]  # 4,096 entries from stored value 0, 16-bit output
    table = (65535 - np.arange(4096) * 16).astype(np.uint16)  # a decreasing table: the LUT, not the window
    item.add_new((0x0028, 0x3006), "US", table.tolist())  # LUTData as US (its VR is US or OW)
    img = gray(write_dicom(tmp_path / "lut.dcm", STORED, VOILUTSequence=Sequence([item]), WindowCenter=2048,
                           WindowWidth=1024))  # fmt: skip
    assert np.array_equal(img, np.round(table[STORED] / 65535 * 255).astype(np.int16))


def test_dicom_reaches_the_store_and_verify(tmp_path):
    path = write_dicom(tmp_path / "film.dcm", STORED)
    good, pixels, problems = decode_all([path], 16)
    assert good == [path] and pixels.shape == (1, 1, 16, 16) and not problems
    record = read_file("train", path, 10_000)
    assert not record.problem and record.size == (56, 40) and record.mode == "L" and record.digest
    assert read_file("train", path, 1000).problem.startswith("56x40 = 2,240 pixels, over the limit of 1,000")


def test_bad_dicom_is_refused_by_name(tmp_path):
    path = write_dicom(tmp_path / "big.dcm", STORED)
    with pytest.raises(ImageTooLarge, match=r"big\.dcm: 56x40 = 2,240 pixels"):
        open_gray(path, max_pixels=1000)
    with pytest.raises(ImageTooLarge, match="bytes per pixel"):
        open_gray(path, max_pixels=100)  # the file alone is over 8 bytes per allowed pixel
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(DicomError, match=r"junk\.dcm: not a readable DICOM file"):
        open_gray(junk)
    frames = write_dicom(tmp_path / "frames.dcm", np.concatenate([STORED, STORED]), NumberOfFrames=2)
    with pytest.raises(DicomError, match=r"frames\.dcm: 2 frames; a radiograph has one"):
        open_gray(frames)
    palette = write_dicom(tmp_path / "palette.dcm", STORED, "PALETTE COLOR")
    with pytest.raises(DicomError, match=r"palette\.dcm: photometric interpretation 'PALETTE COLOR' is not one"):
        open_gray(palette)
