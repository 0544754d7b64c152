import shutil

import pytest

from cxr.data.images import open_rgb
from cxr.data.splits import DatasetError, scan_split
from cxr.data.verify import verify_splits


def test_demo_set_passes_with_counts(demo_root):
    counts = verify_splits(demo_root).counts
    assert counts == {
        "train": {"infected": 12, "normal": 12},
        "val": {"infected": 6, "normal": 6},
        "test": {"infected": 6, "normal": 6},
    }


def test_corrupt_file_is_named(demo_root):
    bad = demo_root / "val" / "normal" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DatasetError, match="broken.png: does not decode"):
        verify_splits(demo_root)


def test_class_sets_must_match(demo_root):
    shutil.rmtree(demo_root / "test" / "infected")
    with pytest.raises(DatasetError, match=r"test: classes \['normal'\] differ from train's"):
        verify_splits(demo_root)


def test_empty_class_and_missing_split(demo_root):
    for png in (demo_root / "train" / "normal").glob("*.png"):
        png.unlink()
    shutil.rmtree(demo_root / "val")
    with pytest.raises(DatasetError) as err:
        verify_splits(demo_root)
    message = str(err.value)
    assert "train/normal: 0 images, fewer than verify.min_per_class=1" in message
    assert "val: split folder not found" in message


def test_scan_order_is_deterministic_and_labelled(demo_root):
    split = scan_split(demo_root, "train")
    assert split.classes == ("infected", "normal")
    assert list(split.files) == sorted(split.files)
    assert split.labels.tolist() == [0] * 12 + [1] * 12


def test_open_rgb_normalises_16_bit_and_rgba(tmp_path):
    import numpy as np
    from PIL import Image

    deep = tmp_path / "deep.png"
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(deep)
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (8, 8), (10, 20, 30, 128)).save(rgba)
    for path in (deep, rgba):
        img = open_rgb(path)
        assert img.mode == "RGB"
    arr = np.asarray(open_rgb(deep))
    assert arr.min() == 0 and arr.max() == 255


def test_multilabel_images_in_two_class_folders_get_both_labels(tmp_path):
    from cxr.config import parse_params
    from cxr.data.demo import write_demo_dataset
    from tests.conftest import tiny_params_dict

    raw = tiny_params_dict()
    raw["data"]["task"] = "multilabel"
    raw["train"]["loss"] = "bce"
    params = parse_params(raw)
    root = tmp_path / "raw"
    counts = write_demo_dataset(root, params.data, params.seed)
    assert counts["train"] == {"covid": 12, "pneumonia": 15, "normal": 12}  # 3 co-infected covid images
    split = scan_split(root, "train", multilabel=True)
    assert split.classes == ("covid", "normal", "pneumonia")
    assert split.labels.shape == (36, 3)
    both = split.labels[:, 0] * split.labels[:, 2]
    assert both.sum() == 3 and split.labels.sum() == 39
    assert split.labels[:, 1].sum() == 12 and (split.labels.sum(1) >= 1).all()


def test_labels_csv_gives_labels_and_classes(demo_root):
    split_dir = demo_root / "val"
    files = sorted(split_dir.rglob("*.png"))
    rows = ["path,labels"]
    for i, path in enumerate(files):
        labels = "covid;pneumonia" if i % 3 == 0 else ("covid" if i % 3 == 1 else "normal")
        rows.append(f"{path.relative_to(split_dir)},{labels}")
    (split_dir / "labels.csv").write_text("\n".join(rows) + "\n")
    split = scan_split(demo_root, "val", multilabel=True)
    assert split.classes == ("covid", "normal", "pneumonia")
    assert split.labels.shape == (12, 3) and split.labels[0].tolist() == [1, 0, 1]
    assert split.labels[:, 2].sum() == 4
    with pytest.raises(DatasetError, match="several labels.*data.task: multilabel"):
        scan_split(demo_root, "val")
    (split_dir / "labels.csv").write_text("path,labels\nmissing.png,covid\n")
    with pytest.raises(DatasetError, match=r"labels.csv:2: .*missing.png does not exist"):
        scan_split(demo_root, "val", multilabel=True)
    (split_dir / "labels.csv").write_text("file,label\n")
    with pytest.raises(DatasetError, match="needs the columns path,labels"):
        verify_splits(demo_root)


def test_identical_images_across_splits_are_a_leak(demo_root):
    from PIL import Image

    source = sorted((demo_root / "train" / "normal").glob("*.png"))[0]
    # the same pixels re-encoded (another compression level) still count as the same image
    with Image.open(source) as img:
        img.save(demo_root / "test" / "normal" / "copied.png", compress_level=1)
    shutil.copy(source, demo_root / "train" / "normal" / "again.png")
    with pytest.raises(DatasetError) as err:
        verify_splits(demo_root)
    message = str(err.value)
    assert "1 leaks across splits (1 images with identical pixels, 0 near-duplicate pairs" in message
    assert "verify.max_leaks=0" in message
    assert "test/normal/copied.png" in message and f"train/normal/{source.name}" in message
    report = verify_splits(demo_root, max_leaks=1)
    assert len(report.duplicates_across) == 1 and len(report.duplicates_across[0]) == 3
    assert report.duplicates_within == []
    (demo_root / "test" / "normal" / "copied.png").unlink()
    report = verify_splits(demo_root)
    assert [sorted(g) for g in report.duplicates_within] == [
        sorted([f"train/normal/{source.name}", "train/normal/again.png"])
    ]


def test_awkward_image_modes_decode_and_bad_files_are_named(demo_root):
    """16-bit, RGBA, palette, CMYK JPEG and EXIF-rotated files all become 8-bit RGB; a truncated
    file and an oversized image fail verify by name."""
    import io

    import numpy as np
    from PIL import Image

    folder = demo_root / "train" / "normal"
    wide = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (20, 1))  # 40 wide, 20 high
    Image.fromarray(wide.astype(np.uint16) * 257).save(folder / "deep16.png")
    Image.fromarray(wide).convert("RGBA").save(folder / "alpha.png")
    Image.fromarray(wide).convert("P").save(folder / "palette.png")
    Image.fromarray(wide).convert("CMYK").save(folder / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    Image.fromarray(wide).save(folder / "rotated.jpg", exif=exif)
    for name in ("deep16.png", "alpha.png", "palette.png", "cmyk.jpg"):
        img = open_rgb(folder / name)
        assert img.mode == "RGB" and img.size == (40, 20), name
        assert np.asarray(img).max() > 200, name  # contrast survives the conversion
    assert open_rgb(folder / "rotated.jpg").size == (20, 40)  # EXIF orientation applied
    assert verify_splits(demo_root).counts["train"]["normal"] == 17

    whole = io.BytesIO()
    Image.fromarray(wide).save(whole, format="PNG")
    (folder / "truncated.png").write_bytes(whole.getvalue()[:-30])
    Image.new("L", (3000, 2000)).save(demo_root / "val" / "infected" / "huge.png")
    with pytest.raises(DatasetError) as err:
        verify_splits(demo_root, max_pixels=5_000_000)
    message = str(err.value)
    assert "truncated.png: does not decode" in message
    assert "huge.png: 3000x2000 = 6,000,000 pixels, over the limit of 5,000,000 (verify.max_pixels)" in message


def test_near_duplicates_across_splits_are_a_leak(demo_root):
    from PIL import Image, ImageEnhance

    source = sorted((demo_root / "train" / "infected").glob("*.png"))[0]
    with Image.open(source) as img:  # the same radiograph, resized and a little brighter: not identical
        near = ImageEnhance.Brightness(img.resize((72, 72))).enhance(1.05)
        near.save(demo_root / "test" / "infected" / "near_copy.png")
    with pytest.raises(
        DatasetError, match=rf"(?s)1 near-duplicate pairs.*train/infected/{source.name} ~ test/infected/near_copy.png"
    ):
        verify_splits(demo_root)
    report = verify_splits(demo_root, near_bits=0)  # 0 turns the near-duplicate check off
    assert report.near_across == [] and report.duplicates_across == []
    # the demo phantoms themselves are far apart: no false alarms on the untouched set
    (demo_root / "test" / "infected" / "near_copy.png").unlink()
    assert verify_splits(demo_root).near_within == []


def test_expected_counts_and_the_readable_report(demo_root):
    from cxr.data.report import render_report

    report = verify_splits(demo_root, expected={"train": 24, "test": 12})
    assert report.modes == {"L": 48} and report.sizes == [(48, 48), (48, 48)]
    with pytest.raises(DatasetError, match=r"val: 12 images, but verify.expected.val=13"):
        verify_splits(demo_root, expected={"val": 13})
    source = sorted((demo_root / "train" / "normal").glob("*.png"))[0]
    shutil.copy(source, demo_root / "test" / "normal" / "leaked.png")
    text = render_report(verify_splits(demo_root, max_leaks=1), "data/raw")
    assert "| train | 12 | 12 | 24 |" in text
    assert "## Identical images across splits (leaks): 1" in text
    assert f"- train/normal/{source.name} = test/normal/leaked.png" in text


def test_on_corrupt_skip_excludes_and_lists_unreadable_files(demo_root, tmp_path):
    import json

    from cxr.data.splits import excluded_files

    (demo_root / "train" / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DatasetError, match="(?s)broken.png: does not decode.*verify.on_corrupt: skip"):
        verify_splits(demo_root)
    report = verify_splits(demo_root, skip_unreadable=True)
    assert report.excluded == ["train/normal/broken.png"]
    assert report.counts["train"]["normal"] == 12  # the broken file is not counted
    metrics = tmp_path / "data.json"
    metrics.write_text(json.dumps({"excluded": report.excluded}))
    skip = excluded_files(metrics, demo_root)
    split = scan_split(demo_root, "train", exclude=skip)
    assert len(split.files) == 24 and demo_root / "train/normal/broken.png" not in split.files
