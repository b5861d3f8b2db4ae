"""``sutazai backup create`` under attack: SIGKILLed midway, and out of disk on the backup
root. Either way no half backup is listed, earlier backups still verify, and the next
create and prune clean up. The creates under attack are real ``sutazai`` processes."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sutazai.backup.archive import BackupArchive
from sutazai.backup.service import backup_root, create, list_backups, prune, verify
from sutazai.config import Settings, load_settings
from sutazai.errors import InUseError

pytestmark = pytest.mark.slow
MIB = 1 << 20


def _sutazai(*args: str, **options: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sutazai.cli.main", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **options)  # type: ignore[call-overload]


def _pool(settings: Settings) -> set[str]:
    objects = BackupArchive(backup_root(settings)).objects
    return {p.name for p in objects.glob("*/*")} if objects.is_dir() else set()


def _referenced(settings: Settings) -> set[str]:
    return {f.sha256 for m in list_backups(settings) for f in m.files}


def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backups: Path) -> Settings:
    monkeypatch.setenv("SUTAZAI_BACKUP_DIR", str(backups))
    settings = load_settings()
    (settings.home / "datasets").mkdir(parents=True)
    (settings.home / "datasets" / "small.jsonl").write_bytes(os.urandom(64 * 1024))
    return settings


def test_a_create_killed_midway_leaves_no_backup_and_the_next_create_and_prune_clean_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _home(tmp_path, monkeypatch, tmp_path / "backups")
    earlier = create(settings)
    big = settings.home / "datasets" / "big"
    big.mkdir()
    for i in range(96):
        (big / f"part-{i:03}.bin").write_bytes(os.urandom(MIB))
    before = len(_pool(settings))
    process = _sutazai("backup", "create")
    try:
        deadline = time.monotonic() + 60
        while len(_pool(settings)) < before + 8:  # the pool has started to fill
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert len(_pool(settings)) < before + 96  # killed midway, not after the end
    assert [m.id for m in list_backups(settings)] == [earlier.id]
    assert verify(settings, earlier.id)[1] == []

    for path in big.iterdir():  # what the killed create pooled is named by no backup now
        path.unlink()
    after = create(settings)  # the lock died with the killed process
    assert [m.id for m in list_backups(settings)] == [earlier.id, after.id]
    orphans = _pool(settings) - _referenced(settings)
    assert len(orphans) >= 8
    removed, freed = prune(settings, keep=10)
    assert removed == [] and freed >= 8 * MIB
    assert _pool(settings) == _referenced(settings)
    root = backup_root(settings)
    assert list((root / "tmp").iterdir()) == []  # the killed create's scratch folder too
    assert sorted(p.name for p in (root / "backups").iterdir()) == [earlier.id, after.id]
    assert verify(settings, after.id)[1] == [] and verify(settings, earlier.id)[1] == []

    with BackupArchive(root).lock(), pytest.raises(InUseError, match="wait for it"):
        create(settings)  # one writer at a time: a prune would collect a create's objects


def _limit_file_size() -> None:  # runs in the child, before exec
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * MIB, 2 * MIB))


@contextlib.contextmanager
def _small_disk(folder: Path) -> Iterator[Callable[[], None] | None]:
    """A real 2 MiB filesystem at ``folder`` (tmpfs: needs root and mount rights), which
    fails writes with ENOSPC. Where mounting is not allowed, yields a ``preexec_fn`` that
    caps the child's file size at 2 MiB instead (EFBIG), the nearest honest substitute."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs",
                              str(folder)], capture_output=True, check=False).returncode == 0
    try:
        yield None if mounted else _limit_file_size
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)


def test_a_full_backup_disk_fails_in_one_line_and_keeps_earlier_backups(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _small_disk(tmp_path / "backups") as limit:
        settings = _home(tmp_path, monkeypatch, tmp_path / "backups")
        earlier = create(settings)
        (settings.home / "datasets" / "big.bin").write_bytes(os.urandom(3 * MIB))
        process = _sutazai("backup", "create", preexec_fn=limit)
        out, err = process.communicate(timeout=120)
        assert process.returncode == 1, (out, err)
        assert "Traceback" not in err + out
        line = " ".join(err.split())  # one message, which rich wraps at 120 columns
        assert line.startswith("error: ") and line.count("error") == 1, err
        assert "ran out of space" in line
        assert "SUTAZAI_BACKUP_DIR" in line and "earlier backups are intact" in line
        assert [m.id for m in list_backups(settings)] == [earlier.id]
        assert verify(settings, earlier.id)[1] == []
        assert _pool(settings) == _referenced(settings)  # its objects were taken back
        root = backup_root(settings)
        assert list((root / "tmp").iterdir()) == []
        (settings.home / "datasets" / "big.bin").unlink()
        assert create(settings).files  # room again: the next one succeeds
