#!/usr/bin/env python3
"""API read latency at a fixed request rate, with and without a run training (`make bench-api`).

Starts the local stack (processes), trains a small tokenizer and one short run, then offers
`GET /runs/{id}` and `GET /runs?limit=20` at `--rate` requests per second for `--seconds`
each, open loop: request i is due at start + i/rate and its latency is counted from then, so
a slow server cannot hide its queueing by slowing the client down (no coordinated omission).
It measures twice: with the worker idle, and while a run trains (the worker pinned to
`--train-threads` threads, since here API, worker and this client share one machine; in
production they are separate services). Prints p50/p90/p99/max and the load average.
Target: p99 under 20 ms at 200 requests/s.

Then the anonymous surface (issue 20): Data Bank stopped (SIGSTOP: connections accepted,
never answered) while another process keeps 100 `/readyz` requests in flight, waves of 100
at once, and `GET /runs` is offered at 20 requests/s. Target: p99 under 50 ms (`/readyz`
answers a background probe's cached result and does no I/O).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack  # the sibling script that runs the local stack

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    parser.add_argument("--train-threads", type=int, default=1)
    args = parser.parse_args()
    if stack.STATE_FILE.exists():
        sys.stdout.write("stack already running: make stop first\n")
        return 1
    os.environ["STACK"] = "processes"
    os.environ["STACK_OWN_REDIS"] = "1"  # its records never land in the Redis at REDIS_URL
    os.environ["APP__THREADS"] = str(args.train_threads)
    if stack.start() != 0:
        return 1
    try:
        return measure(stack.read_state(), args.rate, args.seconds)
    finally:
        stack.stop()


def measure(state: dict[str, str], rate: float, seconds: float) -> int:
    data = SHAKESPEARE.read_bytes()[:300_000] if SHAKESPEARE.exists() else b"to be\n" * 50_000
    uploaded = httpx.post(
        f"{state['databank']}/files",
        headers={"X-API-Key": state["databank_key"]},
        files={"file": ("c.txt", data)},
    )
    corpus = uploaded.json()["file_id"]
    with httpx.Client(
        base_url=state["api"], headers={"X-API-Key": state["api_key"]}, timeout=30
    ) as api:
        body = {"method": "bpe", "vocab_size": 512, "corpus_file_id": corpus}
        tokenizer = api.post("/tokenizers/train", json=body).json()["tokenizer_id"]
        _wait(api, f"/tokenizers/{tokenizer}", {"completed"})
        run = {"corpus_file_id": corpus, "tokenizer_id": tokenizer, "model_size": "tiny"}
        done = api.post("/runs/train", json=run | {"max_steps": 30}).json()["run_id"]
        _wait(api, f"/runs/{done}", {"completed"})
        paths = {"GET /runs/{id}": f"/runs/{done}", "GET /runs?limit=20": "/runs?limit=20"}
        _report("worker idle", state, paths, rate, seconds)
        training = api.post("/runs/train", json=run | {"max_train_seconds": 4 * seconds}).json()
        _wait(api, f"/runs/{training['run_id']}", {"running"})
        _report("a run training", state, paths, rate, seconds)
        api.post(f"/runs/{training['run_id']}/cancel")
        _wait(api, f"/runs/{training['run_id']}", {"cancelled"})
    _report_under_readyz_flood(state, seconds)
    return 0


# Waves of 100 concurrent /readyz for as long as it runs, in a process of its own: a flood
# sharing this process's event loop would delay the measured requests' own responses.
_FLOOD = """
import asyncio, sys, httpx
async def main(url):
    async with httpx.AsyncClient(base_url=url, timeout=60,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=100)) as c:
        while True:
            await asyncio.gather(*(c.get("/readyz") for _ in range(100)))
asyncio.run(main(sys.argv[1]))
"""


def _report_under_readyz_flood(state: dict[str, str], seconds: float) -> None:
    pids = json.loads(stack.STATE_FILE.read_text())["pids"]
    databank = int(pids["databank"])
    os.kill(databank, signal.SIGSTOP)
    flood = subprocess.Popen([sys.executable, "-c", _FLOOD, state["api"]])
    try:
        time.sleep(2)  # the flood's connections opened and in flight
        _report(
            "Data Bank stopped, 100 /readyz in flight", state, {"GET /runs": "/runs"}, 20, seconds
        )
    finally:
        flood.kill()
        flood.wait()
        os.kill(databank, signal.SIGCONT)


def _wait(api: httpx.Client, path: str, statuses: set[str]) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        answer = api.get(path).json()
        if answer["status"] in statuses:
            return
        if answer["status"] in ("failed", "cancelled"):
            raise SystemExit(f"{path}: {answer['status']}: {answer.get('message')}")
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {path}")


def _report(
    label: str, state: dict[str, str], paths: dict[str, str], rate: float, seconds: float
) -> None:
    for name, path in paths.items():
        latencies, errors = asyncio.run(_open_loop(state, path, rate, seconds))
        ms = sorted(x * 1000 for x in latencies)
        load = os.getloadavg()[0]

        def pct(p: float, values: list[float] = ms) -> float:
            return values[min(len(values) - 1, int(p * len(values)))]

        p50 = statistics.median(ms)
        sys.stdout.write(
            f"{label:15s} {name:18s} {len(ms) / seconds:6.0f} req/s  p50 {p50:6.1f}"
            f"  p90 {pct(0.9):6.1f}  p99 {pct(0.99):6.1f}  max {ms[-1]:6.1f} ms"
            f"  errors {errors}  load {load:.2f}\n"
        )


async def _open_loop(
    state: dict[str, str], path: str, rate: float, seconds: float
) -> tuple[list[float], int]:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(
        base_url=state["api"],
        headers={"X-API-Key": state["api_key"]},
        limits=limits,
        timeout=30,
    ) as client:
        await client.get(path)  # warm the connection pool
        start = time.perf_counter()
        total = int(rate * seconds)

        async def one(due: float) -> None:
            nonlocal errors
            response = await client.get(path)
            if response.status_code != 200:
                errors += 1
            latencies.append(time.perf_counter() - due)

        tasks = []
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due)))
        await asyncio.gather(*tasks)
    return latencies, errors


if __name__ == "__main__":
    sys.exit(main())
