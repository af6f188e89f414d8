"""`GET /metrics`: the whole system in the Prometheus text format (prometheus_client).

Every value comes from the shared Redis state, read at scrape time, so one scrape of any API
replica sees every job, queue and worker:

| metric                                          | type      | labels                        |
| ----------------------------------------------- | --------- | ----------------------------- |
| modeltrainer_jobs                               | gauge     | kind, status                  |
| modeltrainer_queue_depth                        | gauge     | queue                         |
| modeltrainer_queue_oldest_waiting_seconds       | gauge     | queue                         |
| modeltrainer_workers_live                       | gauge     | queue, device                 |
| modeltrainer_run_tokens_per_second              | gauge     | run_id (running runs)         |
| modeltrainer_checkpoint_upload_failures_total   | counter   |                               |
| modeltrainer_http_requests_total                | counter   | method, route, status         |
| modeltrainer_http_request_duration_seconds      | histogram | method, route                 |

HTTP requests are counted in each API process and added to Redis every `FLUSH_SEC` (one
pipelined write, not one per request), so the totals are every replica's, a second late.
`route` is the route's template (`/runs/{run_id}`), never the raw path: one series per route.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model_trainer.jobs.queue import rq_queue
from model_trainer.settings import Settings
from model_trainer.store.keys import (
    CHECKPOINT_UPLOAD_FAILURES,
    HTTP_LATENCY,
    HTTP_REQUESTS,
    JOB_KEYS,
    JobKind,
    workers_key,
)
from model_trainer.store.records import RunProgress, Status, StatusStore, as_str

log = logging.getLogger("model_trainer.api")

FLUSH_SEC = 1.0
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SEP = "|"  # between label values in a Redis hash field (never in a method, route or status)


class CountRequests:
    """ASGI middleware: each HTTP request's method, route template, status and duration."""

    def __init__(self, app: ASGIApp, counts: RequestCounts) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the caller gets if the app raises before answering

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            template = getattr(scope.get("route"), "path", None) or "unmatched"
            elapsed = time.perf_counter() - started
            self.counts.observe(str(scope["method"]), str(template), status, elapsed)


class RequestCounts:
    """Requests counted in this process since the last flush to Redis."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: defaultdict[str, int] = defaultdict(int)
        self._latency: defaultdict[str, float] = defaultdict(float)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        series = f"{method}{SEP}{route}"
        with self._lock:
            self._counts[f"{series}{SEP}{status}"] += 1
            for bound in BUCKETS:
                if seconds <= bound:
                    self._latency[f"{series}{SEP}{bound}"] += 1
            self._latency[f"{series}{SEP}+Inf"] += 1
            self._latency[f"{series}{SEP}sum"] += seconds

    def flush(self, redis: Redis) -> None:
        """Add what was counted to Redis; kept for the next flush if Redis is down."""
        with self._lock:
            counts, latency = dict(self._counts), dict(self._latency)
            self._counts.clear()
            self._latency.clear()
        if not counts:
            return
        try:
            pipe = redis.pipeline()
            for name, count in counts.items():
                pipe.hincrby(HTTP_REQUESTS, name, count)
            for name, value in latency.items():
                pipe.hincrbyfloat(HTTP_LATENCY, name, value)
            pipe.execute()
        except RedisError:
            with self._lock:  # counted again next time
                for name, count in counts.items():
                    self._counts[name] += count
                for name, value in latency.items():
                    self._latency[name] += value

    async def flush_every(self, redis: Redis, seconds: float = FLUSH_SEC) -> None:
        while True:
            await asyncio.sleep(seconds)
            await asyncio.to_thread(self.flush, redis)


class SystemCollector(Collector):
    """Reads the metrics of the table above from Redis, once per scrape."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self._settings = settings
        self._redis = redis
        self._runs = StatusStore(redis, JOB_KEYS[JobKind.RUN], RunProgress)

    def collect(self) -> Iterator[Metric]:
        yield self._jobs()
        yield from self._queues()
        yield self._workers()
        yield self._tokens_per_second()
        failures = as_str(self._redis.get(CHECKPOINT_UPLOAD_FAILURES)) or "0"
        yield CounterMetricFamily(
            "modeltrainer_checkpoint_upload_failures",
            "Checkpoint uploads to Data Bank that failed (training went on)",
            value=float(failures),
        )
        yield from self._http()

    def _jobs(self) -> Metric:
        family = GaugeMetricFamily(
            "modeltrainer_jobs", "Jobs by kind and status", labels=["kind", "status"]
        )
        pipe = self._redis.pipeline()
        pairs = [(kind, status) for kind in JobKind for status in Status]
        for kind, status in pairs:
            pipe.zcard(JOB_KEYS[kind].status_index(status.value))
        for (kind, status), count in zip(pairs, pipe.execute(), strict=True):
            family.add_metric([kind.value, status.value], float(count))
        return family

    def _queue_names(self) -> list[str]:
        rq = self._settings.rq
        return [rq.queue_name, rq.gpu_queue_name]

    def _queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "modeltrainer_queue_depth", "Jobs waiting in the queue", labels=["queue"]
        )
        oldest = GaugeMetricFamily(
            "modeltrainer_queue_oldest_waiting_seconds",
            "How long the oldest waiting job has waited (0: none waits)",
            labels=["queue"],
        )
        now = time.time()
        for name in self._queue_names():
            queue = rq_queue(name, self._redis)
            depth.add_metric([name], float(queue.count))
            waited = 0.0
            first = queue.get_jobs(0, 1)
            if first and first[0].enqueued_at is not None:
                waited = max(0.0, now - first[0].enqueued_at.timestamp())
            oldest.add_metric([name], waited)
        yield depth
        yield oldest

    def _workers(self) -> Metric:
        family = GaugeMetricFamily(
            "modeltrainer_workers_live",
            "Workers that said they are alive within the presence TTL",
            labels=["queue", "device"],
        )
        since = time.time() - self._settings.recovery.worker_presence_ttl_sec
        live = {
            name: {
                w
                for w in (
                    as_str(m) for m in self._redis.zrangebyscore(workers_key(name), since, "+inf")
                )
                if w
            }
            for name in self._queue_names()
        }
        gpu_workers = live[self._settings.rq.gpu_queue_name]
        for name, workers in live.items():
            cuda = len(workers & gpu_workers)
            family.add_metric([name, "cuda"], float(cuda))
            family.add_metric([name, "cpu"], float(len(workers) - cuda))
        return family

    def _tokens_per_second(self) -> Metric:
        family = GaugeMetricFamily(
            "modeltrainer_run_tokens_per_second",
            "Training tokens per second of each running run (its latest report)",
            labels=["run_id"],
        )
        for run_id in self._runs.ids_with_status(Status.RUNNING):
            progress = self._runs.progress(run_id)
            if progress is not None and progress.tokens_per_sec is not None:
                family.add_metric([run_id], progress.tokens_per_sec)
        return family

    def _http(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "modeltrainer_http_requests",
            "HTTP requests answered, by route template and status",
            labels=["method", "route", "status"],
        )
        for field, value in self._redis.hgetall(HTTP_REQUESTS).items():
            parts = (as_str(field) or "").split(SEP)
            if len(parts) == 3:
                requests.add_metric(parts, float(value))
        yield requests
        series: defaultdict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        for field, value in self._redis.hgetall(HTTP_LATENCY).items():
            parts = (as_str(field) or "").split(SEP)
            if len(parts) == 3:
                series[(parts[0], parts[1])][parts[2]] = float(value)
        latency = HistogramMetricFamily(
            "modeltrainer_http_request_duration_seconds",
            "Time to answer HTTP requests, by route template",
            labels=["method", "route"],
        )
        for (method, route), values in sorted(series.items()):
            buckets = [(str(b), values.get(str(b), 0.0)) for b in BUCKETS]
            buckets.append(("+Inf", values.get("+Inf", 0.0)))
            latency.add_metric([method, route], buckets, values.get("sum", 0.0))
        yield latency


def scrape(settings: Settings, redis: Redis) -> bytes:
    """One scrape, in the text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SystemCollector(settings, redis))
    return generate_latest(registry)
