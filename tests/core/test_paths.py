"""Paths users write in params.yaml (issue 23, item 6): a relative data.folder works in a queued experiment."""

from __future__ import annotations

from pathlib import Path

from cxr.paths import user_path


def test_a_relative_folder_is_read_from_the_repository_a_queued_experiment_came_from(tmp_path):
    repo = tmp_path / "repo"
    copy = repo / ".dvc/tmp/exps/tmp8x2k"  # where `dvc exp run --queue` runs the experiment
    (copy / "inside").mkdir(parents=True)
    (tmp_path / "shared/set").mkdir(parents=True)
    assert user_path("../shared/set", repo) == Path("../shared/set")  # the workspace: as written
    assert user_path("../shared/set", copy) == repo / "../shared/set"  # the copy: from the repository
    assert (user_path("../shared/set", copy)).resolve() == (tmp_path / "shared/set").resolve()
    assert user_path("inside", copy) == Path("inside")  # present in the copy: the copy's
    assert user_path("missing", copy) == Path("missing")  # nowhere: left as written, for the error to name
    assert user_path(tmp_path / "shared", copy) == tmp_path / "shared"  # absolute: untouched
