"""A folder of cached files bounded in bytes: least recently used out first, never one in use.

The worker keeps what it fetched or computed for a job for the next one (corpora from Data
Bank, the text of structured ones, token files) under `root/<section>/<name>`; all sections
share one bound (`app.cache_bytes`). Job processes (RQ forks one per job, and several may
run at once) share the folder and coordinate with `flock` on files under `root/.locks/`:

- **use** (`<section>/<name>.use`), shared, held by every process using the entry for as
  long as it does (a job reads its corpus and maps its token file for its whole run). The
  evictor takes it exclusive without waiting, so an entry in use is never evicted.
- **make** (`<section>/<name>.make`), exclusive, held by the one process making an absent
  entry: the others wait and find it made (one download per corpus, however many jobs ask).
- **evict**, exclusive: one eviction pass at a time.

An entry is made in a scratch folder and renamed into place, so its name means it is
complete. Using one sets its mtime at the start and the end (atime is often not kept), to
the nanosecond clock's time: the kernel's own "now" for a file advances a tick (1-4 ms) at a
time, and uses within one tick would tie. Adding one evicts the least recently used entries
not in use until the total is within the bound. An entry bigger than the bound on its own
is kept while in use and goes at the next addition. The evictor also removes the lock files
of entries it removed and the scratch of makers that died, so nothing in the folder grows
without bound.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.cache")

# Names the cache hands out: never a path, never hidden (dot names are the cache's own).
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}")
_LOCKS, _SCRATCH = ".locks", ".scratch"


@dataclass(frozen=True)
class _Entry:
    section: str
    name: str
    path: Path
    nbytes: int
    used_ns: int


class DiskCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def path(self, section: str, name: str) -> Path:
        for part in (section, name):
            if not _NAME.fullmatch(part):
                raise ValueError(f"not a cache name: {part[:80]!r}")
        return self.root / section / name

    @contextmanager
    def use(self, section: str, name: str, make: Callable[[Path], None]) -> Iterator[Path]:
        """The entry's path, held (never evicted) until the block ends.

        An absent entry is made first, by one process: `make(dest)` creates the file or
        folder `dest` (in a scratch folder of its own: temp files beside `dest` are fine and
        are removed after). An exception from `make` leaves no entry behind.
        """
        entry = self.path(section, name)
        locks = self.root / _LOCKS / section
        locks.mkdir(parents=True, exist_ok=True)
        with _locked(locks / f"{name}.use", fcntl.LOCK_SH):
            if not entry.exists():
                with _locked(locks / f"{name}.make", fcntl.LOCK_EX):
                    if not entry.exists():  # else another process made it while we waited
                        self._make(section, name, entry, make)
                        self.evict()
            _touch(entry)
            try:
                yield entry
            finally:
                _touch(entry)

    def nbytes(self) -> int:
        """What the entries hold, in bytes."""
        return sum(e.nbytes for e in self._entries())

    def evict(self) -> None:
        """Remove the least recently used entries not in use until the total is within the
        bound; then the leftovers of processes that died (lock files, scratch)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with _locked(self.root / _LOCKS / "evict", fcntl.LOCK_EX):
            entries = sorted(self._entries(), key=lambda e: e.used_ns)
            total = sum(e.nbytes for e in entries)
            for entry in entries:
                if total <= self.max_bytes:
                    break
                if self._remove_unused(entry.section, entry.name):
                    total -= entry.nbytes
                    log.info(
                        "cache: evicted %s/%s (%d bytes)",
                        entry.section,
                        entry.name,
                        entry.nbytes,
                        extra=log_fields(
                            "cache_evicted",
                            section=entry.section,
                            name=entry.name,
                            bytes=entry.nbytes,
                        ),
                    )
            if total > self.max_bytes:
                log.warning(
                    "cache: %d bytes, over its bound of %d: the rest is in use",
                    total,
                    self.max_bytes,
                    extra=log_fields("cache_over_bound", bytes=total, max_bytes=self.max_bytes),
                )
            self._sweep()

    def _make(self, section: str, name: str, entry: Path, make: Callable[[Path], None]) -> None:
        # Under the make lock nobody else writes this scratch: what is there is a dead maker's.
        scratch = self.root / _SCRATCH / section / name
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        try:
            made = scratch / name
            make(made)
            entry.parent.mkdir(parents=True, exist_ok=True)
            os.replace(made, entry)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _entries(self) -> Iterator[_Entry]:
        if not self.root.is_dir():
            return
        for section in self.root.iterdir():
            if section.name.startswith(".") or not section.is_dir():
                continue
            for path in section.iterdir():
                if path.name.startswith("."):
                    continue
                try:
                    used_ns, nbytes = path.lstat().st_mtime_ns, _size(path)
                except FileNotFoundError:  # evicted meanwhile (`nbytes` takes no lock)
                    continue
                yield _Entry(section.name, path.name, path, nbytes, used_ns)

    def _remove_unused(self, section: str, name: str) -> bool:
        """Remove the entry and its lock files unless a process uses it; True if removed."""
        locks = self.root / _LOCKS / section
        use_lock = locks / f"{name}.use"
        locks.mkdir(parents=True, exist_ok=True)
        fd = _try_lock(use_lock, fcntl.LOCK_EX)
        if fd is None:
            return False
        try:
            _remove(self.root / section / name)
            # A process waiting on either lock file finds it gone once it has it, and takes
            # the new one (`_locked`). Nobody is making this entry: that needs the use lock.
            (locks / f"{name}.make").unlink(missing_ok=True)
            use_lock.unlink()
        finally:
            os.close(fd)
        return True

    def _sweep(self) -> None:
        """Lock files of absent entries (their make failed) and dead makers' scratch."""
        locks = self.root / _LOCKS
        for use_lock in locks.glob("*/*.use"):
            section, name = use_lock.parent.name, use_lock.name.removesuffix(".use")
            if not (self.root / section / name).exists():
                self._remove_unused(section, name)
        for scratch in (self.root / _SCRATCH).glob("*/*"):
            make_lock = locks / scratch.parent.name / f"{scratch.name}.make"
            fd = _try_lock(make_lock, fcntl.LOCK_EX)
            if fd is not None:  # its maker is gone: a live one holds this lock
                try:
                    shutil.rmtree(scratch, ignore_errors=True)
                    make_lock.unlink()
                finally:
                    os.close(fd)


@contextmanager
def _locked(path: Path, operation: int) -> Iterator[None]:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, operation)
        except BaseException:
            os.close(fd)
            raise
        if _still_there(fd, path):
            break
        os.close(fd)  # the evictor removed this lock file while we waited: take the new one
    try:
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _try_lock(path: Path, operation: int) -> int | None:
    """The locked file's descriptor, or None when another process holds a conflicting lock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if not _still_there(fd, path):
        os.close(fd)
        return None
    return fd


def _still_there(fd: int, path: Path) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _size(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    return sum(
        os.lstat(os.path.join(folder, f)).st_size
        for folder, _, files in os.walk(path)
        for f in files
    )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _touch(path: Path) -> None:
    now = time.time_ns()
    os.utime(path, ns=(now, now))
