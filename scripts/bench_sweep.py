#!/usr/bin/env python3
"""`make bench-sweep`: a learning rate x batch size sweep on tinyshakespeare at a fixed time
budget, run twice through the local stack's API: the full grid, then the same grid with
successive halving. Prints both leaderboards and the wall time early stopping saved.

Starts the local stack (as `make demo` does) unless one is running, trains the demo's BPE
tokenizer, runs the sweeps one trial at a time (the trials' own numbers are then comparable
on a 2-core machine), and stops what it started. `--json` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import httpx
from pydantic import JsonValue

from model_trainer.api.schemas import SweepInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo
import stack

GRID: dict[str, JsonValue] = {
    "learning_rate": {"values": [1e-3, 3e-3, 1e-2]},
    "batch_size": {"values": [16, 32]},
}


def wait_sweep(client: httpx.Client, sweep_id: str) -> SweepInfo:
    """Until the sweep ends; a line per change of its message."""
    last = ""
    while True:
        info = SweepInfo.model_validate(client.get(f"/sweeps/{sweep_id}").json())
        if (info.message or "") != last:
            demo.say(f"   {info.status.value}: {info.message}")
            last = info.message or ""
        if info.status.terminal:
            return info
        time.sleep(2.0)


def leaderboard(info: SweepInfo) -> list[str]:
    trials = {t.run_id: t for t in info.progress.trials}
    lines = []
    for rank, run_id in enumerate(info.leaderboard, 1):
        t = trials[run_id]
        params = ", ".join(f"{k}={v}" for k, v in t.params.items())
        if t.bits_per_char is not None:
            figure = f"{t.bits_per_char:.4f} bits/char"
        elif t.rungs:  # stopped: the loss it was judged on
            figure = f"val loss {t.rungs[-1].value:.4f} at rung"
        else:
            figure = f"val loss {t.val_loss or float('nan'):.4f}"
        state = (
            f"stopped at rung {t.stopped_at_rung}" if t.stopped_at_rung is not None else t.status
        )
        trained = t.train_seconds or 0.0
        lines.append(f"  {rank}. {params:<36} {figure:<22} {state:<18} {trained:6.1f} s trained")
    return lines


def run_sweep(
    client: httpx.Client, base: dict[str, JsonValue], name: str, asha: dict[str, JsonValue] | None
) -> tuple[SweepInfo, float]:
    body: dict[str, JsonValue] = {
        "name": name,
        "tags": ["bench-sweep"],
        "base": base,
        "space": {"parameters": GRID},
        "max_concurrent": 1,
    }
    if asha is not None:
        body["early_stopping"] = asha
    started = time.monotonic()
    accepted = client.post("/sweeps", json=body)
    if accepted.status_code != 202:
        raise SystemExit(f"POST /sweeps: {accepted.status_code} {accepted.text}")
    sweep_id = str(accepted.json()["sweep_id"])
    demo.say(f"== {name}: sweep {sweep_id}")
    info = wait_sweep(client, sweep_id)
    return info, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0, help="each trial's budget")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    started_here = not stack.STATE_FILE.exists()
    if started_here and stack.start() != 0:
        return 1
    state = stack.read_state()
    try:
        return bench(state, args.seconds, args.json)
    finally:
        if started_here:
            stack.stop()


def bench(state: dict[str, str], seconds: float, out: Path | None) -> int:
    with (
        httpx.Client(
            base_url=state["databank"], headers={"X-API-Key": state["databank_key"]}, timeout=60
        ) as bank,
        demo.SHAKESPEARE.open("rb") as f,
    ):
        uploaded = bank.post("/files", files={"file": ("tinyshakespeare.txt", f, "text/plain")})
        uploaded.raise_for_status()
    corpus_id = str(uploaded.json()["file_id"])
    headers = {"X-API-Key": state["api_key"]} if state["api_key"] else {}
    with httpx.Client(base_url=state["api"], headers=headers, timeout=60) as client:
        body = {"method": "bpe", "vocab_size": demo.TOKENIZER_VOCAB, "corpus_file_id": corpus_id}
        tokenizer_id = str(client.post("/tokenizers/train", json=body).json()["tokenizer_id"])
        done = demo.wait(client, f"/tokenizers/{tokenizer_id}", 600)
        if done["status"] != "completed":
            raise SystemExit(f"tokenizer {done['status']}: {done.get('message')}")
        base: dict[str, JsonValue] = {
            "corpus_file_id": corpus_id,
            "tokenizer_id": tokenizer_id,
            "model_size": "tiny",
            "max_train_seconds": seconds,
        }
        load = os.getloadavg()[0]
        full, full_wall = run_sweep(client, base, "lr x batch, full grid", None)
        asha: dict[str, JsonValue] = {"reduction_factor": 3}
        halved, halved_wall = run_sweep(client, base, "lr x batch, successive halving", asha)
        load = max(load, os.getloadavg()[0])
    saved = 1 - halved_wall / full_wall
    for name, info, wall in (
        ("full grid", full, full_wall),
        ("successive halving", halved, halved_wall),
    ):
        demo.say(f"== {name}: {wall:.0f} s wall, {info.message}")
        for line in leaderboard(info):
            demo.say(line)
    demo.say(
        f"== early stopping: {halved_wall:.0f} s against {full_wall:.0f} s for the full grid "
        f"({100 * saved:.0f}% less wall time); load average up to {load:.2f}"
    )
    if out is not None:
        figures = {
            "trial_seconds": seconds,
            "full_wall_seconds": round(full_wall, 1),
            "asha_wall_seconds": round(halved_wall, 1),
            "saved_fraction": round(saved, 3),
            "load_average_max": round(load, 2),
            "full": full.model_dump(mode="json"),
            "asha": halved.model_dump(mode="json"),
        }
        out.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
