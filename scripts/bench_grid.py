#!/usr/bin/env python3
"""The defaults' grid (`make bench-grid`): which configuration learns most in 76 s here.

Each configuration trains `repeats` times through `bench_train.py quality` (the worker's
code path, `training.run.run_training`), one fresh process per run as a worker runs a job,
and is scored on nanoGPT's validation text (the last 10% of tinyshakespeare; tokenizer and
model trained on the first 90%). Runs go repeat by repeat (every configuration once, then
again), so a load that drifts over the hour touches every configuration alike.

The compile cache is kept between runs as a worker keeps it, and warmed first: each
configuration trains once for a few seconds with its step compiled (`compile: on`) in both
precisions, so that no measured run pays a cold compile that a worker pays once a shape.

Axes: execution (precision x compiled, on the defaults), family x optimizer (execution
`auto`), and shape around the defaults (batch, context, depth, width). The table at the end
gives each configuration's mean and spread; a configuration beats the defaults when its mean
is lower by more than both spreads (max - min) together.

Usage: .venv/bin/python scripts/bench_grid.py [--repeats 3] [--seconds 76]
       [--json .stack/bench/grid.jsonl] [--only NAME ...] [--pause-file PATH] [--no-warm]
(--pause-file: while that file exists, no new run starts: a quiet machine for something
else, between two runs, without measuring a run beside it.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_TRAIN = Path(__file__).with_name("bench_train.py")

DEFAULTS: dict[str, object] = {}  # TrainingSpec's defaults: qwen3 + Muon, tiny, auto, auto
GRID: dict[str, dict[str, object]] = {
    "defaults (qwen3 muon, auto)": DEFAULTS,
    "qwen3 muon fp32 eager": {"precision": "fp32", "compile": "off"},
    "qwen3 muon fp32 compiled": {"precision": "fp32", "compile": "on"},
    "qwen3 muon bf16 eager": {"precision": "bf16", "compile": "off"},
    "qwen3 muon bf16 compiled": {"precision": "bf16", "compile": "on"},
    "qwen3 adamw": {"optimizer": "adamw"},
    "llama muon": {"model_family": "llama"},
    "llama adamw": {"model_family": "llama", "optimizer": "adamw"},
    "gpt2 muon": {"model_family": "gpt2"},
    "gpt2 adamw": {"model_family": "gpt2", "optimizer": "adamw"},
    "qwen3 muon batch 24": {"batch_size": 24},
    "qwen3 muon context 128": {"max_seq_len": 128},
    "qwen3 muon 6 layers": {"n_layer": 6},
    "qwen3 muon 192 wide": {"n_embd": 192, "n_head": 6, "n_kv_head": 6},
}


def log(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run(
    overrides: dict[str, object], seconds: float, cache: Path, out: Path
) -> dict[str, object] | None:
    sets = [arg for k, v in overrides.items() for arg in ("--set", f"{k}={json.dumps(v)}")]
    command = [sys.executable, str(BENCH_TRAIN), "quality", "--seconds", str(seconds)]
    command += ["--compile-cache", str(cache), "--json", str(out), *sets]
    before = out.read_text(encoding="utf-8").count("\n") if out.exists() else 0
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = out.read_text(encoding="utf-8").splitlines() if out.exists() else []
    if done.returncode != 0 or len(lines) <= before:
        sys.stderr.write(f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}\n")
        return None
    result: dict[str, object] = json.loads(lines[-1])
    return result


def warm(names: list[str], cache: Path) -> None:
    """Compile each shape's step once per precision it may run in, into the shared cache.

    The optimizer is not part of the compiled step (training/step.py), so configurations
    that differ only in it share their graphs; an eager configuration needs none."""
    shapes: dict[str, dict[str, object]] = {}
    for name in names:
        config = GRID[name]
        if config.get("compile") == "off":
            continue
        for precision in [config["precision"]] if "precision" in config else ["fp32", "bf16"]:
            overrides = {k: v for k, v in config.items() if k != "optimizer"}
            overrides |= {"precision": precision, "compile": "on"}
            shapes.setdefault(json.dumps(overrides, sort_keys=True), overrides)
    with tempfile.TemporaryDirectory(prefix="bench-grid-warm-") as tmp:
        for key, overrides in shapes.items():
            ok = run(overrides, 3.0, cache, Path(tmp) / "warm.jsonl")
            log(f"warmed {key}: {'ok' if ok else 'FAILED'}")


def summary(results: dict[str, list[dict[str, object]]]) -> None:
    log(
        "\n| configuration | bits/char, nanoGPT's text (runs) | mean | spread | steps | "
        "execution | load after |"
    )
    log("|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        if not runs:
            log(f"| {name} | failed | | | | | |")
            continue
        scores = [float(str(r["nanogpt_val_bits_per_char"])) for r in runs]
        steps = [int(str(r["steps"])) for r in runs]
        executions = sorted(
            {
                f"{e['precision']} {'compiled' if e['compiled'] else 'eager'}"
                for r in runs
                if isinstance(e := r.get("execution"), dict)
            }
        )
        loads = [float(str(r["load_after"])) for r in runs]
        log(
            f"| {name} | {', '.join(f'{s:.3f}' for s in scores)} | "
            f"{statistics.mean(scores):.3f} | {max(scores) - min(scores):.3f} | "
            f"{min(steps)}-{max(steps)} | {', '.join(executions)} | "
            f"{min(loads):.1f}-{max(loads):.1f} |",
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=76.0)
    parser.add_argument("--json", type=Path, default=Path(".stack/bench/grid.jsonl"))
    parser.add_argument("--only", action="append", choices=list(GRID), help="configurations")
    parser.add_argument("--pause-file", type=Path, help="no run starts while it exists")
    parser.add_argument(
        "--no-warm", action="store_true", help="the compile cache is warm already (a rerun)"
    )
    args = parser.parse_args(argv)
    names = args.only or list(GRID)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    cache = args.json.parent / "grid-compile-cache"
    log(f"cpu flags: {' '.join(cpu_flags())}; load average {os.getloadavg()}")
    if not args.no_warm:
        warm(names, cache)
    results: dict[str, list[dict[str, object]]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names:
            while args.pause_file is not None and args.pause_file.exists():
                time.sleep(5)
            result = run(GRID[name], args.seconds, cache, args.json)
            if result is not None:
                result["grid"], result["repeat"] = name, repeat
                results[name].append(result)
                log(
                    f"repeat {repeat + 1} {name}: "
                    f"{float(str(result['nanogpt_val_bits_per_char'])):.3f} bits/char, "
                    f"{result['steps']} steps, load {float(str(result['load_after'])):.2f}",
                )
            else:
                log(f"repeat {repeat + 1} {name}: FAILED")
    summary(results)
    return 0 if all(results.values()) else 1


def cpu_flags() -> list[str]:
    """The CPU's flags that decide bf16 and AMX, as /proc/cpuinfo says them."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    return sorted(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2")))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
