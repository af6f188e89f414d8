"""`modeltrainer-rq-worker`: the process that runs tokenizer, training and evaluation jobs.

Process model: this parent process imports the heavy libraries once, then RQ forks a
short-lived child (the "horse") per job, which inherits them already imported, so a job
starts in milliseconds instead of paying torch's import again.

SIGTERM (a redeploy): the parent stops taking jobs and forwards SIGRTMIN to the horse; the
horse sets its context's `stop_requested`, the job stops at its next safe point (a training
step, a tokenizer's chunk, a phase of an evaluation), a run writes and uploads a checkpoint,
and the job is handed back to the queue (not counted as an attempt: a job survives any
number of redeploys); the next worker takes it (a run resumes from the checkpoint). A second
SIGTERM (or the platform's SIGKILL after its grace period) kills the horse at once: its lease
lapses and a reaper queues the job again (a run from its last checkpoint).

Besides RQ's loop, the parent runs the reaper (jobs/reaper.py) every `reaper_interval_sec`,
idle or busy, and rides out Redis outages instead of exiting: RQ retries its own dequeue;
our overrides below keep heartbeats and maintenance from ending the worker.

Only our jobs run: a job found on a queue that is not one of this project's job functions,
written as `jobs/queue.py` writes them (JSON, one payload, no callbacks), is refused in the
parent before any fork: logged (`worker_job_refused`), marked failed in RQ, never run, and
the worker takes the next job. Redis is storage, not a channel for code.

A GPU worker (`APP__WORKER_DEVICE=cuda`) serves the GPU queue first, then the ordinary one
(jobs/queue.py `worker_queue_names`). It checks for a CUDA device before it takes any job and
refuses to start without one: a GPU worker that trained on its CPU would make `cuda` runs
quietly slow. The check uses NVML, which does not initialise CUDA in this parent process: a
CUDA context made before RQ forks the job process would be unusable in the child.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection
from types import FrameType

from redis.client import Pipeline
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.executions import Execution
from rq.job import Job, JobStatus

from model_trainer.connections import RedisUse, redis_client
from model_trainer.jobs.context import WorkerContext, set_worker_context, worker_context
from model_trainer.jobs.queue import (
    JOB_FUNCTIONS,
    SERIALIZER,
    job_refusal,
    rq_queue,
    worker_queue_names,
)
from model_trainer.jobs.reaper import Reaper
from model_trainer.settings import Settings, load_settings
from service_common.jsonlog import log_fields, setup_logging

log = logging.getLogger("model_trainer.jobs.worker")

# Imported once in the parent so every forked job finds them loaded.
HEAVY_MODULES = (
    "numpy",
    "torch",
    "transformers",
    "tokenizers",
    "sentencepiece",
    "safetensors.torch",
    "model_trainer.jobs.tokenizer_training",
    "model_trainer.jobs.model_training",
    "model_trainer.jobs.model_evaluation",
)


def preload_heavy_modules(modules: tuple[str, ...] = HEAVY_MODULES) -> float:
    started = time.perf_counter()
    for name in modules:
        importlib.import_module(name)
    return time.perf_counter() - started


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    worker_context().stop_requested.set()


class GracefulWorker(Worker):
    """An RQ worker whose job process stops at a safe point on SIGTERM instead of dying.

    It also shortens RQ's abandoned-job detection: a job's heartbeat lives for the monitoring
    interval plus `abandoned_grace_sec` (RQ adds a fixed 60 s), so RQ's registries let go of
    a killed worker's job soon. That is RQ's bookkeeping only: the job itself comes back
    through its lease and the reapers (jobs/reaper.py), whatever RQ's registries say.
    """

    abandoned_grace_sec = 20
    reaper: Reaper | None = None
    # The dotted paths this worker runs; anything else found on its queues is refused.
    job_functions: Collection[str] = frozenset(JOB_FUNCTIONS.values())

    @property
    def dequeue_timeout(self) -> int:
        # RQ blocks an idle worker in BLPOP for worker_ttl - 15 s (405 s) and sweeps for
        # abandoned jobs only between two BLPOPs. Wake up every maintenance (and reaper)
        # interval instead, so an idle worker finds a dead worker's job within one interval.
        wake = float(self.maintenance_interval)
        if self.reaper is not None:
            wake = min(wake, self.reaper.interval)
        return max(1, min(super().dequeue_timeout, int(wake)))

    def execute_job(self, job: Job, queue: Queue) -> None:
        reason = job_refusal(job, self.job_functions, self.connection)
        if reason is None:
            super().execute_job(job, queue)
            return
        log.error(
            "refused job %s from queue %s, not run: %s",
            job.id,
            queue.name,
            reason,
            extra=log_fields("worker_job_refused", rq_job_id=job.id, queue=queue.name),
        )
        # Failed in RQ's eyes, so nothing waits on it; out of the queue's intermediate list
        # (where RQ parks a dequeued job until it starts), so nothing dispatches it again.
        with self.connection.pipeline() as pipeline:
            pipeline.lrem(queue.intermediate_queue_key, 1, job.id)
            job.set_status(JobStatus.FAILED, pipeline=pipeline)
            queue.failed_job_registry.add(
                job, ttl=job.failure_ttl, exc_string=f"refused: {reason}", pipeline=pipeline
            )
            pipeline.execute()

    def _reap(self) -> None:
        if self.reaper is not None:
            self.reaper.tick()

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        super().heartbeat(timeout, pipeline)
        if pipeline is None:
            self._reap()  # the idle loop beats once per dequeue timeout

    def maintain_heartbeats(self, job: Job, execution: Execution) -> None:
        # Called every job_monitoring_interval while a job runs. A Redis outage must not end
        # the worker (RQ lets the error escape and the worker exits, orphaning its job).
        try:
            super().maintain_heartbeats(job, execution)
        except RedisError as exc:
            log.warning(
                "Redis unavailable; job heartbeat skipped: %s",
                exc,
                extra=log_fields("worker_redis_unavailable"),
            )
        self._reap()

    def run_maintenance_tasks(self) -> None:
        try:
            Worker.run_maintenance_tasks(self)
        except RedisError as exc:
            log.warning(
                "Redis unavailable; maintenance skipped: %s",
                exc,
                extra=log_fields("worker_redis_unavailable"),
            )

    def check_for_suspension(self, burst: bool) -> None:
        try:
            super().check_for_suspension(burst)
        except RedisError as exc:
            log.warning(
                "Redis unavailable; suspension check skipped: %s",
                exc,
                extra=log_fields("worker_redis_unavailable"),
            )

    def register_death(self) -> None:
        if self.reaper is not None:
            self.reaper.leave()
        Worker.register_death(self)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        interval = int(self.job_monitoring_interval)
        if job.timeout and job.timeout > 0:
            remaining = max(job.timeout - working_time, 1)
            return int(min(remaining, interval)) + self.abandoned_grace_sec
        return interval + self.abandoned_grace_sec

    def setup_work_horse_signals(self) -> None:
        signal.signal(signal.SIGRTMIN, _on_stop_signal)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def handle_warm_shutdown_request(self) -> None:
        if self.horse_pid:
            log.info(
                "warm shutdown: asking the running job to stop at a safe point",
                extra=log_fields("worker_warm_shutdown"),
            )
            self.kill_horse(sig=signal.SIGRTMIN)
        else:
            log.info("warm shutdown: no job running", extra=log_fields("worker_warm_shutdown"))


def cuda_missing_reason(settings: Settings) -> str | None:
    """Why this worker, configured for CUDA, cannot serve the GPU queue; None when it can
    (or is a CPU worker). Reads nothing but torch's view of the machine."""
    if settings.app.worker_device != "cuda":
        return None
    # Fork-safe: answer from NVML, without creating a CUDA context here.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    if torch.cuda.is_available():
        return None
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (
        f"APP__WORKER_DEVICE=cuda but torch {torch.__version__} ({build}) sees no CUDA "
        "device: install the CUDA wheel of torch and check the NVIDIA driver "
        "(nvidia-smi), or start this worker with APP__WORKER_DEVICE=cpu"
    )


def start_warm_up(settings: Settings) -> subprocess.Popen[bytes] | None:
    """Start the warm-up in its own process when presets are configured; None otherwise.

    Its own process (jobs/compile_warm.py), not a thread of the worker: RQ forks each job
    from the worker, and a fork taken while another thread runs torch could inherit its
    locks held.
    """
    if not settings.app.compile_warm_presets:
        return None
    process = subprocess.Popen([sys.executable, "-m", "model_trainer.jobs.compile_warm"])
    log.info(
        "warming the compile cache for %s in process %d",
        ", ".join(settings.app.compile_warm_presets),
        process.pid,
        extra=log_fields("compile_warm_started", pid=process.pid),
    )
    return process


def main(job_functions: Collection[str] = frozenset(JOB_FUNCTIONS.values())) -> int:
    """Run the worker; it runs the jobs `job_functions` name (this project's) and no other."""
    settings = load_settings()
    setup_logging(settings.logging.level, service="worker")
    redis = redis_client(settings.redis_url, RedisUse.WORKER)
    try:
        redis.ping()
    except RedisError as exc:
        log.error(
            "cannot reach Redis: %s",
            exc,
            extra=log_fields("worker_redis_unreachable", error_code="SERVICE_UNAVAILABLE"),
        )
        return 1
    if settings.app.worker_nice:
        os.nice(settings.app.worker_nice)  # children (job processes) inherit it
    if settings.app.threads:
        # OpenMP and MKL read these when torch first spins up its pools (in the job process).
        os.environ.setdefault("OMP_NUM_THREADS", str(settings.app.threads))
        os.environ.setdefault("MKL_NUM_THREADS", str(settings.app.threads))
    missing = cuda_missing_reason(settings)
    if missing is not None:
        log.error(missing, extra=log_fields("worker_no_cuda", error_code="CONFIG_INVALID"))
        return 1
    preload_sec = preload_heavy_modules()
    name = f"modeltrainer-{socket.gethostname()}-{os.getpid()}"
    # Built once here; each forked job inherits it (redis-py reconnects after a fork).
    ctx = WorkerContext.from_settings(settings, worker_name=name)
    set_worker_context(ctx)
    queues = [rq_queue(q, redis) for q in worker_queue_names(settings)]
    worker = GracefulWorker(
        queues,
        connection=redis,
        serializer=SERIALIZER,
        name=name,
        job_monitoring_interval=settings.rq.job_monitoring_interval_sec,
        maintenance_interval=settings.rq.maintenance_interval_sec,
    )
    worker.abandoned_grace_sec = settings.rq.abandoned_grace_sec
    worker.job_functions = frozenset(job_functions)
    # A worker configured with its memory reports that; otherwise what its machine has.
    worker.reaper = Reaper(ctx, memory_bytes=settings.admission.worker_memory_bytes)
    worker.reaper.tick(force=True)  # a worker that starts finds what died before it
    start_warm_up(settings)  # in the background: the worker is ready without waiting for it
    log.info(
        "worker %s (%s) listening on %s (libraries preloaded in %.1f s)",
        name,
        settings.app.worker_device,
        ", ".join(q.name for q in queues),
        preload_sec,
        extra=log_fields("worker_started", device=settings.app.worker_device),
    )
    worker.work(with_scheduler=True, logging_level=settings.logging.level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
