"""Every Redis key the API and the worker share: the whole schema, in one place.

Every job, whatever its kind (a tokenizer, a training run, an evaluation), has the same life
(queued -> running -> completed | failed | cancelled, jobs/ownership.py) and the same keys,
spelled per kind by a `KeySchema`; `{id}` stands for the job's id, `{status}` for a status.
Records expire `RECORD_TTL_SEC` after their last write unless noted. DESIGN.md links here.

| key (runs; others below)         | type                        | TTL       | written by         |
| -------------------------------- | --------------------------- | --------- | ------------------ |
| `runs:index`                     | zset (score = created ts)   | none      | API                |
| `runs:by-status:{status}`        | zset (score = when set)     | none      | API, worker        |
| `runs:meta:{id}`                 | string (RecordMeta)         | 30 d      | API                |
| `runs:status:{id}`               | string (Status)             | 30 d      | API, worker        |
| `runs:msg:{id}`                  | string                      | 30 d      | API, worker        |
| `runs:error:{id}`                | string (ErrorInfo)          | 30 d      | worker, reaper     |
| `runs:hb:{id}`                   | string (unix ts)            | 30 d      | owning worker      |
| `runs:{id}:cancelled`            | string "1"                  | 30 d      | API                |
| `runs:progress:{id}`             | string (kind's progress)    | 30 d      | owning worker      |
| `runs:artifact:{id}:file_id`     | string (Data Bank id)       | 30 d      | owning worker      |
| `runs:lease:{id}`                | string (owner token)        | lease TTL | owning worker      |
| `runs:epoch:{id}`                | int (fencing epoch)         | 30 d      | worker, reaper     |
| `runs:attempts:{id}`             | int (failed attempts)       | 30 d      | worker, reaper     |
| `runs:started:{id}`              | string "1" (`started` sent) | 30 d      | owning worker      |
| `runs:job:{id}`                  | string (current RQ job id)  | 30 d      | API, worker        |
| `runs:payload:{id}`              | string (the job's payload)  | 30 d      | API                |
| `runs:claim:{id}`                | string (worker)             | 30 s      | reaper             |
| `trainer:runs:delayed`           | zset (score = due ts)       | none      | worker, reaper     |
| `runs:logs:{id}`                 | stream (`line`), any kind   | 30 d      | worker             |
| `runs:metrics:{id}`              | list (MetricPoint)          | 30 d      | owning worker      |
| `runs:checkpoints:{id}`          | string (CheckpointIndex)    | 30 d      | owning worker      |
| `runs:eval:{id}`                 | string (latest eval's id)   | 30 d      | API, owning worker |
| `trainer:workers:{queue}`        | zset (score = seen ts)      | none      | worker             |
| `trainer:workers:{queue}:memory` | hash (worker -> bytes)      | none      | worker             |
| `corpora:index`                  | zset (score = ts)           | none      | API                |
| `corpora:info`                   | hash (id -> CorpusInfo)     | none      | API                |
| `trainer:events` (setting)       | pub/sub channel             | -         | worker             |
| `rq:*`                           | RQ's own (dispatch only)    | RQ's      | RQ                 |

Tokenizers spell the same keys `tokenizer:{id}:status`, `tokenizer:{id}:lease`... and
`tokenizers:index`, `tokenizers:by-status:{status}`, `trainer:tokenizers:delayed`;
evaluations `eval:{id}:...`, `evals:...`, `trainer:evals:delayed` (`_schema` below).
Log lines of every kind share the `runs:logs:` stream namespace: ids never collide (`tok-`,
`run-`, `eval-`) and one reader serves them all. An evaluation's status is its own record;
`runs:eval:{id}` only points at the run's latest one.

Every write the owner of a job makes (status, progress, metrics, checkpoints, pointer,
events) is fenced: it happens only while the job's lease still holds the owner's token
(store/fencing.py), so a worker that lost its job cannot overwrite the new owner's state.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

# Records and their satellites live this long after their last write (30 days).
RECORD_TTL_SEC = 30 * 24 * 3600
# The loss curve of a run keeps at most this many points (a run logs one every few steps).
METRICS_MAX_POINTS = 50_000


class JobKind(StrEnum):
    """The kinds of job; each has its record keys, payload and job function."""

    TOKENIZER = "tokenizer"
    RUN = "run"
    EVAL = "eval"


class KeySchema(BaseModel):
    """Key names for one kind of job; `{id}` is replaced by the job's id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: JobKind
    # The record the API shows.
    status: str
    message: str
    heartbeat: str
    cancelled: str
    file_id: str
    meta: str
    progress: str
    error: str
    # Ownership and retries (jobs/ownership.py, jobs/reaper.py).
    lease: str
    epoch: str
    attempts: str
    started: str
    job: str
    payload: str
    claim: str
    # Shared by all jobs of the kind.
    index: str
    by_status: str  # `{status}` is replaced by a status
    delayed: str

    def key(self, template: str, record_id: str) -> str:
        return template.replace("{id}", record_id)

    def status_index(self, status: str) -> str:
        return self.by_status.replace("{status}", status)


RUN_KEYS = KeySchema(
    kind=JobKind.RUN,
    status="runs:status:{id}",
    message="runs:msg:{id}",
    heartbeat="runs:hb:{id}",
    cancelled="runs:{id}:cancelled",
    file_id="runs:artifact:{id}:file_id",
    meta="runs:meta:{id}",
    progress="runs:progress:{id}",
    error="runs:error:{id}",
    lease="runs:lease:{id}",
    epoch="runs:epoch:{id}",
    attempts="runs:attempts:{id}",
    started="runs:started:{id}",
    job="runs:job:{id}",
    payload="runs:payload:{id}",
    claim="runs:claim:{id}",
    index="runs:index",
    by_status="runs:by-status:{status}",
    delayed="trainer:runs:delayed",
)


def _schema(kind: JobKind, prefix: str, plural: str) -> KeySchema:
    """The uniform spelling of the kinds that came after runs: `{prefix}:{id}:{field}`."""
    fields = {
        "status": "status",
        "message": "msg",
        "heartbeat": "hb",
        "cancelled": "cancelled",
        "file_id": "file_id",
        "meta": "meta",
        "progress": "progress",
        "error": "error",
        "lease": "lease",
        "epoch": "epoch",
        "attempts": "attempts",
        "started": "started",
        "job": "job",
        "payload": "payload",
        "claim": "claim",
    }
    return KeySchema(
        kind=kind,
        **{name: f"{prefix}:{{id}}:{suffix}" for name, suffix in fields.items()},
        index=f"{plural}:index",
        by_status=f"{plural}:by-status:{{status}}",
        delayed=f"trainer:{plural}:delayed",
    )


TOKENIZER_KEYS = _schema(JobKind.TOKENIZER, "tokenizer", "tokenizers")
EVAL_KEYS = _schema(JobKind.EVAL, "eval", "evals")
JOB_KEYS: dict[JobKind, KeySchema] = {
    JobKind.RUN: RUN_KEYS,
    JobKind.TOKENIZER: TOKENIZER_KEYS,
    JobKind.EVAL: EVAL_KEYS,
}


def logs_key(record_id: str) -> str:
    """A job's log lines (any kind's); stream ids are the SSE event ids."""
    return f"runs:logs:{record_id}"


def metrics_key(run_id: str) -> str:
    """A run's loss curve: one JSON `MetricPoint` per element, oldest first."""
    return f"runs:metrics:{run_id}"


def checkpoints_key(run_id: str) -> str:
    """A run's checkpoint index in Data Bank (store/checkpoints.py)."""
    return f"runs:checkpoints:{run_id}"


def latest_eval_key(run_id: str) -> str:
    """The id of the run's latest evaluation (an `eval` job's record, or its final one)."""
    return f"runs:eval:{run_id}"


def workers_key(queue: str) -> str:
    """Live workers of a queue: member = worker name, score = when it last said so."""
    return f"trainer:workers:{queue}"


def worker_memory_key(queue: str) -> str:
    """The memory each worker of a queue may use (field = worker name, value = bytes): its
    cgroup limit, else its MemTotal. Read for the workers `workers_key` shows alive."""
    return f"trainer:workers:{queue}:memory"


# Corpora uploaded through the API (`POST /corpora`, the dashboard's picker): member / field
# = the Data Bank file_id, score = when it was last uploaded; the hash holds each one's JSON
# `CorpusInfo` (store/corpora.py). Corpora uploaded to Data Bank directly are not listed.
CORPORA_INDEX = "corpora:index"
CORPORA_INFO = "corpora:info"
