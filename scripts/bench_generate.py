#!/usr/bin/env python3
"""Latency of `POST /runs/{id}/generate`: cold (download + load) and cached, 100 new tokens.

Runs everything privately (never the Redis at REDIS_URL): its own redis-server, Data Bank
and one worker (the test suite's harness, tests/stack.py), the API in-process. Trains a
`tiny` model (4 layers, 128 wide, context 128) for a few steps, then times, from the client:
- the first request of a fresh app, twice (Data Bank download, extraction, load, generate;
  torch is already imported by the harness, so its import, ~1-2 s, is not in the figure);
- `--repeats` cached requests (median and max).
Run from server/: `python ../scripts/bench_generate.py`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

SERVER = Path(__file__).resolve().parents[1] / "server"
sys.path.insert(0, str(SERVER))

from model_trainer.api.main import build_context, create_app  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402
from tests.stack import Stack, get_json, poll  # noqa: E402
from tests.test_training_runs import _text  # noqa: E402

RUN = {"model_size": "tiny", "max_seq_len": 128, "batch_size": 8, "max_steps": 20}
BODY = {"prompt": "ROMEO:", "max_new_tokens": 100, "seed": 1}


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _timed(client: TestClient, run_id: str) -> tuple[float, float]:
    started = time.perf_counter()
    answer = client.post(f"/runs/{run_id}/generate", json=BODY)
    wall = (time.perf_counter() - started) * 1000
    if answer.status_code != 200:
        raise SystemExit(f"generate answered {answer.status_code}: {answer.text}")
    return wall, float(answer.json()["elapsed_ms"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    redis = RedisServer(root / "redis").start()
    stack = Stack(root, redis.url)
    try:
        stack.start_worker("worker")
        corpus = stack.upload_text(_text())
        with TestClient(create_app(build_context(stack.settings("setup")))) as setup:
            body = {"method": "bpe", "vocab_size": 1024, "corpus_file_id": corpus}
            tok = setup.post("/tokenizers/train", json=body).json()["tokenizer_id"]
            poll(lambda: get_json(setup, f"/tokenizers/{tok}"), _done, 300)
            train = {"corpus_file_id": corpus, "tokenizer_id": tok, **RUN}
            run_id = setup.post("/runs/train", json=train).json()["run_id"]
            run = poll(lambda: get_json(setup, f"/runs/{run_id}"), _done, 600)
            if run["status"] != "completed":
                raise SystemExit(f"the run did not complete: {run}")
        for label in ("cold #1", "cold #2"):
            with TestClient(create_app(build_context(stack.settings("bench")))) as client:
                wall, inside = _timed(client, run_id)
                _say(f"{label}: {wall:.0f} ms (elapsed_ms {inside:.0f})")
                if label == "cold #2":
                    walls = [_timed(client, run_id)[0] for _ in range(args.repeats)]
                    _say(
                        f"cached x{args.repeats}: median {statistics.median(walls):.0f} ms, "
                        f"max {max(walls):.0f} ms"
                    )
        return 0
    finally:
        stack.close()
        redis.stop()


def _done(answer: dict[str, object]) -> bool:
    return answer.get("status") in ("completed", "failed")


if __name__ == "__main__":
    raise SystemExit(main())
