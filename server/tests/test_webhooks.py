"""Webhooks end to end: real jobs end, the API's sender POSTs to a real HTTP receiver that
verifies each delivery with the `standardwebhooks` package and fails its first attempts."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from model_trainer.settings import Settings, WebhookEndpoint, WebhookSettings
from model_trainer.webhooks.records import new_secret
from tests.processes import wait_until
from tests.stack import Stack, get_json

pytestmark = pytest.mark.e2e

FAST_RETRIES = [0.3, 0.3, 0.3, 0.3]
SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "tinyshakespeare.txt"


@dataclass
class Receiver:
    """An HTTP endpoint that answers 500 to its first `failures` requests, then verifies
    each one's signature with `secret` (the standardwebhooks package) and answers 204."""

    secret: str
    failures: int = 0
    seen: list[dict[str, str]] = field(default_factory=list)  # headers of every request
    verified: list[dict[str, object]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    url: str = ""

    def handle(self, body: bytes, headers: dict[str, str]) -> int:
        self.seen.append(headers)
        if len(self.seen) <= self.failures:
            return 500
        try:
            payload = Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError as exc:
            self.rejected.append(str(exc))
            return 400
        assert isinstance(payload, dict)
        self.verified.append(payload)
        return 204


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("webhooks-stack"), redis_url)
    s.start_worker()
    yield s
    s.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    target = Receiver(secret=new_secret(), failures=2)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(target))
    target.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield target
    server.shutdown()
    server.server_close()


def _settings(stack: Stack, **webhooks: object) -> Settings:
    """The stack's API settings with webhooks allowed to reach the loopback receiver."""
    hooks = WebhookSettings.model_validate(
        {
            "allow_private_addresses": True,
            "retry_delays_sec": FAST_RETRIES,
            "poll_sec": 0.1,
            **webhooks,
        }
    )
    return stack.settings().model_copy(update={"webhooks": hooks})


def test_a_jobs_end_is_signed_retried_and_survives_an_api_restart(
    stack: Stack, receiver: Receiver
) -> None:
    """The receiver fails twice; between them the API stops and another one starts: the
    third attempt is delivered, verified with the secret the 202 answer gave."""
    corpus = stack.upload_text(SHAKESPEARE.read_text(encoding="utf-8")[:50_000])
    body = {"method": "bpe", "vocab_size": 300, "corpus_file_id": corpus, "user_id": 9}
    settings = _settings(stack)
    with stack.client(settings) as client:
        answer = client.post("/tokenizers/train", json={**body, "webhook_url": receiver.url})
        assert answer.status_code == 202, answer.text
        accepted = answer.json()
        tokenizer_id = str(accepted["tokenizer_id"])
        receiver.secret = str(accepted["webhook_secret"])  # made for us, shown once
        assert receiver.secret.startswith("whsec_")
        wait_until(lambda: len(receiver.seen) >= 1, 120, "the first attempt")
    # The first API is gone; the delivery waits in Redis for the next one.
    with stack.client(settings) as client:
        wait_until(lambda: len(receiver.verified) == 1, 60, "a verified delivery")
        listing = get_json(client, f"/tokenizers/{tokenizer_id}/webhooks")
        record = get_json(client, f"/tokenizers/{tokenizer_id}")
    assert receiver.rejected == []
    payload = receiver.verified[0]
    assert payload["type"] == "tokenizer.completed"
    data = payload["data"]
    assert isinstance(data, dict)
    assert data["job_id"] == tokenizer_id and data["status"] == "completed"
    assert data["file_id"] == record["file_id"] is not None
    # One delivery, three attempts with one webhook-id; 500, 500, then 204.
    assert len({h["webhook-id"] for h in receiver.seen}) == 1 and len(receiver.seen) == 3
    items = listing["items"]
    assert isinstance(items, list) and len(items) == 1
    delivery = items[0]
    assert delivery["state"] == "delivered" and delivery["attempt_count"] == 3
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 204]
    assert delivery["msg_id"] == receiver.seen[0]["webhook-id"]
    assert delivery["url"] == receiver.url and "secret" not in json.dumps(listing)
    assert "webhook_secret" not in json.dumps(record["request"])


def test_a_failed_job_tells_the_request_and_the_operator_endpoints(
    stack: Stack, receiver: Receiver
) -> None:
    """A failure is delivered too, with its error; the operator's endpoint hears it with
    its own secret, and the caller does not see the operator's URL."""
    operator = Receiver(secret=new_secret())
    operator_server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(operator))
    operator.url = f"http://127.0.0.1:{operator_server.server_address[1]}/ops"
    threading.Thread(target=operator_server.serve_forever, daemon=True).start()
    receiver.failures = 0
    settings = _settings(
        stack,
        endpoints=[
            WebhookEndpoint.model_validate({"url": operator.url, "secret": operator.secret})
        ],
    )
    corpus = stack.upload_text(b"good line\nbad byte here: \xff\xfe\n", "bad.txt")
    body = {
        "method": "bpe",
        "vocab_size": 300,
        "corpus_file_id": corpus,
        "webhook_url": receiver.url,
        "webhook_secret": receiver.secret,
    }
    try:
        with stack.client(settings) as client:
            accepted = client.post("/tokenizers/train", json=body).json()
            assert accepted["webhook_secret"] is None  # the caller gave its own
            tokenizer_id = str(accepted["tokenizer_id"])

            # The operator's endpoint hears of every job that ends (other tests' included):
            # this test looks for its tokenizer's.
            def about_it(target: Receiver) -> list[dict[str, object]]:
                return [
                    p
                    for p in target.verified
                    if isinstance(p["data"], dict) and p["data"].get("job_id") == tokenizer_id
                ]

            wait_until(
                lambda: bool(about_it(receiver) and about_it(operator)), 120, "both deliveries"
            )
            listing = get_json(client, f"/tokenizers/{tokenizer_id}/webhooks")
    finally:
        operator_server.shutdown()
        operator_server.server_close()
    for payload in (about_it(receiver)[0], about_it(operator)[0]):
        assert payload["type"] == "tokenizer.failed"
        data = payload["data"]
        assert isinstance(data, dict) and isinstance(data["error"], dict)
        assert data["error"]["kind"] == "user" and "byte offset" in str(data["message"])
    items = listing["items"]
    assert isinstance(items, list)
    assert sorted(str(i["source"]) for i in items) == ["operator", "request"]
    assert [i["url"] for i in items if i["source"] == "operator"] == [None]


def _handler_for(target: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            code = target.handle(body, {k.lower(): v for k, v in self.headers.items()})
            self.send_response(code)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    return Handler


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://127.0.0.1:9/hook", "private or loopback"),
        ("http://10.1.2.3/hook", "private or loopback"),
        ("http://[::1]/hook", "private or loopback"),
        ("http://169.254.169.254/latest/meta-data", "private or loopback"),
        ("ftp://example.com/hook", "http or https"),
        ("http://user:pw@example.com/hook", "user name or password"),
    ],
)
def test_private_addresses_and_odd_urls_are_refused_at_submit(
    stack: Stack, url: str, said: str
) -> None:
    """No server-side request forgery: 422, and nothing is created."""
    corpus = stack.upload_text("a b c\n" * 100)
    body = {"method": "bpe", "vocab_size": 280, "corpus_file_id": corpus, "webhook_url": url}
    with stack.client() as client:
        answer = client.post("/tokenizers/train", json=body)
        assert answer.status_code == 422, answer.text
        error = answer.json()
        assert error["code"] == "CONFIG_INVALID" and said in error["message"]
        assert error["request_id"]
        listed = get_json(client, "/tokenizers")
    items = listed["items"]
    assert isinstance(items, list)
    assert not [i for i in items if url in json.dumps(i)], "nothing was created for it"
