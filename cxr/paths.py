"""Where each stage reads and writes, relative to the repository root (dvc.yaml names the same)."""

from pathlib import Path

RAW_DIR = Path("data/raw")
DOWNLOAD_DIR = Path("data/downloads")  # archives fetched by data.source url (not a DVC out)
DATA_METRICS = Path("metrics/data.json")
DATA_REPORT = Path("metrics/data_report.md")  # the same findings, readable
MODEL_PATH = Path("models/model.pt")
LAST_PATH = Path("models/last.pt")  # state after the latest finished epoch, for train.resume
TRAIN_LIVE_DIR = Path("metrics/train")
TEST_METRICS = Path("metrics/test.json")
PREDICTIONS = Path("metrics/predictions.csv")  # one row per test image
SUBMISSION = Path("metrics/submission.csv")  # predictions for data/raw/unlabeled, a hand-in set
EVAL_LIVE_DIR = Path("metrics/eval")
DECODED_DIR = Path("data/decoded")  # every split decoded once at train.image_size (cxr/data/store.py)
EXTERNAL_METRICS = Path("metrics/external.json")  # per external set: scores and excluded leaks
EXTERNAL_LIVE_DIR = Path("metrics/external")  # their confusion matrices and ROC curves
CV_DIR = Path("models/cv")  # per fold: decoded store, checkpoint, curves and test scores
CV_METRICS = Path("metrics/cv.json")  # mean, std and each fold's scores
CV_FOLDS_PLOT = Path("metrics/cv/folds.json")  # one row per fold, drawn by `dvc plots show`
FEATURES_DIR = Path("data/features")  # frozen-backbone features of train and val (cxr/train/features.py)
