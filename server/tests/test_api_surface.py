"""What anonymous and abandoned traffic costs the API: readiness from a background probe,
generation that stops when its client leaves, log streams with a lifetime and a per-caller
cap, and models loaded from safetensors only.

The API runs as a real Hypercorn process (disconnects and concurrency as deployed), with a
real Data Bank process behind the fault proxy (which counts what reaches Data Bank) and the
suite's Redis. The one model is tiny and built here, packed and uploaded as a worker would.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import SecretStr
from redis import Redis

from model_trainer.api.main import build_context, create_app
from model_trainer.cli.client import ApiClient
from model_trainer.databank.archive import pack_directory
from model_trainer.settings import Settings
from model_trainer.store.keys import RUN_KEYS, logs_key, workers_key
from model_trainer.store.records import RecordMeta, RunProgress, Status, StatusStore
from model_trainer.tokenization.handle import load_tokenizer
from model_trainer.training.artifact import save_model
from model_trainer.training.config import TrainingSpec
from model_trainer.training.model import MODEL_BUILDERS, model_spec
from tests.databank_fixtures import (
    UPLOAD_KEY,
    DataBankServer,
    FaultProxy,
    make_client,
    start_databank,
)
from tests.processes import Proc, child_env, free_port, wait_until
from tests.test_training_data import train_bpe, write_corpus

# Runs the API as its own Hypercorn process: `make check` runs it, `make test` does not.
pytestmark = pytest.mark.e2e

KEY = "surface-test-key"
# Long enough that an abandoned request is still computing when its client leaves.
LONG_GENERATION = {"prompt": "a", "max_new_tokens": 2048, "num_samples": 8, "seed": 1}


class Api:
    """`hypercorn model_trainer.api.main:create_app()` on a free port; up once /healthz
    answers (readiness is what some tests look at)."""

    def __init__(
        self, root: Path, redis_url: str, databank_url: str, queue: str = "", **env: str
    ) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.queue = queue or _queue()
        root.mkdir(parents=True, exist_ok=True)
        environment = child_env(
            {
                "REDIS_URL": redis_url,
                "RQ__QUEUE_NAME": self.queue,
                "RQ__GPU_QUEUE_NAME": f"{self.queue}-gpu",
                "APP__DATA_ROOT": str(root / "data"),
                "APP__ARTIFACTS_ROOT": str(root / "artifacts"),
                "APP__RUNS_ROOT": str(root / "runs"),
                "APP__DATA_BANK_API_URL": databank_url,
                "APP__DATA_BANK_API_KEY": UPLOAD_KEY,
                "SECURITY__API_KEY": KEY,
                "GENERATE__TORCH_THREADS": "1",
                **env,
            }
        )
        command = [sys.executable, "-m", "hypercorn", "model_trainer.api.main:create_app()"]
        command += ["--bind", f"127.0.0.1:{port}"]
        self.proc = Proc.command(command, environment, root / "api.log")
        wait_until(self._up, 60, "the API's /healthz", self.proc, progress=self.proc.cpu_ticks)

    def _up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def cpu_ticks(self) -> int:
        """CPU time of Hypercorn and its worker process (a child: `Proc.cpu_ticks` counts a
        child only once it has exited)."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if stat.parent.name == str(self.proc.pid) or fields[1] == str(self.proc.pid):
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total

    def events(self, name: str) -> list[dict[str, object]]:
        """The API's JSON log lines with `event` `name`."""
        found = []
        for raw in self.proc.output().splitlines():
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(line, dict) and line.get("event") == name:
                found.append(line)
        return found

    def stop(self) -> None:
        self.proc.stop(timeout=20)


def _queue() -> str:
    return f"surface-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def own_databank(tmp_path: Path) -> Iterator[DataBankServer]:
    """A Data Bank of this test's own: it may be stopped (SIGSTOP)."""
    server = start_databank(tmp_path / "databank", API_UPLOAD_KEYS=UPLOAD_KEY, MIN_FREE_GB="0")
    yield server
    server.proc.process.send_signal(signal.SIGCONT)
    server.proc.stop(timeout=10)


def _runs(redis: Redis) -> StatusStore[RunProgress]:
    return StatusStore(redis, RUN_KEYS, RunProgress)


def _new_run(redis: Redis, status: Status, owner: str | None = None) -> str:
    run_id = f"run-{uuid.uuid4().hex[:16]}"
    _runs(redis).create(run_id, RecordMeta(created_at=time.time(), request={}, owner=owner))
    _runs(redis).set_status(run_id, status)
    return run_id


def _completed_run(redis: Redis, file_id: str) -> str:
    run_id = _new_run(redis, Status.RUNNING)
    runs = _runs(redis)
    runs.set_status(run_id, Status.COMPLETED, also=runs.file_id_commands(run_id, file_id))
    return run_id


# -- 6. a cheap anonymous surface ----------------------------------------------------------


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def _load(url: str, readyz_waves: int, wave: int) -> tuple[list[int], list[float], int]:
    """`readyz_waves` waves of `wave` concurrent /readyz, and meanwhile authenticated
    GET /runs one after another: the /readyz statuses, each GET /runs's seconds, and how
    many GET /runs were answered 200."""
    readyz: list[int] = []
    timings: list[float] = []
    served = 0
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def anonymous() -> None:
            for _ in range(readyz_waves):
                answers = await asyncio.gather(*(client.get("/readyz") for _ in range(wave)))
                readyz.extend(r.status_code for r in answers)

        async def authenticated() -> None:
            nonlocal served
            while len(readyz) < readyz_waves * wave:
                started = time.perf_counter()
                response = await client.get("/runs", headers={"X-API-Key": KEY})
                timings.append(time.perf_counter() - started)
                served += response.status_code == 200
                await asyncio.sleep(0)

        await asyncio.gather(anonymous(), authenticated())
    return readyz, timings, served


def test_readyz_answers_from_its_probe_while_data_bank_is_stopped(
    tmp_path: Path, redis_url: str, redis_client: Redis, own_databank: DataBankServer
) -> None:
    """Data Bank stopped (SIGSTOP: connections accepted, never answered), 100 concurrent
    anonymous /readyz: each is answered from the last probe, none reaches Data Bank, and an
    authenticated GET /runs is served meanwhile (its p99 is printed: docs/benchmarks.md)."""
    proxy = FaultProxy(own_databank.url)
    queue = _queue()
    # A live worker before the API starts: its first probe goes as far as Data Bank.
    redis_client.zadd(workers_key(queue), {"worker-a": time.time() + 3600})
    # One probe at start, none during the test: every /readyz below is the cache's.
    api = Api(tmp_path / "api", redis_url, proxy.url, queue, HEALTH__PROBE_INTERVAL_SEC="300")
    try:
        wait_until(lambda: proxy.count("GET", "/readyz") >= 1, 30, "the first probe")
        first = httpx.get(f"{api.url}/readyz", timeout=5).json()
        assert first == {"status": "ready", "gpu_workers": 0}
        reached = proxy.count("GET", "/readyz")
        own_databank.proc.process.send_signal(signal.SIGSTOP)

        readyz, timings, served = asyncio.run(_load(api.url, readyz_waves=5, wave=100))

        assert len(readyz) == 500 and set(readyz) <= {200, 503}
        assert proxy.count("GET", "/readyz") == reached  # nothing reached Data Bank
        answers = {httpx.get(f"{api.url}/readyz", timeout=5).json()["status"] for _ in range(3)}
        assert answers == {first["status"]}  # the cached answer, unchanged
        assert served == len(timings) and served > 0
        print(
            f"\nGET /runs with Data Bank stopped and 5 x 100 concurrent /readyz: "
            f"{len(timings)} requests, p50 {sorted(timings)[len(timings) // 2] * 1000:.1f} ms, "
            f"p99 {_p99(timings) * 1000:.1f} ms"
        )
    finally:
        api.stop()
        proxy.close()
        redis_client.delete(workers_key(api.queue))


def test_readyz_reports_a_stopped_data_bank_from_its_next_probe(
    tmp_path: Path, redis_url: str, redis_client: Redis, own_databank: DataBankServer
) -> None:
    api = Api(tmp_path / "api", redis_url, own_databank.url, HEALTH__PROBE_INTERVAL_SEC="0.2")
    try:
        redis_client.zadd(workers_key(api.queue), {"worker-a": time.time() + 3600})
        wait_until(
            lambda: httpx.get(f"{api.url}/readyz", timeout=5).status_code == 200, 30, "ready"
        )
        own_databank.proc.process.send_signal(signal.SIGSTOP)
        wait_until(
            lambda: httpx.get(f"{api.url}/readyz", timeout=5).status_code == 503,
            60,
            "/readyz to see Data Bank stopped",
        )
        degraded = httpx.get(f"{api.url}/readyz", timeout=5).json()
        assert "data bank" in degraded["reason"], degraded
        runs = httpx.get(f"{api.url}/runs", headers={"X-API-Key": KEY}, timeout=5)
        assert runs.status_code == 200
    finally:
        api.stop()
        redis_client.delete(workers_key(api.queue))


# -- 7. log streams: a lifetime and a per-caller cap ----------------------------------------


def _open_stream(url: str, run_id: str, key: str) -> socket.socket:
    """A log stream on a raw socket, its answer's status line read; the caller closes it."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    request = (
        f"GET /runs/{run_id}/logs/stream HTTP/1.1\r\nHost: {host}\r\n"
        f"X-API-Key: {key}\r\nAccept: text/event-stream\r\n\r\n"
    )
    sock.sendall(request.encode())
    return sock


def _status(sock: socket.socket) -> int:
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(1024)
        assert chunk, "connection closed before a status line"
        head += chunk
    return int(head.split(b" ", 2)[1])


def test_log_streams_are_capped_per_caller_and_free_their_slot_on_disconnect(
    tmp_path: Path, redis_url: str, redis_client: Redis, databank_server: DataBankServer
) -> None:
    # Two people, each with a key of their own: the cap counts each one's streams.
    people = [
        {"name": name, "role": "user", "key_sha256": hashlib.sha256(name.encode()).hexdigest()}
        for name in ("alice", "bob")
    ]
    api = Api(
        tmp_path / "api",
        redis_url,
        databank_server.url,
        SECURITY__API_KEY="",
        SECURITY__API_KEYS=json.dumps(people),
        LIMITS__SSE_MAX_PER_CALLER="2",
    )
    run_id = _new_run(redis_client, Status.RUNNING, owner="alice")
    bobs = _new_run(redis_client, Status.RUNNING, owner="bob")
    opened: list[socket.socket] = []
    try:
        for _ in range(2):
            opened.append(_open_stream(api.url, run_id, "alice"))
            assert _status(opened[-1]) == 200
        refused = httpx.get(
            f"{api.url}/runs/{run_id}/logs/stream", headers={"X-API-Key": "alice"}, timeout=10
        )
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "QUOTA_EXCEEDED"
        assert "limits.sse_max_per_caller" in refused.json()["message"]
        assert int(refused.headers["retry-after"]) > 0
        # Another caller has slots of its own.
        opened.append(_open_stream(api.url, bobs, "bob"))
        assert _status(opened[-1]) == 200
        # Alice leaves one stream: its slot comes back.
        opened.pop(0).close()

        def alice_served() -> bool:
            sock = _open_stream(api.url, run_id, "alice")
            status = _status(sock)
            if status == 200:
                opened.append(sock)
                return True
            sock.close()
            return False

        wait_until(alice_served, 30, "alice's slot to be given back")
    finally:
        for sock in opened:
            sock.close()
        api.stop()


def test_a_log_stream_ends_at_its_lifetime_and_the_cli_resumes_it(
    tmp_path: Path, redis_url: str, redis_client: Redis, databank_server: DataBankServer
) -> None:
    run_id = _new_run(redis_client, Status.RUNNING)
    for i in range(3):
        redis_client.xadd(logs_key(run_id), {"line": json.dumps({"message": f"line {i}"})})
    api = Api(tmp_path / "api", redis_url, databank_server.url, LIMITS__SSE_MAX_LIFETIME_SEC="1")
    stream = f"/runs/{run_id}/logs/stream"
    try:
        first = httpx.get(f"{api.url}{stream}", headers={"X-API-Key": KEY}, timeout=30)
        assert first.status_code == 200
        events = [block for block in first.text.split("\n\n") if block.strip()]
        assert len([e for e in events if e.startswith("id:")]) == 3
        assert events[-1].startswith("event: reconnect"), events[-1]
        ended = json.loads(events[-1].split("data: ", 1)[1])
        assert "limits.sse_max_lifetime_sec" in ended["message"]

        # The CLI's client follows `reconnect` from the last id: each line once, in order,
        # through as many streams as the run lasts.
        def later() -> None:
            time.sleep(2.5)  # past two lifetimes: the client resumes more than once
            redis_client.xadd(logs_key(run_id), {"line": json.dumps({"message": "line 3"})})
            _runs(redis_client).set_status(run_id, Status.COMPLETED)

        writer = threading.Thread(target=later)
        writer.start()
        client = ApiClient(api.url, KEY)
        try:
            seen = list(client.sse(stream))
        finally:
            client.close()
        writer.join()
    finally:
        api.stop()
    lines = [json.loads(data)["message"] for event, data in seen if event == "message"]
    assert lines == ["line 0", "line 1", "line 2", "line 3"]
    assert seen[-1][0] == "end"


# -- 7. generation stops when its client leaves; 8. safetensors only ------------------------


def _model_artifact(root: Path, *, pickled: bool = False) -> Path:
    """A tiny GPT-2 run artifact as a worker packs it (weights, tokenizer, manifest-less);
    `pickled`: its weights as a pickle `pytorch_model.bin` instead of safetensors."""
    tokenizer_dir = train_bpe(root / "tokenizer", write_corpus(root / "corpus.txt", lines=200))
    tokenizer = load_tokenizer(tokenizer_dir)
    spec = TrainingSpec.model_validate(
        {"model_family": "gpt2", "n_layer": 4, "n_head": 2, "n_embd": 128, "max_seq_len": 1024}
    )
    model_spec_ = model_spec(spec, tokenizer.vocab_size, tokenizer.eos_id, tokenizer.pad_id)
    model = MODEL_BUILDERS[spec.model_family](model_spec_)
    folder = root / "model"
    save_model(model, tokenizer, folder)
    if pickled:
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    return pack_directory(folder, "model-test", root / "model.tar")


def _upload(databank: DataBankServer, tar: Path) -> str:
    with make_client(databank.url) as bank:
        return bank.upload_file(tar).file_id


def test_a_pickle_only_artifact_is_a_422_and_never_opened(
    tmp_path: Path, settings: Settings, redis_client: Redis, databank_server: DataBankServer
) -> None:
    file_id = _upload(databank_server, _model_artifact(tmp_path, pickled=True))
    run_id = _completed_run(redis_client, file_id)
    app_settings = settings.app.model_copy(
        update={
            "data_bank_api_url": databank_server.url,
            "data_bank_api_key": SecretStr(UPLOAD_KEY),
        }
    )
    ctx = build_context(settings.model_copy(update={"app": app_settings}))
    with TestClient(create_app(ctx)) as client:
        response = client.post(f"/runs/{run_id}/generate", json={"prompt": "a"})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "DATA_INVALID"
    assert "pytorch_model.bin" in body["message"] and "not opened" in body["message"]
    assert ctx.generation.cache.cached_ids() == []


def _send_generate(url: str, run_id: str, body: dict[str, object]) -> socket.socket:
    """POST /runs/{id}/generate on a raw socket, not read: the test abandons it."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (
        f"POST /runs/{run_id}/generate HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    return sock


def test_abandoned_generations_stop_and_free_the_pool(
    tmp_path: Path, redis_url: str, redis_client: Redis, databank_server: DataBankServer
) -> None:
    """As the issue found it: 10 abandoned generations (2 running, 8 waiting: the default
    pool) made the next one 503. Once their clients leave, the waiting ones are dropped and
    the running ones stop at their next token; the next request is served."""
    file_id = _upload(databank_server, _model_artifact(tmp_path))
    run_id = _completed_run(redis_client, file_id)
    api = Api(tmp_path / "api", redis_url, databank_server.url)
    generate = f"{api.url}/runs/{run_id}/generate"
    headers = {"X-API-Key": KEY}
    try:
        # Loads torch and the model (seconds, more on a busy machine).
        warm = httpx.post(
            generate, json={"prompt": "a", "max_new_tokens": 1}, headers=headers, timeout=300
        )
        assert warm.status_code == 200, warm.text  # the model is loaded and cached
        computing = api.cpu_ticks()
        sockets = [_send_generate(api.url, run_id, LONG_GENERATION) for _ in range(10)]
        # Computing (a second of CPU: a fraction of one of these generations).
        wait_until(lambda: api.cpu_ticks() > computing + 100, 60, "generation to run")
        for sock in sockets:
            sock.close()
        wait_until(
            lambda: len(api.events("generation_abandoned")) == 10,
            60,
            "the ten abandoned generations to stop",
            api.proc,
            progress=lambda: len(api.events("generation_abandoned")),
        )
        served = httpx.post(
            generate, json={"prompt": "a", "max_new_tokens": 5}, headers=headers, timeout=60
        )
        assert served.status_code == 200, served.text
        # None of the ten ran to its end.
        finished = [e for e in api.events("generated") if "2048 tokens" in str(e["message"])]
        assert finished == []
    finally:
        api.stop()
