"""CorpusFetcher: one verified copy per id, one download, even with several processes."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from pathlib import Path

import pytest

from model_trainer.databank.client import DataBankClient
from model_trainer.databank.corpus import CorpusFetcher
from model_trainer.databank.errors import IntegrityError, InvalidFileId
from model_trainer.disk_cache import DiskCache
from tests.databank_fixtures import FaultProxy, fetch_corpus_in_process, make_client

PROCESSES = 4
BOUND = 1024**3


def _store(client: DataBankClient, tmp_path: Path, size: int) -> tuple[str, bytes]:
    data = os.urandom(size)
    (tmp_path / "corpus.txt").write_bytes(data)
    return client.upload_file(tmp_path / "corpus.txt").file_id, data


def test_fetches_once_then_serves_from_cache(
    databank_client: DataBankClient, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    file_id, data = _store(databank_client, tmp_path, 100_000)
    cache = DiskCache(tmp_path / "cache", BOUND)
    with make_client(fault_proxy.url) as client:
        fetcher = CorpusFetcher(client, cache)
        with fetcher.fetch(file_id) as first, fetcher.fetch(file_id) as second:
            assert second == first == cache.root / "corpora" / file_id
            assert first.read_bytes() == data
    assert fault_proxy.count("GET", f"/files/{file_id}") == 1


def test_failed_download_caches_nothing(
    databank_client: DataBankClient, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    file_id, data = _store(databank_client, tmp_path, 50_000)
    cache = DiskCache(tmp_path / "cache", BOUND)
    crashed = cache.root / ".scratch" / "corpora" / file_id
    crashed.mkdir(parents=True)
    (crashed / f".{file_id}.crashed.part").write_bytes(b"left by a killed process")
    with make_client(fault_proxy.url) as client:
        fetcher = CorpusFetcher(client, cache)
        fault_proxy.corrupt_bodies = True
        with pytest.raises(IntegrityError), fetcher.fetch(file_id):
            pass
        assert not (cache.root / "corpora" / file_id).exists()
        fault_proxy.corrupt_bodies = False
        with fetcher.fetch(file_id) as path:
            assert path.read_bytes() == data
    assert [p.name for p in (cache.root / "corpora").iterdir()] == [file_id]
    assert not any((cache.root / ".scratch").rglob("*.part"))


def test_invalid_id_is_refused(databank_client: DataBankClient, tmp_path: Path) -> None:
    fetcher = CorpusFetcher(databank_client, DiskCache(tmp_path, BOUND))
    with pytest.raises(InvalidFileId), fetcher.fetch("../../etc/passwd"):
        pass


def test_the_least_recently_used_corpus_makes_room_and_is_fetched_again(
    databank_client: DataBankClient, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    first_id, first = _store(databank_client, tmp_path, 60_000)
    second_id, _ = _store(databank_client, tmp_path, 60_000)
    cache = DiskCache(tmp_path / "cache", 100_000)  # room for one of them
    with make_client(fault_proxy.url) as client:
        fetcher = CorpusFetcher(client, cache)
        with fetcher.fetch(first_id):
            pass
        with fetcher.fetch(second_id):
            assert [p.name for p in (cache.root / "corpora").iterdir()] == [second_id]
        with fetcher.fetch(first_id) as path:
            assert path.read_bytes() == first
    assert fault_proxy.count("GET", f"/files/{first_id}") == 2
    assert cache.nbytes() <= cache.max_bytes


def test_concurrent_processes_download_once(
    databank_client: DataBankClient, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    file_id, data = _store(databank_client, tmp_path, 2 * 1024 * 1024)
    cache = tmp_path / "cache"
    # Slow the body down (~0.6 s) so every process asks while the first is still downloading.
    fault_proxy.chunk_delay_sec = 0.02
    spawn = multiprocessing.get_context("spawn")
    start_together = spawn.Barrier(PROCESSES)
    procs = [
        spawn.Process(
            target=fetch_corpus_in_process,
            args=(fault_proxy.url, str(cache), file_id, start_together),
        )
        for _ in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0] * PROCESSES

    assert fault_proxy.count("GET", f"/files/{file_id}") == 1
    cached = cache / "corpora" / file_id
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == file_id
    assert cached.read_bytes() == data
    assert [p.name for p in (cache / "corpora").iterdir()] == [file_id]
