"""A ``create`` killed with SIGKILL mid-way leaves no snapshot that looks complete, and the next
``create`` succeeds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelshield.backup import (
    RetentionPolicy,
    create_snapshot,
    list_snapshots,
    prune,
    restore_snapshot,
    verify_store,
)
from modelshield.stores import FolderBackupStore

from .conftest import Deployment, load_keys

CHILD = Path(__file__).with_name("_interrupt_child.py")


@pytest.mark.slow
@pytest.mark.parametrize("when", ["3", "snapshot"])
def test_sigkill_mid_create(deployment: Deployment, tmp_path: Path, when: str) -> None:
    root, marker = tmp_path / "bk", tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(deployment.config), str(root), str(marker), when],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, child.communicate()[0].decode()
            assert time.monotonic() < deadline, "the child never reached the upload"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        assert child.stdout is not None
        child.stdout.close()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    leftovers = list(root.rglob(".*.part"))
    assert leftovers, "the kill should have interrupted a write"
    store = FolderBackupStore(root)
    identity, trusted = load_keys(deployment)
    assert list_snapshots(store, trusted) == []
    assert list(store.list("snapshots/")) == []
    assert verify_store(store, trusted, read_data=True).ok

    state = deployment.root / "state"
    assert list(state.glob(".backup-tmp-*")), "the killed run's work folder is still there"
    report = create_snapshot(deployment.config, store)
    assert list(state.glob(".backup-tmp-*")) == []  # cleaned up by the next run
    assert not any(".backup-tmp" in e.path for e in report.snapshot.manifest.entries)
    [item] = list_snapshots(store, trusted)
    assert (item.id, item.status) == (report.snapshot.id, "ok")
    assert verify_store(store, trusted, read_data=True).ok
    restore_snapshot(store, report.snapshot.id, tmp_path / "r", identity=identity, trusted=trusted)
    assert (tmp_path / "r" / "models" / "digits.sealed").read_bytes() == (
        deployment.root / "models" / "digits.sealed"
    ).read_bytes()

    # the orphans of the killed run go at the next prune; the snapshot's objects stay
    pruned = prune(store, trusted, RetentionPolicy(keep_last=1))
    referenced = {e.digest for e in report.snapshot.manifest.entries}
    remaining = {n.rsplit("/", 1)[1] for n in store.list("objects/")}
    assert remaining == referenced
    assert pruned.forgotten == ()
    assert verify_store(store, trusted, read_data=True).ok
