"""End to end: the real `dvc repro`, `dvc exp run`, `dvc metrics diff` and `dvc plots show`
on a tiny demo set, in a temporary git repository."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, tiny_params_dict
from tests.core.test_dependencies import stage_code

pytestmark = pytest.mark.slow


def run(cwd, *args, check=True):
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
        "DVC_NO_ANALYTICS": "1",
    }
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{output}")
    return proc.returncode, output


def dvc(cwd, *args, check=True):
    return run(cwd, sys.executable, "-m", "dvc", *args, check=check)


def set_param(repo, section, key, value):
    path = repo / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw[section][key] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def make_repo(root, params: dict, ignore: bool = False):
    """A git + DVC repository at `root` holding the project's pipeline code and `params` (and, with
    `ignore`, the project's .gitignore)."""
    for name in ("stages", "cxr"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    if ignore:
        shutil.copy(REPO / ".gitignore", root / ".gitignore")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(root, "git", "init", "-q")
    dvc(root, "init", "-q")
    shutil.copytree(REPO / ".dvc/plots", root / ".dvc/plots")  # the plot templates and the offline page
    dvc(root, "config", "plots.html_template", "plots/offline.html")
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "pipeline")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    """A git + DVC repository holding the project's pipeline code and tiny params, reproduced once and
    committed as the baseline every test of this module starts from (and restores), with what that first
    `dvc repro` printed. Built here, not by the first test, so any test runs alone (`pytest -k`)."""
    root = make_repo(tmp_path_factory.mktemp("pipeline"), tiny_params_dict())
    _, out = dvc(root, "repro")
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "baseline")
    return root, out


@pytest.fixture
def repo(built) -> Path:
    return built[0]


def test_repro_builds_everything_then_nothing(built):
    repo, out = built
    for stage in ("check_params", "download", "verify", "decode", "features", "train", "evaluate", "export"):
        assert f"Running stage '{stage}'" in out
    exported = json.loads((repo / "metrics/export.json").read_text())
    assert exported["images"] == 12 and exported["onnx_max_abs_diff"] < 1e-4
    card = (repo / "models/MODEL_CARD.md").read_text()
    assert "Not for clinical use" in card and "| train | 24 |" in card and "sensitivity" in card
    data = json.loads((repo / "metrics/data.json").read_text())
    assert data["train"] == {"total": 24, "infected": 12, "normal": 12}
    test = json.loads((repo / "metrics/test.json").read_text())
    assert test["n"] == 12 and 0.0 <= test["accuracy"] <= 1.0
    assert set(test["per_class"]) == {"infected", "normal"}
    summary = json.loads((repo / "metrics/train/metrics.json").read_text())
    assert summary["trainable_params"] > 1_000_000 and summary["step"] == 1
    assert (repo / "metrics/train/plots/metrics/val/f1.tsv").read_text().count("\n") == 3  # header + 2 epochs
    assert (repo / "metrics/eval/plots/images/predictions.png").is_file()
    assert (repo / "metrics/eval/plots/images/gradcam.png").is_file()
    for kind in ("roc", "precision_recall", "calibration"):
        assert (repo / f"metrics/eval/plots/sklearn/{kind}/infected.json").is_file(), kind
    screening = test["screening"]["infected"]
    assert screening["threshold"] == 0.5 and screening["sensitivity_ci95_low"] <= screening["sensitivity"]
    rows = (repo / "metrics/predictions.csv").read_text().splitlines()
    assert rows[0] == "path,true,predicted,p_infected,p_normal,ood_score,uncertainty,abstain,reason" and len(rows) == 13
    assert (repo / "models/model.pt").is_file()
    assert not (repo / "metrics/eval/metrics.json").exists()

    _, out = dvc(repo, "repro")
    assert "Running stage" not in out
    _, out = dvc(repo, "status")
    assert "up to date" in out
    assert not run(repo, "git", "status", "--porcelain")[1], "the baseline commit holds every file the run wrote"


@pytest.mark.parametrize(
    "module", ["cxr/config.py", "cxr/data/images.py", "cxr/model/decisions.py", "cxr/train/loop.py"]
)
def test_editing_an_imported_module_reruns_exactly_its_importers(repo, module):
    """dvc status names a stage as changed exactly when the edited module is in its import closure."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    importers = {name for name, (closure, _) in stage_code(repo).items() if module in closure}
    assert importers, module
    path = repo / module
    original = path.read_text()
    try:
        path.write_text(original + "\n# an edit\n")
        _, out = dvc(repo, "status")
    finally:
        path.write_text(original)
    changed = {
        line.rstrip(":").strip() for line in out.splitlines() if line.rstrip().endswith(":") and not line[0].isspace()
    }
    assert changed & set(stages) == importers, out


@pytest.mark.parametrize("key, value", [("nproc", 2), ("compile", True), ("low_memory", True)])
def test_runtime_knobs_rerun_nothing(repo, key, value):
    """Only check_params (which validates params.yaml whole and writes nothing) sees the edit."""
    set_param(repo, "train", key, value)
    try:
        _, out = dvc(repo, "status")
        changed = {line.rstrip(":") for line in out.splitlines() if line.endswith(":") and not line[0].isspace()}
        assert changed == {"check_params"}, out
    finally:
        run(repo, "git", "checkout", "--", "params.yaml")


def test_a_misspelt_key_fails_the_run_though_no_stage_lists_it(repo):
    """Issue 24: stages list the keys they read, so `train.lrr` changed no stage's deps and `dvc repro`
    said "up to date" with the typo ignored; check_params depends on the whole file and refuses it."""
    set_param(repo, "train", "lrr", 0.1)
    try:
        code, out = dvc(repo, "repro", check=False)
        assert code != 0 and "train.lrr: unknown key; did you mean train.lr?" in out, out
        assert "Running stage 'train'" not in out
    finally:
        run(repo, "git", "checkout", "--", "params.yaml")
    _, out = dvc(repo, "status")
    assert "up to date" in out, out  # the failed run recorded nothing


def test_changing_lr_reruns_train_and_evaluate_only(repo):
    set_param(repo, "train", "lr", 0.002)
    _, out = dvc(repo, "repro")
    assert "Running stage 'train'" in out and "Running stage 'evaluate'" in out
    assert "Running stage 'download'" not in out and "Running stage 'verify'" not in out
    run(repo, "git", "checkout", "--", "params.yaml")
    dvc(repo, "checkout", "-q")
    dvc(repo, "repro")


def test_five_fold_cross_validation_runs_through_dvc(repo):
    import statistics

    set_param(repo, "data", "folds", 5)
    try:
        _, out = dvc(repo, "repro")
        assert "Running stage 'crossval'" in out and "Running stage 'train'" not in out
        for fold in range(1, 6):
            assert f"crossval: fold {fold}/5" in out
        _, again = dvc(repo, "repro")
        assert "Running stage" not in again, again
        cv = json.loads((repo / "metrics/cv.json").read_text())
        per_fold = [json.loads((repo / f"models/cv/fold{i}/test.json").read_text()) for i in range(5)]
        assert cv["k"] == 5 and [f["fold"] for f in cv["folds"]] == [0, 1, 2, 3, 4]
        for key in ("accuracy", "f1_macro"):  # by hand: population mean and std over the folds
            values = [s[key] for s in per_fold]
            assert cv[f"{key}_mean"] == pytest.approx(statistics.fmean(values), abs=1e-6)
            assert cv[f"{key}_std"] == pytest.approx(statistics.pstdev(values), abs=1e-6)
        sensitivities = [s["screening"]["infected"]["sensitivity"] for s in per_fold]
        assert cv["sensitivity_infected_mean"] == pytest.approx(statistics.fmean(sensitivities), abs=1e-6)
        # every image in exactly one test fold
        tested = [
            row.split(",")[0]
            for i in range(5)
            for row in (repo / f"models/cv/fold{i}/predictions.csv").read_text().splitlines()[1:]
        ]
        assert len(tested) == len(set(tested)) == 48
        assert len(json.loads((repo / "metrics/cv/folds.json").read_text())) == 5
        # DVC deletes models/cv before a rerun; with train.resume the kept folds come back untrained
        set_param(repo, "train", "resume", True)
        _, forced = dvc(repo, "repro", "-f", "crossval")
        assert forced.count("kept from an earlier run") == 5 and "train: resnet18" not in forced, forced
        assert json.loads((repo / "metrics/cv.json").read_text()) == cv
        assert [json.loads((repo / f"models/cv/fold{i}/test.json").read_text()) for i in range(5)] == per_fold
    finally:
        run(repo, "git", "checkout", "--", "params.yaml")
        dvc(repo, "repro")


def test_fold_ensemble_is_what_evaluate_external_export_and_predict_score(repo, tmp_path):
    """evaluate.ensemble: folds: the folds come from the train split alone, evaluate fits its thresholds on
    the ensemble's validation probabilities, export checks the ensemble's graph, and stages.predict given
    models/cv gives the test probabilities evaluate wrote."""
    import csv

    set_param(repo, "data", "folds", 3)
    set_param(repo, "evaluate", "ensemble", "folds")
    try:
        _, out = dvc(repo, "repro")
        assert "Running stage 'train'" not in out and "match the ensemble of 3 fold models" in out, out
        cv = json.loads((repo / "metrics/cv.json").read_text())
        assert cv["pool"] == "train" and sum(f["n"] for f in cv["folds"]) == 24  # the 24 train images only
        scores = json.loads((repo / "metrics/test.json").read_text())
        assert scores["ensemble"] == [f"models/cv/fold{i}/model.pt" for i in range(3)]
        assert len(scores["checkpoint_epoch"]) == 3
        with (repo / "metrics/predictions.csv").open() as f:
            written = {row["path"]: float(row["p_infected"]) for row in csv.DictReader(f)}
        out_csv = tmp_path / "predicted.csv"
        predict = ("-m", "stages.predict", "data/raw/test", "--model", "models/cv", "--out", str(out_csv))
        run(repo, sys.executable, *predict)
        with out_csv.open() as f:
            predicted = {str(Path(row["path"]).relative_to("data/raw")): float(row["p_infected"])
                         for row in csv.DictReader(f)}  # fmt: skip
        assert predicted.keys() == written.keys()
        assert max(abs(predicted[k] - written[k]) for k in written) < 1e-5
        _, again = dvc(repo, "repro")
        assert "Running stage" not in again, again
    finally:
        run(repo, "git", "checkout", "--", "params.yaml")
        dvc(repo, "repro")


def test_experiments_metrics_diff_and_plots(repo, tmp_path):
    _, out = dvc(repo, "exp", "run", "-S", "train.lr=0.0001")
    assert "Running stage 'train'" in out and "Running stage 'download'" not in out
    _, shown = dvc(repo, "exp", "show", "--json")
    experiments = [
        exp for row in json.loads(shown) for branch in (row.get("experiments") or []) for exp in branch["revs"]
    ]
    assert experiments, shown
    data = experiments[0]["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["lr"] == 0.0001
    assert "accuracy" in data["metrics"]["metrics/summary/test.json"]["data"]
    shown_metrics = {key for file in data["metrics"].values() for key in _flat_keys(file["data"])}
    assert not shown_metrics & {"model_sha256", "n", "train.loss", "total"}, "detail must stay out of the table"
    assert len(shown_metrics) <= 30, sorted(shown_metrics)

    _, diff = dvc(repo, "metrics", "diff", "--json")
    changed = json.loads(diff)
    assert "metrics/summary/test.json" in changed and "metrics/summary/train.json" in changed

    command = _readme_exp_show()  # the README's table, as a terminal of 120 columns renders it
    proc = subprocess.run(shlex.split(command.replace("dvc ", f"{sys.executable} -m dvc ", 1)), cwd=repo,
                          env={**os.environ, "COLUMNS": "120"}, capture_output=True, text=True, check=True)  # fmt: skip
    lines = proc.stdout.splitlines()
    assert lines and max(len(line) for line in lines) <= 120 and "…" not in proc.stdout, proc.stdout
    header = lines[1].split()
    for column in ("Experiment", "accuracy", "f1_macro", "best_epoch", "train.lr", "train.arch", "train.freeze"):
        assert column in header, proc.stdout
    assert "0.0001" in proc.stdout  # the experiment's own row
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120"}  # the script from this checkout
    table = subprocess.run([sys.executable, "-m", "scripts.results", "--exps"], cwd=repo, capture_output=True,
                           text=True, check=True, env=env)  # fmt: skip
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["Experiment", "train.lr"] and "accuracy" in lines[0], table.stdout
    assert "0.0001" in table.stdout and max(len(line) for line in lines) <= 120, table.stdout

    out_dir = tmp_path / "plots"
    _, out = dvc(repo, "plots", "show", "-o", str(out_dir))
    assert "failed to load" not in out, out  # every declared plot applies to this task (or is an empty file)
    page = (out_dir / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "vega-embed/build/vega-embed.min.js, BSD-3-Clause" in page  # offline
    assert "toNumber(datum['step']) + 1" in page and '"type": "log"' in page  # epochs from 1, lr on a log scale
    assert "Test ROC, one vs rest (dashed = chance)" in page and '"strokeDash": [4, 4]' in page
    for title in ("Loss", "Accuracy", "Test confusion matrix", "normalised", "roc", "precision_recall", "calibration"):
        assert title in page, title
    assert list((out_dir / "static").glob("*predictions.png")) and list((out_dir / "static").glob("*gradcam.png"))


def _flat_keys(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flat_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _readme_exp_show() -> str:
    """The README's `dvc exp show --drop ... --keep ...` line (without its comment)."""
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("dvc exp show --drop"):
            return line.split("  #")[0].strip()
    raise AssertionError("README.md has no `dvc exp show --drop ...` line")


def test_bad_params_fail_before_any_work(repo):
    before = (repo / "models/model.pt").read_bytes()
    set_param(repo, "train", "arch", "resnet9000")
    code, out = dvc(repo, "repro", check=False)
    assert code != 0
    assert "train.arch: 'resnet9000'" in out and "'resnet18', 'resnet50', 'vgg16'" in out
    assert "Running stage 'download'" not in out
    # DVC removes a stage's outs before running it; the last good checkpoint comes back from the cache
    run(repo, "git", "checkout", "--", "params.yaml")
    dvc(repo, "checkout", "-q")
    assert (repo / "models/model.pt").read_bytes() == before


def test_failed_download_leaves_the_last_good_dataset_restorable(repo):
    import socket

    def listing():
        return sorted((p.relative_to(repo), p.read_bytes()) for p in (repo / "data/raw").rglob("*.png"))

    before = listing()
    with socket.socket() as sock:  # a loopback port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = repo / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["data"].update(source="url", url=f"http://127.0.0.1:{port}/set.zip", sha256="0" * 64)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    code, out = dvc(repo, "repro", check=False)
    assert code != 0 and "download failed after 5 attempts" in out and f"127.0.0.1:{port}/set.zip" in out
    run(repo, "git", "checkout", "--", "params.yaml")
    dvc(repo, "checkout", "-q")
    assert listing() == before


def test_queued_experiments_run_two_at_a_time(repo):
    import time

    run(repo, "git", "checkout", "--", "params.yaml")
    dvc(repo, "checkout", "-q")
    for name, lr in (("queued-a", "0.003"), ("queued-b", "0.004")):
        dvc(repo, "exp", "run", "--queue", "-n", name, "-S", f"train.lr={lr}")
    dvc(repo, "queue", "start", "-j", "2")
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        _, status = dvc(repo, "queue", "status")
        if not any(word in status for word in ("Queued", "Running")):
            break
        time.sleep(3)
    dvc(repo, "queue", "stop", "--kill", check=False)
    assert "Failed" not in status, status
    _, shown = dvc(repo, "exp", "show", "--json")
    found = {
        exp["name"]: exp["data"]
        for row in json.loads(shown)
        for branch in (row.get("experiments") or [])
        for exp in branch["revs"]
        if exp.get("name")
    }
    for name, lr in (("queued-a", 0.003), ("queued-b", 0.004)):
        assert name in found, shown
        assert found[name]["params"]["params.yaml"]["data"]["train"]["lr"] == lr
        assert 0.0 <= found[name]["metrics"]["metrics/summary/test.json"]["data"]["accuracy"] <= 1.0
    _, logs = dvc(repo, "queue", "logs", "queued-a")  # readable: no progress-bar redraws, one line per epoch
    assert "\r" not in logs and "epochs:" not in logs and "epoch 1/2: lr" in logs and " img/s" in logs, logs


def test_push_delete_pull_leaves_nothing_to_reproduce(repo, tmp_path):
    run(repo, "git", "checkout", "--", "params.yaml")
    dvc(repo, "checkout", "-q")
    dvc(repo, "repro")
    remote = tmp_path / "remote"
    dvc(repo, "remote", "add", "--local", "-d", "shared", str(remote))
    dvc(repo, "push")
    assert any(remote.rglob("*")), "nothing pushed"
    checkpoint = (repo / "models/model.pt").read_bytes()
    shutil.rmtree(repo / ".dvc/cache")
    for out in ("data/raw", "data/decoded", "data/features", "models/model.pt", "models/last.pt"):
        path = repo / out
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    dvc(repo, "pull")
    assert (repo / "models/model.pt").read_bytes() == checkpoint
    _, status = dvc(repo, "status")
    assert "Data and pipelines are up to date" in status, status
    _, out = dvc(repo, "repro")
    assert "Running stage" not in out


def test_the_model_is_a_registry_artifact_that_dvc_artifacts_get_fetches(repo, tmp_path):
    """Issue 13: dvc.yaml's `artifacts:` entry; a version registered the way GTO does it (an annotated
    git tag `cxr-classifier@v1.0.0`), then `dvc artifacts get` of it from the repository (as a clone
    would) gives the bytes dvc.lock records."""
    import hashlib

    dvc(repo, "repro")  # nothing to do after the tests above; the whole pipeline when run alone
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "model for the registry", check=False)
    run(repo, "git", "tag", "-a", "cxr-classifier@v1.0.0", "-m", "Registering artifact cxr-classifier version v1.0.0")
    dvc(repo, "remote", "add", "--local", "-d", "-f", "registry", str(tmp_path / "remote"))
    dvc(repo, "push")
    got = tmp_path / "got.pt"
    dvc(tmp_path, "artifacts", "get", str(repo), "cxr-classifier", "-o", str(got))
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    (md5,) = [o["md5"] for o in lock["stages"]["train"]["outs"] if o["path"] == "models/model.pt"]
    assert hashlib.md5(got.read_bytes()).hexdigest() == md5
    # issue 23: from a second clone (the README's path), with the remote configured there
    clone = tmp_path / "second"
    run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    code, out = dvc(clone, "pull", "models/model.pt", check=False)
    assert code != 0, "without a remote a clone cannot pull: the README says `dvc repro`"
    dvc(clone, "remote", "add", "--local", "-d", "registry", str(tmp_path / "remote"))
    again = tmp_path / "again.pt"
    dvc(tmp_path, "artifacts", "get", str(clone), "cxr-classifier", "--rev", "v1.0.0", "-o", str(again))
    assert again.read_bytes() == got.read_bytes()


@pytest.fixture
def s3_server(monkeypatch):
    """An S3-compatible server (moto's server mode) on 127.0.0.1 with an empty bucket `cxr-test`."""
    import socket
    import time

    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        s3 = boto3.client("s3", endpoint_url=url)
        s3.create_bucket(Bucket="cxr-test")
        yield url, s3
    finally:
        server.terminate()
        server.wait(10)


def test_s3_remote_push_then_a_clone_pulls_everything_and_reruns_nothing(repo, tmp_path, s3_server):
    """Issue 13: a real S3 remote (dvc-s3 against moto's server on 127.0.0.1), configured the way the
    README says: push from the workspace, pull into a fresh clone, and nothing is left to reproduce."""
    url, s3 = s3_server
    dvc(repo, "repro")  # nothing to do after the tests above; the whole pipeline when run alone
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "before the S3 push", check=False)
    dvc(repo, "remote", "add", "--local", "s3store", "s3://cxr-test/cache")
    dvc(repo, "remote", "modify", "--local", "s3store", "endpointurl", url)
    dvc(repo, "push", "-r", "s3store")
    stored = s3.list_objects_v2(Bucket="cxr-test").get("KeyCount", 0)
    assert stored > 10, "nothing reached the bucket"

    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    dvc(clone, "remote", "add", "--local", "-d", "s3store", "s3://cxr-test/cache")
    dvc(clone, "remote", "modify", "--local", "s3store", "endpointurl", url)
    dvc(clone, "pull")
    assert (clone / "models/model.pt").read_bytes() == (repo / "models/model.pt").read_bytes()
    _, status = dvc(clone, "status")
    assert "Data and pipelines are up to date" in status, status
    _, out = dvc(clone, "repro")
    assert "Running stage" not in out, out


def _kill_9_after(repo, rows: int, *command) -> None:
    """Start `command` (a dvc run) in `repo`, kill -9 it once the training curve has `rows` epochs,
    and check its trainer died with it (the training lock is free again within 10 s)."""
    import fcntl
    import signal
    import time

    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    env.pop("SHELL", None)  # as in CI: dvc runs the stage through /bin/sh (dash), which stays its parent
    proc = subprocess.Popen([sys.executable, "-m", "dvc", *command], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    curve = repo / "metrics/train/plots/metrics/train/loss.tsv"
    before = curve.read_text() if curve.is_file() else None  # an earlier run's curve does not count
    deadline = time.monotonic() + 600
    while True:
        text = curve.read_text() if curve.is_file() else None
        if text is not None and text != before and len(text.splitlines()) > rows:
            break
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lock = repo / "models/.train.lock"
    for _ in range(200):
        with lock.open("a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                time.sleep(0.05)
    raise AssertionError("the trainer outlived the killed dvc process (the training lock is still held)")


def _steps_and_best(repo) -> tuple[list[int], int]:
    import torch

    rows = (repo / "metrics/train/plots/metrics/val/f1.tsv").read_text().splitlines()[1:]
    steps = [int(r.split("\t")[0]) for r in rows]
    f1 = [float(r.split("\t")[1]) for r in rows]
    best = torch.load(repo / "models/model.pt", weights_only=True)["epoch"]
    assert best == f1.index(max(f1)) + 1, f"models/model.pt holds epoch {best}, the curve's best is {f1}"
    return steps, best


def test_kill_9_mid_run_then_resume_through_dvc_repro_and_exp_run(tmp_path):
    """Issue 14, findings 6 and 8, through DVC itself: kill -9 a `dvc repro` (and a `dvc exp run`)
    mid-run; its trainer dies with it; resuming continues the curve in order, every epoch once, and
    models/model.pt is the best epoch of the whole run even when that epoch came before the kill."""
    params = tiny_params_dict(epochs=8)
    params["data"]["demo"].update(train_per_class=48)  # epochs long enough to be killed inside one
    repo = make_repo(tmp_path / "repo", params, ignore=True)
    dvc(repo, "repro", "verify")

    _kill_9_after(repo, 3, "repro")
    set_param(repo, "train", "resume", True)
    _, out = dvc(repo, "repro")
    assert "resum" in out, out
    steps, _ = _steps_and_best(repo)
    assert steps == list(range(8))
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "a resumed run")

    set_param(repo, "train", "resume", False)
    set_param(repo, "train", "lr", params["train"]["lr"] / 2)
    _kill_9_after(repo, 3, "exp", "run")
    _, out = dvc(repo, "exp", "run", "-S", "train.resume=true")
    assert "resum" in out, out
    steps, _ = _steps_and_best(repo)
    assert steps == list(range(8))


def test_leave_one_source_out_runs_through_dvc_exp_run(tmp_path):
    """data.folds: source on a folder whose root labels.csv names two (invented) hospitals: `dvc exp run`
    runs crossval with one fold per source, a second `dvc repro` runs nothing, cv.json names each source."""
    import csv

    from cxr.config import parse_params
    from cxr.data.demo import write_demo_dataset

    raw = tiny_params_dict()
    phantoms = tmp_path / "phantoms"
    write_demo_dataset(phantoms, parse_params(raw).data, 0)
    folder = tmp_path / "hospitals"
    folder.mkdir()
    with (folder / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "patient_id", "source"])
        for i, png in enumerate(sorted(phantoms.glob("*/*/*.png"))):
            shutil.copy(png, folder / f"{i}.png")
            writer.writerow([f"{i}.png", png.parent.name, f"p{i}", "north" if i % 2 else "south"])
    raw["data"].update(source="folder", folder=str(folder))
    repo = make_repo(tmp_path / "repo", raw)
    _, out = dvc(repo, "exp", "run", "-S", "data.folds=source")
    assert "crossval: fold 1/2 (source north)" in out and "crossval: fold 2/2 (source south)" in out, out
    _, again = dvc(repo, "repro")
    assert "Running stage" not in again, again
    cv = json.loads((repo / "metrics/cv.json").read_text())
    assert cv["protocol"] == "leave-one-source-out" and [f["source"] for f in cv["folds"]] == ["north", "south"]
    assert sum(f["n"] for f in cv["folds"]) == 48  # every film tested once, by the fold of its own source
    assert [row["fold"] for row in json.loads((repo / "metrics/cv/folds.json").read_text())] == ["north", "south"]


def test_a_recipe_runs_through_dvc_exp_run(tmp_path):
    """Issue 23, item 8: `dvc exp run -S recipe=real_scratch` lays conf/recipe/real_scratch.yaml over params.yaml
    (Hydra, through DVC); here shrunk to the tiny demo by further -S values, which win over the recipe."""
    repo = make_repo(tmp_path / "repo", tiny_params_dict(epochs=1))
    shutil.copytree(REPO / "conf", repo / "conf")
    dvc(repo, "config", "hydra.enabled", "true")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "recipes")
    shrink = ["data.source=demo", "data.task=binary", "train.image_size=32", "train.epochs=1", "train.sampler=shuffle",
              "train.schedule.warmup=0", "train.batch_size=8"]  # fmt: skip
    _, out = dvc(repo, "exp", "run", "-S", "recipe=real_scratch", *(a for s in shrink for a in ("-S", s)))
    assert "Running stage 'train'" in out
    params = yaml.safe_load((repo / "params.yaml").read_text())  # the experiment's params, left in the workspace
    assert params["train"]["optimizer"] == "adamw" and params["train"]["augment"]["gamma"] == 0.3  # the recipe
    assert params["train"]["image_size"] == 32 and params["data"]["source"] == "demo"  # the -S values win
    assert "recipe" not in params and "hydra" not in params
    assert json.loads((repo / "metrics/summary/train.json").read_text())["best_epoch"] == 1


def test_a_fake_nih_layout_runs_through_dvc_exp_run_to_14_findings_and_their_mean_auroc(tmp_path):
    """Issue 25's must-show: a fake NIH ChestX-ray14 copy (its exact metadata formats) through `dvc exp run`;
    metrics/summary/test.json holds an AUROC for each of the 14 findings and their mean."""
    from tests.data.test_public_layouts import FINDINGS, make_fake_nih

    folder = make_fake_nih(tmp_path / "nih")
    repo = make_repo(tmp_path / "repo", tiny_params_dict(epochs=1, loss="bce"))
    sets = ["data.source=folder", f"data.folder={folder}", "data.layout=nih-cxr14", "data.task=multilabel",
            "evaluate.bootstrap=50"]  # fmt: skip
    _, out = dvc(repo, "exp", "run", *(a for s in sets for a in ("-S", s)))
    assert "NIH ChestX-ray14 layout" in out and "Running stage 'evaluate'" in out
    summary = json.loads((repo / "metrics/summary/test.json").read_text())
    aucs = [summary[f]["auc"] for f in FINDINGS]
    assert len(aucs) == 14 and all(0.0 <= a <= 1.0 for a in aucs), summary
    assert summary["mean_auroc"] == pytest.approx(sum(aucs) / 14, abs=1e-3)


@pytest.mark.parametrize(
    ("layout", "task", "extra"),
    [("chexpert", "multilabel", ["data.uncertain=ignore"]), ("rsna-pneumonia", "binary", []),
     ("covidx", "multiclass", [])],
)  # fmt: skip
def test_each_public_layout_runs_through_dvc_exp_run(tmp_path, layout, task, extra):
    """Issue 25: a fake copy of each collection (its exact metadata formats) through `dvc exp run` to test scores;
    CheXpert's uncertain labels ignored (NaN in training and validation) on the way."""
    from tests.data import test_public_layouts as fakes

    make = {"chexpert": fakes.make_fake_chexpert, "rsna-pneumonia": fakes.make_fake_rsna,
            "covidx": fakes.make_fake_covidx}[layout]  # fmt: skip
    folder = make(tmp_path / layout)
    repo = make_repo(tmp_path / "repo", tiny_params_dict(epochs=1, loss="bce" if task == "multilabel" else "ce"))
    sets = ["data.source=folder", f"data.folder={folder}", f"data.layout={layout}", f"data.task={task}",
            "evaluate.bootstrap=50", *extra]  # fmt: skip
    _, out = dvc(repo, "exp", "run", *(a for s in sets for a in ("-S", s)))
    assert "Running stage 'evaluate'" in out
    summary = json.loads((repo / "metrics/summary/test.json").read_text())
    if task == "multilabel":
        aucs = [summary[f]["auc"] for f in fakes.CHEXPERT_FINDINGS if summary[f]["auc"] is not None]
        assert len(aucs) == 14 and summary["mean_auroc"] == pytest.approx(sum(aucs) / 14, abs=1e-3)
        assert "uncertain labels ignore" in out
    else:
        assert 0.0 <= summary["accuracy"] <= 1.0, summary


def test_txrv_weights_run_through_dvc_exp_run_and_every_scorer_agrees(tmp_path, monkeypatch):
    """Issue 32's must-show, offline: a file in torchxrayvision's format (the real DenseNet121, random weights) where
    the package reads it, its sha256 pinned for the test only: `dvc exp run -S train.weights=txrv:...` trains,
    evaluates and exports; predict, the page's service and the ONNX file give evaluate's probabilities within 1e-4."""
    import csv

    import numpy as np
    import onnxruntime
    import torch

    from stages import serve
    from tests.model.test_xray_weights import place_weights

    home = tmp_path / "home"
    place_weights(home)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CXR_WEIGHTS_PINS", str(home / "pins.json"))
    repo = make_repo(tmp_path / "repo", tiny_params_dict(epochs=1))
    _, out = dvc(repo, "exp", "run", "-S", "train.weights=txrv:densenet121-res224-all")
    assert "Running stage 'export'" in out and "train: densenet121 (weights=txrv:densenet121-res224-all" in out, out
    assert "sha256 " in out and "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121" in out  # what it started from
    with (repo / "metrics/predictions.csv").open() as f:
        written = {row["path"]: float(row["p_infected"]) for row in csv.DictReader(f)}
    assert json.loads((repo / "metrics/export.json").read_text())["onnx_max_abs_diff"] < 1e-4

    out_csv = tmp_path / "predicted.csv"
    run(repo, sys.executable, "-m", "stages.predict", "data/raw/test", "--out", str(out_csv))
    with out_csv.open() as f:
        predicted = {str(Path(r["path"]).relative_to("data/raw")): float(r["p_infected"]) for r in csv.DictReader(f)}
    assert predicted.keys() == written.keys() and max(abs(predicted[k] - written[k]) for k in written) < 1e-4

    monkeypatch.chdir(repo)
    service = serve.build_service(serve.argparse_args(["--port", "0"]))
    session = onnxruntime.InferenceSession(str(repo / "models/export/model.onnx"))
    for name in sorted(written)[:4]:
        film = repo / "data/raw" / name
        answer = service.answer(film.name, film.read_bytes())
        assert abs(answer["probabilities"]["infected"] - written[name]) < 1e-4, name
        assert answer["model"]["arch"] == "densenet121"
    from cxr.data.store import SplitStore
    from cxr.model.checkpoint import load_checkpoint

    model, spec, _ = load_checkpoint(repo / "models/model.pt")
    test = SplitStore(repo / "data/decoded", "test", spec.image_size, spec.preprocessing)
    rows = test[torch.arange(len(test))].numpy()
    logits = session.run(None, {"pixels": rows.astype(np.float32)})[0]
    onnx_probs = dict(zip(test.files, spec.probabilities(torch.from_numpy(logits))[:, 0].tolist(), strict=True))
    assert max(abs(onnx_probs[f] - written[f]) for f in written) < 1e-4


def test_pretraining_runs_through_dvc_exp_run_and_train_starts_from_it(tmp_path):
    """Issue 32's must-show: `dvc exp run -S pretrain.method=simclr -S train.weights=pretrained` runs pretrain, then
    train from it (the log and the checkpoint name its sha256); a second `dvc repro` runs nothing; `-S train.lr`
    reruns train, not pretrain; a pretrain.folders entry holding a copy of a test film is refused naming it."""
    repo = make_repo(tmp_path / "repo", tiny_params_dict(epochs=1))
    sets = ["pretrain.method=simclr", "train.weights=pretrained", "pretrain.epochs=2", "pretrain.batch_size=8"]
    _, out = dvc(repo, "exp", "run", *(a for s in sets for a in ("-S", s)))
    assert out.index("Running stage 'pretrain'") < out.index("Running stage 'train'"), out
    digest = json.loads((repo / "metrics/pretrain.json").read_text())["sha256"]
    assert f"started from models/pretrained.pt (sha256 {digest})" in out
    import torch

    assert torch.load(repo / "models/model.pt", weights_only=True)["start"]["sha256"] == digest
    assert (repo / "metrics/pretrain/plots/metrics/loss.tsv").read_text().count("\n") == 3
    _, again = dvc(repo, "repro")
    assert "Running stage" not in again, again
    _, lr = dvc(repo, "exp", "run", "-S", "train.lr=0.001")
    assert "Running stage 'train'" in lr and "Running stage 'pretrain'" not in lr, lr

    archive = tmp_path / "archive"
    archive.mkdir()
    test_film = sorted((repo / "data/raw/test").rglob("*.png"))[0]
    shutil.copy(test_film, archive / "unlabelled-0001.png")
    code, refused = dvc(repo, "exp", "run", "-S", f"pretrain.folders=[{archive}]", check=False)
    assert code != 0 and "repeat a val or test film" in refused and str(archive / "unlabelled-0001.png") in refused
