#!/usr/bin/env python3
"""`make demo`: the whole product on this machine, through its HTTP API, in a few minutes.

Starts the local stack (Redis, Data Bank, API, worker), uploads a corpus to Data Bank
(../shared/corpora/tinyshakespeare.txt, or a generated sample when that is absent), trains a
BPE tokenizer and a `tiny` model (the defaults: qwen3 with Muon) with a time budget, shows
progress, prints the evaluation (validation bits per character) and a generated sample, says
where the artifact is, prints the dashboard's address (watch the run there while it trains)
and the `modeltrainer` CLI commands that do the same, and stops what it started (`--keep`
leaves it running).
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"
# The demo's defaults are the ones docs/benchmarks.md measured for quality per CPU minute.
TOKENIZER_VOCAB = 1024
TRAIN_SECONDS = 95.0


def say(message: str = "") -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def sample_corpus(path: Path, lines: int = 40_000, seed: int = 7) -> Path:
    """A small generated text with some structure, for machines without ../shared."""
    rng = random.Random(seed)  # noqa: S311 - sample text, not security
    subjects = ["the king", "a fool", "my lord", "the queen", "this night", "our fortune"]
    verbs = ["speaks of", "dreams of", "waits for", "remembers", "fears", "forgives"]
    objects = ["the crown", "a storm", "his brother", "the sea", "her letter", "the dawn"]
    with path.open("w", encoding="utf-8") as f:
        for _ in range(lines):
            f.write(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}.\n")
    return path


def wait(client: httpx.Client, path: str, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = client.get(path).json()
        if isinstance(answer, dict) and answer.get("status") in (
            "completed",
            "failed",
            "cancelled",
        ):
            return {str(k): v for k, v in answer.items()}
        time.sleep(1.0)
    raise SystemExit(f"timed out waiting for {path}")


def bar(percent: float, width: int = 30) -> str:
    filled = int(width * min(max(percent, 0.0), 100.0) / 100)
    return "#" * filled + "." * (width - filled)


def show_progress(client: httpx.Client, run_id: str, timeout: float) -> dict[str, object]:
    """A progress bar redrawn in place on a terminal; a line every few seconds otherwise."""
    tty = sys.stdout.isatty()
    last_printed, last_line = 0.0, ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get(f"/runs/{run_id}").json()
        progress = run.get("progress") or {}
        step, total = progress.get("step", 0), progress.get("total_steps") or 0
        pct = float(progress.get("percent") or 0.0)
        loss = progress.get("train_loss")
        val = progress.get("val_loss")
        rate = progress.get("tokens_per_sec")
        eta = progress.get("eta_seconds")
        line = (
            f"  [{bar(pct)}] {pct:5.1f}%  step {step}/{total}"
            + (f"  loss {loss:.3f}" if isinstance(loss, float) else "")
            + (f"  val {val:.3f}" if isinstance(val, float) else "")
            + (f"  {rate / 1000:.1f}k tok/s" if isinstance(rate, float) else "")
            + (f"  ETA {eta:.0f}s" if isinstance(eta, float) else "")
        )
        finished = run["status"] in ("completed", "failed", "cancelled")
        if tty:
            sys.stdout.write("\r" + line.ljust(100) + ("\n" if finished else ""))
        elif line != last_line and (finished or time.monotonic() - last_printed >= 5):
            sys.stdout.write(line + "\n")
            last_printed, last_line = time.monotonic(), line
        sys.stdout.flush()
        if finished:
            return {str(k): v for k, v in run.items()}
        time.sleep(1.0)
    raise SystemExit("timed out waiting for the run")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=TRAIN_SECONDS, help="training budget")
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args()

    if stack.STATE_FILE.exists():
        say("the local stack is already running: `make stop` first (the demo starts its own)")
        return 1
    say("== starting the local stack")
    if stack.start() != 0:
        return 1
    state = stack.read_state()
    say(f"== watch it in the dashboard: {state['api']}/ (API key {state['api_key']})")
    try:
        return run_demo(
            state["api"], state["databank"], state["databank_key"], state["api_key"], args.seconds
        )
    finally:
        if not args.keep:
            say("== stopping the stack (make start brings it back with the same keys and files)")
            stack.stop()


def cli_equivalents(corpus: Path, tokenizer_id: str, run_id: str, seconds: float) -> list[str]:
    """What the demo did, as `modeltrainer` commands (they read .stack/client.env)."""
    cli = ".venv/bin/modeltrainer"
    return [
        f"{cli} corpus upload {shlex.quote(str(corpus))}            # prints the file_id",
        f"{cli} tokenizer train --corpus FILE_ID --method bpe --vocab-size {TOKENIZER_VOCAB}"
        " --wait",
        f"{cli} run train --corpus FILE_ID --tokenizer {tokenizer_id} --size tiny"
        f" --max-seconds {seconds:g} --follow",
        f"{cli} run eval {run_id}",
        f"{cli} run generate {run_id} 'ROMEO:' --max-new-tokens 100",
        f"{cli} run download {run_id} -o models/",
    ]


def run_demo(api: str, databank: str, bank_key: str, api_key: str, seconds: float) -> int:
    started = time.monotonic()
    corpus = SHAKESPEARE
    if not corpus.exists():
        corpus = sample_corpus(stack.STATE / "sample-corpus.txt")
        say(f"(no {SHAKESPEARE}: using a generated sample corpus)")
    say(f"== uploading {corpus.name} ({corpus.stat().st_size / 1e6:.1f} MB) to Data Bank")
    with httpx.Client(base_url=databank, headers={"X-API-Key": bank_key}, timeout=60) as bank:
        with corpus.open("rb") as f:
            uploaded = bank.post("/files", files={"file": (corpus.name, f, "text/plain")})
        uploaded.raise_for_status()
    corpus_id = str(uploaded.json()["file_id"])
    say(f"   corpus_file_id {corpus_id}")

    headers = {"X-API-Key": api_key} if api_key else {}
    with httpx.Client(base_url=api, headers=headers, timeout=30) as client:
        say(f"== training a BPE tokenizer (vocabulary {TOKENIZER_VOCAB})")
        body = {"method": "bpe", "vocab_size": TOKENIZER_VOCAB, "corpus_file_id": corpus_id}
        tok = client.post("/tokenizers/train", json=body)
        tok.raise_for_status()
        tokenizer_id = str(tok.json()["tokenizer_id"])
        done = wait(client, f"/tokenizers/{tokenizer_id}", 600)
        if done["status"] != "completed":
            say(f"tokenizer {done['status']}: {done.get('message')}")
            return 1
        stats = done.get("stats") or {}
        tpc = stats.get("tokens_per_char") if isinstance(stats, dict) else None
        say(
            f"   {tokenizer_id}: {tpc:.3f} tokens/char on the holdout"
            if tpc
            else f"   {tokenizer_id}"
        )

        say(f"== training a tiny model for {seconds:.0f} s (the defaults: qwen3, Muon)")
        run_body = {
            "corpus_file_id": corpus_id,
            "tokenizer_id": tokenizer_id,
            "model_size": "tiny",
            "max_train_seconds": seconds,
        }
        submitted = client.post("/runs/train", json=run_body)
        if submitted.status_code != 202:
            say(f"submit failed: {submitted.status_code} {submitted.text}")
            return 1
        run_id = str(submitted.json()["run_id"])
        say(f"   run {run_id}")
        run = show_progress(client, run_id, seconds * 4 + 600)
        if run["status"] != "completed":
            say(f"run {run['status']}: {run.get('message')}")
            return 1

        evaluation = client.get(f"/runs/{run_id}/eval").json()
        say("== evaluation (validation split: the first half of the held-out last 10%)")
        loss, ppl = evaluation["loss"], evaluation["perplexity"]
        say(f"   loss {loss:.4f} nats/token, perplexity {ppl:.2f}")
        say(f"   bits per character: {evaluation['bits_per_char']:.3f}")
        say(f"   tokens per character: {evaluation['tokens_per_char']:.3f}")
        for sample in (evaluation.get("samples") or [])[:1]:
            say("== a generated sample")
            say(f"   prompt {sample['prompt']!r}:")
            for line in (sample["prompt"] + sample["completion"]).splitlines()[:8]:
                say(f"   | {line}")
        pointer = client.get(f"/runs/{run_id}/artifact").json()
        say("== artifact")
        say(f"   Data Bank file_id {pointer['file_id']} (a tar of model-{run_id}/)")
        say(f"   worker's copy: .stack/worker/runs/{run_id}/artifact/")
        say("== the same with the CLI (after `make start`; it reads .stack/client.env)")
        for line in cli_equivalents(corpus, tokenizer_id, run_id, seconds):
            say(f"   {line}")
    say(f"== demo finished in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
