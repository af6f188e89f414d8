#!/usr/bin/env python3
"""Time from `POST /runs/train` to the run's first `trainer.train.*` events, warm worker.

Starts the local stack (processes), uploads tinyshakespeare (or a generated text), trains a
small BPE tokenizer, runs one warm-up run (fills the worker's corpus, tokenizer and token
caches), then submits `--runs` short runs and prints, for each, the seconds from the POST to
the `started` event and to the first `progress` event (published after the loop's first
logging interval of 10 steps). Target: first progress event under 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack  # the sibling script that runs the local stack

from model_trainer.connections import RedisUse, redis_client

RUN = {"model_size": "tiny", "max_seq_len": 64, "batch_size": 12, "max_steps": 20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if stack.STATE_FILE.exists():
        sys.stdout.write("stack already running: make stop first\n")
        return 1
    os.environ["STACK"] = "processes"
    if stack.start() != 0:
        return 1
    try:
        return measure(stack.read_state(), args.runs)
    finally:
        stack.stop()


def measure(state: dict[str, str], runs: int) -> int:
    text = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"
    data = text.read_bytes() if text.exists() else b"to be or not to be\n" * 50_000
    bank = httpx.post(
        f"{state['databank']}/files",
        headers={"X-API-Key": state["databank_key"]},
        files={"file": ("c.txt", data)},
    )
    corpus = bank.json()["file_id"]
    redis = redis_client(state["redis"], RedisUse.JOBS)
    pubsub = redis.pubsub()
    pubsub.subscribe("trainer:events")
    with httpx.Client(
        base_url=state["api"], headers={"X-API-Key": state["api_key"]}, timeout=30
    ) as api:
        body = {"method": "bpe", "vocab_size": 1024, "corpus_file_id": corpus}
        tok = api.post("/tokenizers/train", json=body).json()["tokenizer_id"]
        while api.get(f"/tokenizers/{tok}").json()["status"] not in ("completed", "failed"):
            time.sleep(0.5)
        firsts: list[float] = []
        for i in range(runs + 1):
            posted = time.perf_counter()
            run_body = {**RUN, "corpus_file_id": corpus, "tokenizer_id": tok}
            run_id = api.post("/runs/train", json=run_body).json()["run_id"]
            started: float | None = None
            progress: float | None = None
            while progress is None and time.perf_counter() - posted < 300:
                message = pubsub.get_message(timeout=0.05)
                if not message or message["type"] != "message":
                    continue
                event = json.loads(message["data"])
                if event.get("run_id") != run_id:
                    continue
                elapsed = time.perf_counter() - posted
                if event["type"].endswith("started.v1"):
                    started = elapsed
                elif event["type"].endswith("progress.v1"):
                    progress = elapsed
            label = "warm-up" if i == 0 else f"run {i}"
            sys.stdout.write(
                f"{label}: started event {_s(started)}, first progress {_s(progress)}\n"
            )
            if i > 0 and progress is not None:
                firsts.append(progress)
            while api.get(f"/runs/{run_id}").json()["status"] not in ("completed", "failed"):
                time.sleep(0.5)
    if firsts:
        median, worst = statistics.median(firsts), max(firsts)
        sys.stdout.write(f"first progress event: median {median:.2f} s, max {worst:.2f} s\n")
    return 0


def _s(seconds: float | None) -> str:
    return "none" if seconds is None else f"{seconds:.2f} s"


if __name__ == "__main__":
    sys.exit(main())
