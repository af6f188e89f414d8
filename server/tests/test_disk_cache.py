"""DiskCache: bounded in bytes, least recently used out first, never an entry in use."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from model_trainer.disk_cache import DiskCache

ENTRY = 400
SERVER = Path(__file__).resolve().parents[1]
# A process that makes or finds entry argv[3] of the cache at argv[1], says so, and holds it
# until its stdin closes.
HOLDER = """
import sys
from pathlib import Path
from model_trainer.disk_cache import DiskCache
cache = DiskCache(Path(sys.argv[1]), int(sys.argv[2]))
with cache.use("s", sys.argv[3], lambda dest: dest.write_bytes(b"h" * 400)):
    print("holding", flush=True)
    sys.stdin.read()
"""


def _bytes(n: int) -> Callable[[Path], None]:
    def make(dest: Path) -> None:
        # A maker writes temp files beside its result: they must not end up in the cache.
        (dest.parent / "partial.tmp").write_bytes(b"t")
        dest.write_bytes(b"x" * n)

    return make


def _add(cache: DiskCache, name: str, n: int = ENTRY) -> None:
    with cache.use("s", name, _bytes(n)):
        pass


def _names(cache: DiskCache) -> set[str]:
    folder = cache.root / "s"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


@contextmanager
def _held_by_another_process(cache: DiskCache, name: str) -> Iterator[None]:
    env = {**os.environ, "PYTHONPATH": str(SERVER)}
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(cache.root), str(cache.max_bytes), name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            assert proc.stdout.readline() == "holding\n"  # it has the entry and its lock
            yield
        finally:
            proc.stdin.close()
            assert proc.wait() == 0


def test_stays_within_its_bound_and_evicts_the_least_recently_used(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache", max_bytes=2 * ENTRY + ENTRY // 2)
    _add(cache, "a")
    _add(cache, "b")
    _add(cache, "a")  # used again: b is now the least recently used
    _add(cache, "c")
    assert _names(cache) == {"a", "c"}
    assert cache.nbytes() == 2 * ENTRY <= cache.max_bytes
    _add(cache, "d")
    assert _names(cache) == {"c", "d"}
    # Nothing else is left behind: no temp files, no lock files of evicted entries.
    assert sorted(p.name for p in (cache.root / ".locks" / "s").iterdir()) == [
        "c.make",
        "c.use",
        "d.make",
        "d.use",
    ]
    assert not any((cache.root / ".scratch").rglob("*.*"))


def test_a_use_gives_the_cached_entry_without_making_it_again(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache", max_bytes=10 * ENTRY)
    _add(cache, "a")

    def must_not_run(dest: Path) -> None:
        raise AssertionError("made again")

    with cache.use("s", "a", must_not_run) as path:
        assert path.read_bytes() == b"x" * ENTRY


def test_an_entry_another_process_holds_is_not_evicted(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache", max_bytes=2 * ENTRY + ENTRY // 2)
    with _held_by_another_process(cache, "held"):
        _add(cache, "b")
        _add(cache, "c")  # "held" is the least recently used, but in use: "b" goes
        assert _names(cache) == {"held", "c"}
        _add(cache, "d")
        _add(cache, "e")  # only held and the newest fit
        assert _names(cache) == {"held", "e"}
    # Released: its use ended after "e" was added, so "e" goes first, then "held".
    _add(cache, "f")
    assert _names(cache) == {"held", "f"}
    _add(cache, "g")
    assert _names(cache) == {"f", "g"}


def test_entries_in_use_may_pass_the_bound_until_released(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache", max_bytes=ENTRY)
    with cache.use("s", "a", _bytes(ENTRY)), cache.use("s", "b", _bytes(ENTRY)) as b:
        assert _names(cache) == {"a", "b"}  # both in use by this process
        assert b.read_bytes() == b"x" * ENTRY
    _add(cache, "c")
    assert _names(cache) == {"c"}


def test_a_failed_make_leaves_nothing(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache", max_bytes=10 * ENTRY)

    def fails(dest: Path) -> None:
        dest.write_bytes(b"half")
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"), cache.use("s", "a", fails):
        pass
    assert _names(cache) == set()
    _add(cache, "b")  # the next addition sweeps the lock files the failed one left
    assert sorted(p.name for p in (cache.root / ".locks" / "s").iterdir()) == ["b.make", "b.use"]


def test_a_dead_makers_scratch_is_swept(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache", max_bytes=10 * ENTRY)
    dead = cache.root / ".scratch" / "s" / "gone"
    dead.mkdir(parents=True)
    (dead / "gone").write_bytes(b"killed mid-download")
    _add(cache, "a")
    assert not dead.exists()
    assert _names(cache) == {"a"}


@pytest.mark.parametrize("name", ["../x", ".hidden", "a/b", ""])
def test_names_that_are_paths_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="not a cache name"):
        DiskCache(tmp_path, ENTRY).path("s", name)
