#!/usr/bin/env python3
"""Fuzz the API with schemathesis against a live local stack (`make fuzz`).

Starts the local stack (processes) with an API key (the admin), then runs `st run` on the
API's own OpenAPI document (every route in it, new ones included): every operation gets
`--max-examples` generated requests (valid and invalid), each answer checked for server
errors, undocumented status codes, content types, headers and the documented response
schema, and for routes that ignore a missing or wrong API key. Prints schemathesis's
summary; exits with its exit code (0 = no failures).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack  # the sibling script that runs the local stack

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "missing_required_header",
    "ignored_auth",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-examples", type=int, default=100, help="per operation")
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    schemathesis = shutil.which("st", path=str(Path(sys.executable).parent))
    if schemathesis is None:
        sys.stdout.write("schemathesis is not installed (make fuzz installs it)\n")
        return 1
    if stack.STATE_FILE.exists():
        sys.stdout.write("stack already running: make stop first\n")
        return 1
    os.environ["STACK"] = "processes"
    os.environ["STACK_OWN_REDIS"] = "1"  # its records never land in the Redis at REDIS_URL
    api_key = os.environ.setdefault("SECURITY__API_KEY", secrets.token_hex(16))
    # The fuzzer sends wrong keys on purpose (ignored_auth) and thousands of submissions
    # from one address and one key: with the shipped throttle and quotas most of its
    # requests would be 429s (documented, so no failure) that reach no route's own checks.
    for name in (
        "SECURITY__AUTH_FAILURES_PER_MINUTE",
        "QUOTAS__SUBMISSIONS_PER_MINUTE",
        "QUOTAS__QUEUED_JOBS",
        "QUOTAS__ACTIVE_RUNS",
    ):
        os.environ.setdefault(name, "100000")
    os.environ.setdefault("APP__DATA_BANK_API_KEY", secrets.token_hex(16))
    if stack.start() != 0:
        return 1
    try:
        api = stack.read_state()["api"]
        command = [
            schemathesis,
            "run",
            f"{api}/openapi.json",
            "--header",
            f"X-API-Key: {api_key}",
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            str(args.max_examples),
            "--seed",
            str(args.seed),
            "--workers",
            "2",
            "--report",
            "junit",
            "--report-dir",
            str(stack.STATE / "fuzz"),
        ]
        return subprocess.run(command, check=False).returncode
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
