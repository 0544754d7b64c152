"""A stage dies with the process that started it, and its worker processes die with the stage: a
killed `dvc` (even `kill -9`, even when dvc ran the stage through `sh -c`) leaves no stage and no
pool workers running on (Linux; elsewhere these are no-ops)."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1  # prctl option: a signal sent to this process when its parent dies

SHELLS = frozenset({"sh", "dash", "bash", "zsh", "fish", "ksh", "mksh", "busybox"})
WATCH_EVERY_S = 0.5  # how often a trainer whose launcher is not its parent checks the launcher lives


def _stat(pid: int) -> tuple[str, int, str] | None:
    """(state, parent pid, start time) of `pid` from /proc, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return fields[0], int(fields[1]), fields[19]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def launcher_pid() -> int | None:
    """The process whose death should end this one: under `dvc repro`/`dvc exp run` (DVC_STAGE is
    set) the nearest ancestor that is not a shell, i.e. dvc itself even when dvc ran the stage through
    `sh -c` (dash keeps the shell alive as the parent); otherwise the parent unless it is a shell
    (torchrun, the stage that relaunched itself), so `nohup python -m stages.train &` from a terminal
    survives the terminal."""
    under_dvc = "DVC_STAGE" in os.environ
    pid = os.getppid()
    for _ in range(8):
        if pid <= 1:
            return None
        if _comm(pid) not in SHELLS:
            return pid
        if not under_dvc:
            return None
        stat = _stat(pid)
        if stat is None:
            return None
        pid = stat[1]
    return None


def _watch(pid: int, started: str) -> None:
    """Poll `pid`; SIGTERM this process once it has exited (gone, a zombie, or its pid reused)."""
    while True:
        time.sleep(WATCH_EVERY_S)
        stat = _stat(pid)
        if stat is None or stat[0] in ("Z", "X") or stat[2] != started:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def die_with_launcher() -> int | None:
    """End this process (SIGTERM) when its launcher (see `launcher_pid`) exits, e.g. `dvc` killed
    with -9, so no orphaned trainer keeps writing. The kernel does it when the launcher is the parent
    (PR_SET_PDEATHSIG); a daemon thread polls it when a shell stands between. Returns the launcher's
    pid, or None where there is none or this is not Linux."""
    if not sys.platform.startswith("linux"):
        return None
    pid = launcher_pid()
    stat = _stat(pid) if pid else None
    if pid is None or stat is None:
        return None
    if pid == os.getppid():
        if _set_pdeathsig() and os.getppid() == pid:  # and the parent did not die before it took effect
            return pid
    threading.Thread(target=_watch, args=(pid, stat[2]), name="launcher-watch", daemon=True).start()
    return pid


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


def _set_pdeathsig() -> bool:
    libc = _libc()
    return libc is not None and libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) == 0


def child_dies_with_this_process() -> Callable[[], None] | None:
    """A subprocess `preexec_fn` (Linux; None elsewhere): the child (torchrun) gets SIGTERM when this
    process dies. libc is loaded here, before the fork, so the child only makes one system call."""
    if not sys.platform.startswith("linux") or _libc() is None:
        return None
    return _set_pdeathsig


def worker_dies_with_parent() -> None:
    """A process pool's `initializer`: the worker gets SIGKILL when the process that started it dies,
    so a stage killed mid-decode leaves no workers (each holds hundreds of MB) behind."""
    if sys.platform.startswith("linux"):
        libc = _libc()
        if libc is not None:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
