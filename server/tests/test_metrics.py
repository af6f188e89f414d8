"""`GET /metrics` from a stack with a running run, a waiting one and a finished tokenizer,
parsed with prometheus_client's own text parser."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from model_trainer.settings import ApiKey, Settings
from tests.processes import wait_until
from tests.stack import Stack, get_json, json_dict, num, poll

pytestmark = pytest.mark.e2e

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "tinyshakespeare.txt"
ADMIN_KEY = f"root-{uuid.uuid4().hex}"
USER_KEY = f"ada-{uuid.uuid4().hex}"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    # The metrics count the whole Redis; other modules' jobs share database 0 of the suite's
    # server, so this stack has a database of its own, emptied first.
    own = redis_url.rsplit("/", 1)[0] + "/7"
    Redis.from_url(own).flushdb()
    s = Stack(tmp_path_factory.mktemp("metrics-stack"), own)
    s.start_worker()
    yield s
    s.close()


def _settings(stack: Stack) -> Settings:
    keys = [
        ApiKey(
            name="root", role="admin", key_sha256=hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
        ),
        ApiKey(name="ada", role="user", key_sha256=hashlib.sha256(USER_KEY.encode()).hexdigest()),
    ]
    settings = stack.settings()
    security = settings.security.model_copy(update={"allow_anonymous": False, "api_keys": keys})
    return settings.model_copy(update={"security": security})


def _scrape(client: TestClient) -> tuple[str, Samples]:
    # As Prometheus sends it (its `authorization` setting): a bearer token, no X-API-Key.
    headers = {"X-API-Key": "", "Authorization": f"Bearer {ADMIN_KEY}"}
    answer = client.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return answer.text, samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_one_scrape_sees_jobs_queues_workers_speed_and_requests(
    stack: Stack, tmp_path: Path
) -> None:
    text = SHAKESPEARE.read_text(encoding="utf-8")[:100_000]
    corpus = stack.upload_text(text)
    with stack.client(_settings(stack)) as client:
        client.headers["X-API-Key"] = ADMIN_KEY
        assert client.get("/metrics", headers={"X-API-Key": ""}).status_code == 401
        forbidden = client.get("/metrics", headers={"X-API-Key": USER_KEY})
        assert forbidden.status_code == 403 and forbidden.json()["code"] == "FORBIDDEN"
        body = {"method": "bpe", "vocab_size": 300, "corpus_file_id": corpus}
        tokenizer = client.post("/tokenizers/train", json=body).json()
        tokenizer_id = str(tokenizer["tokenizer_id"])
        poll(
            lambda: get_json(client, f"/tokenizers/{tokenizer_id}"),
            lambda a: a["status"] == "completed",
            120,
        )
        run = {
            "corpus_file_id": corpus,
            "tokenizer_id": tokenizer_id,
            "n_layer": 1,
            "n_embd": 32,
            "n_head": 2,
            "max_seq_len": 32,
            "batch_size": 4,
            "max_steps": 1_000_000,
        }
        running = str(client.post("/runs/train", json=run).json()["run_id"])
        waiting = str(client.post("/runs/train", json=run).json()["run_id"])
        poll(
            lambda: get_json(client, f"/runs/{running}"),
            lambda a: (
                a["status"] == "running"
                and num(json_dict(a["progress"]).get("tokens_per_sec") or 0) > 0
            ),
            120,
        )
        scrape_text, samples = "", Samples()

        def seen_everything() -> bool:
            nonlocal scrape_text, samples
            scrape_text, samples = _scrape(client)
            route = {"method": "GET", "route": "/runs/{run_id}", "status": "200"}
            return _value(samples, "modeltrainer_http_requests_total", **route) >= 1

        # HTTP counts reach Redis within a flush (a second).
        wait_until(seen_everything, 30, "the API's request counts in a scrape")
        for run_id in (running, waiting):
            assert client.post(f"/runs/{run_id}/cancel").status_code == 202
    (tmp_path / "scrape.txt").write_text(scrape_text)
    queue = stack.queue_name
    assert _value(samples, "modeltrainer_jobs", kind="run", status="running") == 1
    assert _value(samples, "modeltrainer_jobs", kind="run", status="queued") == 1
    assert _value(samples, "modeltrainer_jobs", kind="tokenizer", status="completed") >= 1
    assert _value(samples, "modeltrainer_queue_depth", queue=queue) == 1
    assert _value(samples, "modeltrainer_queue_oldest_waiting_seconds", queue=queue) > 0
    assert _value(samples, "modeltrainer_workers_live", queue=queue, device="cpu") == 1
    assert _value(samples, "modeltrainer_workers_live", queue=queue, device="cuda") == 0
    assert _value(samples, "modeltrainer_run_tokens_per_second", run_id=running) > 0
    assert ("modeltrainer_checkpoint_upload_failures_total", ()) in samples
    latency = {"method": "GET", "route": "/runs/{run_id}"}
    count = _value(samples, "modeltrainer_http_request_duration_seconds_count", **latency)
    inf = _value(samples, "modeltrainer_http_request_duration_seconds_bucket", le="+Inf", **latency)
    assert count >= 1 and inf == count
    assert _value(samples, "modeltrainer_http_request_duration_seconds_sum", **latency) > 0
    # The route's template, never the raw path (one series per route, not per run).
    assert running not in scrape_text.replace(f'run_id="{running}"', "")
