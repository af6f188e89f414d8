#!/usr/bin/env python3
"""The README's dashboard screenshots (docs/screenshots/*.png), taken from a live stack.

Starts a private stack with the test suite's harness (its own redis-server on a free port,
never the one at REDIS_URL; Data Bank, one worker, the API as a Hypercorn process with an API
key), uploads `../shared/corpora/tinyshakespeare.txt` through `POST /corpora` (a generated
text when it is absent), trains a BPE tokenizer and a `tiny` run, starts two more runs (one
trains, one waits in the queue), and saves with the system's chromium (tests/browser.py):
- `runs.png`: the runs list;
- `run.png`: the completed run's page (loss chart, evaluation, checkpoints, a generated
  sample);
- `new-run.png`: the new-run form.
Run from the repository root: `.venv/bin/python scripts/screenshots.py` (about two minutes).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "server"))

from playwright.sync_api import FloatRect  # noqa: E402

from tests.browser import VIEWPORT, chromium  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402
from tests.stack import Api, Stack, json_dict, poll  # noqa: E402
from tests.test_training_runs import _text  # noqa: E402

KEY = "screenshots-key"
CORPUS = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"
RUN = {"model_size": "tiny", "max_seq_len": 128, "batch_size": 12, "eval_interval": 50}


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _wait(client: httpx.Client, path: str, status: str, timeout: float) -> dict[str, object]:
    return poll(
        lambda: json_dict(client.get(path).json()), lambda a: a["status"] == status, timeout
    )


def _populate(client: httpx.Client, seconds: float) -> str:
    """A corpus, a tokenizer, a completed run, a running one and a queued one: the completed
    run's id."""
    text = CORPUS.read_bytes() if CORPUS.is_file() else _text().encode()
    name = CORPUS.name if CORPUS.is_file() else "generated.txt"
    corpus = client.post("/corpora", params={"name": name}, content=text).json()["file_id"]
    tok = client.post(
        "/tokenizers/train", json={"method": "bpe", "vocab_size": 1024, "corpus_file_id": corpus}
    ).json()["tokenizer_id"]
    _wait(client, f"/tokenizers/{tok}", "completed", 300)
    data = {"corpus_file_id": corpus, "tokenizer_id": tok}
    done = client.post("/runs/train", json={**RUN, **data, "max_train_seconds": seconds})
    run_id = str(done.json()["run_id"])
    _say(f"training {run_id} for {seconds:.0f} s")
    _wait(client, f"/runs/{run_id}", "completed", seconds + 300)
    for budget in (1800, 600):  # one trains while the screenshots are taken, one waits
        client.post("/runs/train", json={**RUN, **data, "max_train_seconds": budget})
    return run_id


def _shoot(url: str, run_id: str, out: Path, profile: Path) -> None:
    with chromium(profile) as browser:
        page = browser.new_page()
        page.goto(f"{url}/dashboard/#/runs")
        page.fill("#key-input", KEY)
        page.click("#key-form button[type=submit]")
        # The running run past its first steps, so that its row shows a loss.
        page.wait_for_function(
            """() => [...document.querySelectorAll('#runs-table tr')].some((row) =>
                row.querySelector('[data-status=running]')
                && row.querySelectorAll('td')[4].textContent !== '—')""",
            timeout=300_000,
        )
        page.screenshot(path=str(out / "runs.png"))

        page.goto(f"{url}/dashboard/#/runs/{run_id}")
        page.wait_for_selector("#eval-result", timeout=60_000)
        page.fill("#field-prompt", "ROMEO:")
        page.fill("#field-seed", "3")
        page.fill("#field-max_new_tokens", "60")
        page.click("#generate")
        page.wait_for_selector("#samples pre.sample", timeout=120_000)
        # Down to the checkpoints: the log below would only add height.
        bottom = page.evaluate(
            """() => document.querySelector('#checkpoints-table').getBoundingClientRect().bottom
                + window.scrollY"""
        )
        height = int(bottom) + 24 if isinstance(bottom, int | float) else 1600
        page.screenshot(path=str(out / "run.png"), full_page=True, clip=_clip(height))

        page.goto(f"{url}/dashboard/#/new-run")
        page.wait_for_selector("#tokenizer-select option[value^=tok-]", state="attached")
        page.click("#more-settings summary")
        page.screenshot(path=str(out / "new-run.png"), full_page=True)


def _clip(height: int) -> FloatRect:
    return {"x": 0, "y": 0, "width": VIEWPORT["width"], "height": height}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60, help="training budget of the run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="screenshots-"))
    redis = RedisServer(root / "redis").start()
    stack = Stack(root, redis.url)
    api: Api | None = None
    started = time.monotonic()
    try:
        stack.start_worker("worker")
        api = Api(stack, root, KEY)
        with httpx.Client(base_url=api.url, headers={"X-API-Key": KEY}, timeout=120) as client:
            run_id = _populate(client, args.seconds)
            _shoot(api.url, run_id, args.out, root / "profile")
        for png in sorted(args.out.glob("*.png")):
            _say(f"{png.relative_to(ROOT)}: {png.stat().st_size // 1024} KiB")
        _say(f"done in {time.monotonic() - started:.0f} s")
    finally:
        if api is not None:
            api.stop()
        stack.close()
        redis.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
