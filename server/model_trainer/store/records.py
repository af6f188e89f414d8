"""Job records: typed, written by the API and the worker, read in one round trip.

Every kind of job has the same life (queued -> running -> completed | failed | cancelled),
so one `StatusStore` serves them all, parameterised by the kind's `KeySchema` (keys.py) and
the model of what its job reports as progress. `record()` and `records()` read everything
the API shows of a record with one HMGET of its hash, and hand back a typed `Record`.

Each status write also moves the job between its kind's status indexes
(`by-status:{status}`), so finding the running or queued jobs costs what there is of them,
not what history holds. A job created for a principal (an API key) is also in that
principal's index (`by-owner:{name}`): a `user` key's list, and its quota counts, read
that index (intersected with a status index, Redis walking the smaller), never everyone's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue
from redis import Redis
from redis.exceptions import WatchError

from model_trainer.store.fencing import Command, DirectWriter, Writer
from model_trainer.store.keys import (
    EVAL_KEYS,
    RECORD_TTL_SEC,
    RUN_KEYS,
    SWEEP_KEYS,
    TOKENIZER_KEYS,
    WEBHOOKS_ENDED,
    JobField,
    JobKind,
    KeySchema,
    job_key,
)
from model_trainer.store.labels import Labels, name_member, name_prefix_range

TTL = str(RECORD_TTL_SEC)


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # A run its user paused: checkpointed, holding no worker and no queue place, until
    # `POST /runs/{id}/resume` queues it again (not terminal, not an attempt).
    PAUSED = "paused"

    @property
    def terminal(self) -> bool:
        return self in (Status.COMPLETED, Status.FAILED, Status.CANCELLED)


class _Stored(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecordMeta(_Stored):
    """Written once at submit: when, the validated request, and who asked (the principal;
    None for what the worker creates itself, a run's final evaluation)."""

    created_at: float
    request: dict[str, JsonValue]
    owner: str | None = None


class RunExecution(_Stored):
    """How a run executes its steps (training/execution.py), as its worker chose at start."""

    precision: str  # fp32 or bf16
    precision_reason: str
    compiled: bool
    compile_reason: str
    # Seconds of the budget this session spent choosing and compiling, before training.
    setup_seconds: float
    eager_ms: float | None = None  # a forward + backward step, when measured
    compiled_ms: float | None = None
    compile_seconds: float | None = None
    compile_cache_hits: int | None = None


class RunProgress(_Stored):
    """A run's progress as the worker last reported it."""

    step: int = 0
    total_steps: int | None = None
    epoch: float = 0.0
    train_loss: float | None = None
    val_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_sec: float | None = None
    percent: float = 0.0
    eta_seconds: float | None = None
    started_at: float | None = None
    updated_at: float | None = None
    resumed_from_step: int | None = None
    execution: RunExecution | None = None


class TokenizerSummary(_Stored):
    """What a finished tokenizer job reports: holdout stats, timings, vocabulary size."""

    stats: dict[str, JsonValue] | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    vocab_size: int


class SampleText(_Stored):
    prompt: str
    completion: str


class BaseScore(_Stored):
    """A fine-tuning run's base model on the same split, before training."""

    loss: float
    perplexity: float
    bits_per_char: float


class EvalResult(_Stored):
    """What a finished evaluation measured (an `eval` record's progress)."""

    split: str | None = None
    loss: float | None = None
    perplexity: float | None = None
    bits_per_char: float | None = None
    tokens_per_char: float | None = None
    num_tokens: int | None = None
    num_chars: int | None = None
    samples: list[SampleText] | None = None
    # A fine-tuning run's final evaluation: the base model's figures, the "before".
    base: BaseScore | None = None


class RungResult(_Stored):
    """A trial's validation loss when it reached a rung of successive halving, and what the
    sweep decided (sweeps/asha.py): `cutoff` is the quantile of the earlier results at that
    rung that it had to beat (None for the first one there)."""

    rung: int
    resource: float  # the rung's steps or seconds
    value: float
    cutoff: float | None
    stopped: bool


class TrialState(_Stored):
    """One trial of a sweep as its driver last saw it (the run's record is the truth)."""

    index: int
    run_id: str
    params: dict[str, JsonValue]
    status: str = "planned"  # planned, or the run's status
    steps: int = 0
    val_loss: float | None = None
    bits_per_char: float | None = None  # the run's final evaluation
    train_seconds: float | None = None
    rungs: list[RungResult] = Field(default_factory=list)
    stopped_at_rung: int | None = None  # stopped by successive halving at this rung


class SweepProgress(_Stored):
    """A sweep's trials, its leaderboard (run ids, best first) and its best run."""

    trials: list[TrialState] = Field(default_factory=list)
    leaderboard: list[str] = Field(default_factory=list)
    best_run_id: str | None = None
    created: int = 0
    finished: int = 0
    stopped: int = 0
    # Seconds of training the stopped trials did not spend (budget minus where they stopped),
    # for a time budget; steps not trained for a steps budget.
    saved: float = 0.0
    updated_at: float | None = None


ErrorKind = Literal["user", "transient", "fatal"]


class ErrorInfo(_Stored):
    """Why a job failed (or why its last attempt did): the failure classes of jobs/failures.py.

    `user`: bad input or hyper-parameters, never retried. `transient`: a remote (Data Bank,
    Redis, the network) was unavailable, retried with backoff. `fatal`: a bug, a corrupt
    checkpoint, out of memory, a worker dying on every attempt: not retried.
    """

    kind: ErrorKind
    code: str
    message: str


class EvalInfo(EvalResult):
    """The latest evaluation of a run, its status and what it measured, as the API shows it."""

    run_id: str
    eval_id: str
    status: Status
    message: str | None = None
    error: ErrorInfo | None = None
    corpus_file_id: str | None = None


ProgressT = TypeVar("ProgressT", RunProgress, TokenizerSummary, EvalResult, SweepProgress)


class Record(BaseModel, Generic[ProgressT]):
    """Everything the API shows of one job, read in one round trip."""

    model_config = ConfigDict(extra="forbid")

    id: str
    status: Status
    message: str | None
    meta: RecordMeta | None
    last_heartbeat_ts: float | None
    progress: ProgressT | None
    file_id: str | None
    error: ErrorInfo | None = None
    # Failed attempts so far (0 until one fails); the owner and the reapers count them.
    attempts: int = 0


def as_str(value: object) -> str | None:
    """Narrow a Redis reply (bytes, str or None) to `str | None`."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    raise TypeError(f"unexpected Redis reply type {type(value).__name__}")


def status_index_commands(
    keys: KeySchema, record_id: str, status: Status, now: float
) -> tuple[Command, ...]:
    """Move `record_id` into the index of `status` (and out of every other one)."""
    commands: list[Command] = [
        ("ZREM", keys.status_index(other.value), record_id) for other in Status if other != status
    ]
    commands.append(("ZADD", keys.status_index(status.value), repr(now), record_id))
    return tuple(commands)


def hset(job_id: str, *pairs: tuple[JobField, str]) -> tuple[Command, Command]:
    """Set fields of a job's record, and give the record its full TTL again."""
    key = job_key(job_id)
    values = [part for name, value in pairs for part in (name.value, value)]
    return ("HSET", key, *values), ("EXPIRE", key, TTL)


def hdel(job_id: str, *fields: JobField) -> Command:
    return ("HDEL", job_key(job_id), *(f.value for f in fields))


# What `record()` reads of the hash, in `_record`'s order.
_READ = (
    JobField.STATUS,
    JobField.MESSAGE,
    JobField.META,
    JobField.HEARTBEAT,
    JobField.PROGRESS,
    JobField.FILE_ID,
    JobField.ERROR,
    JobField.ATTEMPTS,
)


class StatusStore(Generic[ProgressT]):
    def __init__(
        self,
        redis: Redis,
        keys: KeySchema,
        progress_model: type[ProgressT],
        clock: Callable[[], float] = time.time,
        writer: Writer | None = None,
    ) -> None:
        self._r = redis
        self.keys = keys
        self._progress_model: type[ProgressT] = progress_model
        self._clock = clock
        self._writer: Writer = writer or DirectWriter(redis)

    def with_writer(self, writer: Writer) -> StatusStore[ProgressT]:
        """The same store whose writes go through `writer` (an owner's fenced writer)."""
        return StatusStore(self._r, self.keys, self._progress_model, self._clock, writer)

    # --- typed reads: one round trip ------------------------------------------------
    def record(self, record_id: str, held_by: str | None = None) -> Record[ProgressT] | None:
        """The record, or None if there is no such id (one HMGET). With `held_by`, None also
        when that principal does not hold it (it is not in its index): in one round trip,
        and reading exactly like an unknown id."""
        fields = [f.value for f in _READ]
        if held_by is None:
            values = self._r.hmget(job_key(record_id), fields)
            return self._record(record_id, [as_str(v) for v in values])
        pipe = self._r.pipeline(transaction=False)
        pipe.zscore(self.keys.owner_index(held_by), record_id)
        pipe.hmget(job_key(record_id), fields)
        held, values = pipe.execute()
        if held is None:
            return None
        return self._record(record_id, [as_str(v) for v in values])

    def records(self, ids: Sequence[str]) -> list[Record[ProgressT] | None]:
        """The records of `ids`, in order (None for an unknown id): one HMGET each, in one
        round trip."""
        if not ids:
            return []
        pipe = self._r.pipeline(transaction=False)
        for record_id in ids:
            pipe.hmget(job_key(record_id), [f.value for f in _READ])
        replies = pipe.execute()
        return [
            self._record(i, [as_str(v) for v in values])
            for i, values in zip(ids, replies, strict=True)
        ]

    def _record(self, record_id: str, values: list[str | None]) -> Record[ProgressT] | None:
        status, message, meta, heartbeat, progress, file_id, error, attempts = values
        if status is None:
            return None
        return Record(
            id=record_id,
            status=Status(status),
            message=message,
            meta=RecordMeta.model_validate_json(meta) if meta else None,
            last_heartbeat_ts=float(heartbeat) if heartbeat else None,
            progress=self._progress_model.model_validate_json(progress) if progress else None,
            file_id=file_id,
            error=ErrorInfo.model_validate_json(error) if error else None,
            attempts=int(attempts) if attempts else 0,
        )

    def field(self, record_id: str, field: JobField) -> str | None:
        return as_str(self._r.hget(job_key(record_id), field.value))

    # --- creation and listing -------------------------------------------------------
    def create(self, record_id: str, meta: RecordMeta) -> bool:
        """Register a new record as queued. False if the id already exists (idempotent submit)."""
        key = job_key(record_id)
        if not self._r.hsetnx(key, JobField.META.value, meta.model_dump_json()):
            return False
        DirectWriter(self._r).write(
            [
                *self.status_commands(record_id, Status.QUEUED),
                *self._index_commands(record_id, meta),
            ]
        )
        return True

    def _index_commands(self, record_id: str, meta: RecordMeta) -> tuple[Command, ...]:
        """Into the kind's index, its owner's, and those of its labels (store/labels.py)."""
        now = repr(self._clock())
        commands: list[Command] = [("ZADD", self.keys.index, now, record_id)]
        if meta.owner is not None:
            commands.append(("ZADD", self.keys.owner_index(meta.owner), now, record_id))
        labels = Labels.of(meta.request)
        commands.extend(("ZADD", self.keys.tag_index(t), now, record_id) for t in labels.tags)
        if labels.name is not None:
            commands.append(("ZADD", self.keys.by_name, "0", name_member(labels.name, record_id)))
        return tuple(commands)

    def _unindex_labels(self, record_id: str, meta: RecordMeta | None) -> tuple[Command, ...]:
        """Out of the indexes of the labels `meta` gave (a record re-submitted with others)."""
        labels = Labels.of(meta.request if meta else None)
        commands: list[Command] = [("ZREM", self.keys.tag_index(t), record_id) for t in labels.tags]
        if labels.name is not None:
            commands.append(("ZREM", self.keys.by_name, name_member(labels.name, record_id)))
        return tuple(commands)

    def hold(self, record_id: str, owner: str) -> None:
        """Let `owner` see an existing record too (a tokenizer another principal asked for
        with the same request): it joins `owner`'s index, keeping its place if already there."""
        self._r.zadd(self.keys.owner_index(owner), {record_id: self._clock()}, nx=True)

    def count_held(self, owner: str, status: Status) -> int:
        """How many of `owner`'s records are in `status` (Redis walks the smaller index)."""
        keys = [self.keys.owner_index(owner), self.keys.status_index(status.value)]
        return int(self._r.zintercard(2, keys))

    def reset(self, record_id: str, meta: RecordMeta) -> None:
        """Queue a failed or cancelled record again (a re-submitted request): a new job with
        no trace of the old one's attempts, progress, pointer or heartbeat."""
        old: Record[ProgressT] | None = self.record(record_id)
        DirectWriter(self._r).write(
            [
                *self._unindex_labels(record_id, old.meta if old else None),
                hdel(
                    record_id,
                    JobField.MESSAGE,
                    JobField.CANCEL,
                    JobField.FILE_ID,
                    JobField.PROGRESS,
                    JobField.HEARTBEAT,
                    JobField.ERROR,
                    JobField.ATTEMPTS,
                    JobField.ANNOUNCED,  # the new job announces its start again
                ),
                *hset(record_id, (JobField.META, meta.model_dump_json())),
                *self.status_commands(record_id, Status.QUEUED),
                *self._index_commands(record_id, meta),
            ]
        )

    def list_ids(
        self,
        offset: int,
        limit: int,
        status: Status | None = None,
        owner: str | None = None,
        *,
        tag: str | None = None,
        name_prefix: str | None = None,
    ) -> tuple[list[str], int]:
        """Ids newest first (of one status, of one owner, with a tag, named with a prefix,
        when given), and their total count; two commands in one round trip whatever the
        history holds. Of one owner and one status: the intersection of the two indexes,
        ordered as the status index (when the status was set), which Redis computes walking
        the smaller one. With a tag or a name prefix: what those indexes hold, checked
        against the others in one more round trip, newest created first."""
        if tag is not None or name_prefix is not None:
            return self._labelled_ids(offset, limit, status, owner, tag, name_prefix)
        if owner is not None and status is not None:
            weights = {self.keys.status_index(status.value): 1, self.keys.owner_index(owner): 0}
            scored = [
                (float(pair[1]), as_str(pair[0]))
                for pair in self._r.zinter(weights, withscores=True)
                if isinstance(pair, tuple | list)
            ]
            found = [member for _, member in sorted(scored, reverse=True) if member is not None]
            return found[offset : offset + limit], len(found)
        if owner is not None:
            index = self.keys.owner_index(owner)
        elif status is not None:
            index = self.keys.status_index(status.value)
        else:
            index = self.keys.index
        pipe = self._r.pipeline(transaction=False)
        pipe.zcard(index)
        pipe.zrevrange(index, offset, offset + limit - 1)
        count, raw = pipe.execute()
        ids = [s for s in (as_str(v) for v in raw) if s is not None]
        return ids, int(count)

    def _labelled_ids(
        self,
        offset: int,
        limit: int,
        status: Status | None,
        owner: str | None,
        tag: str | None,
        name_prefix: str | None,
    ) -> tuple[list[str], int]:
        pipe = self._r.pipeline(transaction=False)
        if tag is not None:
            pipe.zrange(self.keys.tag_index(tag), 0, -1)
        if name_prefix is not None:
            low, high = name_prefix_range(name_prefix)
            pipe.zrangebylex(self.keys.by_name, low, high)
        replies = pipe.execute()
        sets: list[set[str]] = []
        if tag is not None:
            sets.append({s for s in (as_str(v) for v in replies.pop(0)) if s})
        if name_prefix is not None:
            members = (as_str(v) for v in replies.pop(0))
            sets.append({m.rsplit("\x00", 1)[-1] for m in members if m})
        candidates = sorted(set.intersection(*sets))
        if not candidates:
            return [], 0
        # One ZMSCORE per index a candidate must be in: created (the kind's), owner, status.
        indexes = [self.keys.index]
        if owner is not None:
            indexes.append(self.keys.owner_index(owner))
        if status is not None:
            indexes.append(self.keys.status_index(status.value))
        pipe = self._r.pipeline(transaction=False)
        for index in indexes:
            pipe.zmscore(index, candidates)
        created, *others = pipe.execute()
        kept = [
            (float(when), record_id)
            for record_id, when, *in_others in zip(candidates, created, *others, strict=True)
            if when is not None and all(score is not None for score in in_others)
        ]
        kept.sort(reverse=True)
        return [record_id for _, record_id in kept[offset : offset + limit]], len(kept)

    def ids_with_status(self, status: Status) -> list[str]:
        """Every id whose status is `status`, newest change first (one command)."""
        raw = self._r.zrevrange(self.keys.status_index(status.value), 0, -1)
        return [s for s in (as_str(v) for v in raw) if s is not None]

    # --- status and message ---------------------------------------------------------
    def set_status(
        self,
        record_id: str,
        status: Status,
        message: str | None = None,
        *,
        error: ErrorInfo | None = None,
        also: tuple[Command, ...] = (),
    ) -> None:
        """Status, message and error in one write, with `also` (more commands) in the same one."""
        self._writer.write(self.status_commands(record_id, status, message, error) + also)

    def status_commands(
        self,
        record_id: str,
        status: Status,
        message: str | None = None,
        error: ErrorInfo | None = None,
    ) -> tuple[Command, ...]:
        fields: list[tuple[JobField, str]] = [(JobField.STATUS, status.value)]
        if message is not None:
            fields.append((JobField.MESSAGE, message))
        commands: list[Command] = []
        if error is not None:
            fields.append((JobField.ERROR, error.model_dump_json()))
        elif status is not Status.FAILED:
            # A job that is going again (or finished) carries no stale error; a queued job
            # waiting out a retry delay keeps it (set with `error=`) so users see why.
            commands.append(hdel(record_id, JobField.ERROR))
        commands.extend(hset(record_id, *fields))
        commands.extend(status_index_commands(self.keys, record_id, status, self._clock()))
        if status.terminal:
            # The job's webhooks go out once it has ended (webhooks/sender.py), whoever
            # ended it: its owner, a reaper, or the API cancelling a queued job.
            marker = f"{self.keys.kind.value}:{record_id}"
            commands.append(("ZADD", WEBHOOKS_ENDED, repr(self._clock()), marker))
        return tuple(commands)

    def transition(
        self,
        record_id: str,
        expected: Status,
        status: Status,
        message: str,
        also: tuple[Command, ...] = (),
    ) -> bool:
        """Move the record from `expected` to `status` (with `also`) in one transaction, only
        if it is still `expected` (a worker may take or end it meanwhile); False if not."""
        key = job_key(record_id)
        with self._r.pipeline() as pipe:
            try:
                pipe.watch(key)
                if as_str(pipe.hget(key, JobField.STATUS.value)) != expected.value:
                    return False
                pipe.multi()
                for command in (*self.status_commands(record_id, status, message), *also):
                    pipe.execute_command(*command)
                pipe.execute()
            except WatchError:
                return False
        return True

    def status(self, record_id: str) -> Status | None:
        raw = self.field(record_id, JobField.STATUS)
        return Status(raw) if raw is not None else None

    # --- liveness -------------------------------------------------------------------
    def heartbeat(self, record_id: str) -> float:
        """When the owner last said it is working on the job (kept after it ends)."""
        now = self._clock()
        self._writer.write(hset(record_id, (JobField.HEARTBEAT, repr(now))))
        return now

    # --- cancellation ---------------------------------------------------------------
    def request_cancel(self, record_id: str, reason: str | None = None) -> None:
        """Ask the job's owner to stop; `reason` becomes its message (else "cancelled by
        request")."""
        DirectWriter(self._r).write(hset(record_id, (JobField.CANCEL, reason or "1")))

    def cancel(self, record_id: str, reason: str | None = None) -> None:
        """Cancel the job: its owner stops at its next safe point; a job nobody holds
        (queued, or a paused run) is cancelled here, unless a worker takes it first (then
        the owner sees the request)."""
        self.request_cancel(record_id, reason)
        for waiting, said in (
            (Status.QUEUED, "cancelled before it started"),
            (Status.PAUSED, "cancelled while paused"),
        ):
            self.transition(record_id, waiting, Status.CANCELLED, reason or said)

    def cancel_reason(self, record_id: str) -> str | None:
        """Why a cancel was asked, when the asker said (a sweep stopping a trial)."""
        reason = self.field(record_id, JobField.CANCEL)
        return reason if reason and reason != "1" else None

    def is_cancelled(self, record_id: str) -> bool:
        return bool(self._r.hexists(job_key(record_id), JobField.CANCEL.value))

    # --- progress and artifact pointer ----------------------------------------------
    def set_progress(self, record_id: str, progress: ProgressT) -> None:
        self._writer.write(self.progress_commands(record_id, progress))

    def progress_commands(self, record_id: str, progress: ProgressT) -> tuple[Command, ...]:
        return hset(record_id, (JobField.PROGRESS, progress.model_dump_json()))

    def progress(self, record_id: str) -> ProgressT | None:
        raw = self.field(record_id, JobField.PROGRESS)
        return self._progress_model.model_validate_json(raw) if raw else None

    def file_id_commands(self, record_id: str, file_id: str) -> tuple[Command, ...]:
        return hset(record_id, (JobField.FILE_ID, file_id))

    def file_id(self, record_id: str) -> str | None:
        return self.field(record_id, JobField.FILE_ID)


# Any kind's store, where only the shared life cycle matters (status, heartbeat, pointer).
AnyStatusStore = (
    StatusStore[RunProgress]
    | StatusStore[TokenizerSummary]
    | StatusStore[EvalResult]
    | StatusStore[SweepProgress]
)
AnyRecord = (
    Record[RunProgress] | Record[TokenizerSummary] | Record[EvalResult] | Record[SweepProgress]
)


class JobStores:
    """Every kind's status store over one Redis connection (the API's and the worker's
    contexts are built on it)."""

    def __init__(self, redis: Redis) -> None:
        self.runs = StatusStore(redis, RUN_KEYS, RunProgress)
        self.tokenizers = StatusStore(redis, TOKENIZER_KEYS, TokenizerSummary)
        self.evals = StatusStore(redis, EVAL_KEYS, EvalResult)
        self.sweeps = StatusStore(redis, SWEEP_KEYS, SweepProgress)

    def store(self, kind: JobKind) -> AnyStatusStore:
        stores: dict[JobKind, AnyStatusStore] = {
            JobKind.RUN: self.runs,
            JobKind.TOKENIZER: self.tokenizers,
            JobKind.EVAL: self.evals,
            JobKind.SWEEP: self.sweeps,
        }
        return stores[kind]
