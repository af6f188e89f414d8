"""`/readyz`'s answer, found by a background probe and kept in memory.

Readiness needs Redis (live workers) and Data Bank. Checked per request, every anonymous
`/readyz` held an API thread on them: with Data Bank hung, 120 of them slowed an
authenticated `GET /runs` from 2 ms to 8.7 s. So one asyncio task, started with the app
(api/main.py), probes every `health.probe_interval_sec` in a thread, one probe at a time,
and `/readyz` answers the last result from memory: anonymous traffic costs no I/O, no thread
and no remote call. A result older than a few intervals (the probe itself is stuck) is
answered as degraded, so a stuck probe cannot report ready forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from service_common.jsonlog import log_fields

log = logging.getLogger("model_trainer.api")

# What one probe may take besides the intervals before its last answer counts as stale:
# Data Bank's probe timeout (3 s) and Redis's, with room.
PROBE_BUDGET_SEC = 10.0

# Why not ready, or None; live workers of the GPU queue (None when Redis did not answer).
Answer = tuple[str | None, int | None]


@dataclass(frozen=True)
class _Probed:
    answer: Answer
    at: float  # clock() when the probe ended


class ReadinessProbe:
    def __init__(self, interval_sec: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval_sec
        self._stale_after = 3 * interval_sec + PROBE_BUDGET_SEC
        self._clock = clock
        self._last: _Probed | None = None
        self.probes = 0  # probes made (tests and operators read it)

    def current(self) -> Answer:
        """The last probe's answer; degraded before the first one and when it is stale."""
        last = self._last
        if last is None:
            return "readiness not probed yet (the API is starting)", None
        age = self._clock() - last.at
        if age > self._stale_after:
            return f"readiness probe has not answered for {age:.0f} s", last.answer[1]
        return last.answer

    def probe(self, check: Callable[[], Answer]) -> None:
        """One probe, in the calling thread."""
        answer = check()
        self._last = _Probed(answer, self._clock())
        self.probes += 1

    async def run(self, check: Callable[[], Answer]) -> None:
        """Probe now and every interval until cancelled (when the app stops)."""
        while True:
            try:
                await asyncio.to_thread(self.probe, check)
            except Exception:  # a bug: logged; the next probe tries again, the answer ages
                log.exception("readiness probe failed", extra=log_fields("readiness_probe_failed"))
            await asyncio.sleep(self._interval)
