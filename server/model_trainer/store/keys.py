"""Every Redis key the API and the worker share: the whole schema, in one place.

Runs and tokenizers have the same life (queued -> running -> completed | failed | cancelled),
so both are spelled by a `KeySchema`; `{id}` stands for the record's id. Records expire
`RECORD_TTL_SEC` after their last write unless noted.

| key                           | type                  | TTL               | written by   |
| ----------------------------- | --------------------- | ----------------- | ------------ |
| `runs:index`                  | zset (score = ts)     | none              | API          |
| `runs:meta:{id}`              | string (RecordMeta)   | 30 d              | API          |
| `runs:status:{id}`            | string (Status)       | 30 d              | API, worker  |
| `runs:msg:{id}`               | string                | 30 d              | API, worker  |
| `runs:hb:{id}`                | string (unix ts)      | heartbeat TTL     | worker       |
| `runs:{id}:cancelled`         | string "1"            | 30 d              | API          |
| `runs:progress:{id}`          | string (RunProgress)  | 30 d              | worker       |
| `runs:artifact:{id}:file_id`  | string (Data Bank id) | 30 d              | worker       |
| `runs:eval:{id}`              | string (EvalInfo)     | 30 d              | API, worker  |
| `runs:logs:{id}`              | stream (`line`)       | 30 d after a job  | worker       |
| `runs:metrics:{id}`           | list (MetricPoint)    | 30 d              | worker       |
| `runs:error:{id}`             | string (ErrorInfo)    | 30 d              | worker       |
| `runs:lease:{id}`             | string (owner token)  | lease TTL         | owning worker |
| `runs:epoch:{id}`             | int (fencing epoch)   | 30 d              | worker, reaper |
| `runs:attempts:{id}`          | int (failed attempts) | 30 d              | worker, reaper |
| `runs:checkpoints:{id}`       | string (CheckpointIndex) | 30 d           | owning worker |
| `runs:started:{id}`           | string "1"            | 30 d              | worker       |
| `runs:job:{id}`               | string (RQ job id)    | 30 d              | API, worker  |
| `runs:payload:{id}`           | string (TrainJob)     | 30 d              | API          |
| `runs:claim:{id}`             | string (worker)       | 30 s              | reaper       |
| `trainer:runs:delayed`        | zset (score = due ts) | none              | worker       |
| `trainer:workers:{queue}`     | zset (score = seen ts)| none              | worker       |
| `trainer:workers:{queue}:memory` | hash (worker -> bytes) | none         | worker       |
| `tokenizers:index`            | zset                  | none              | API          |
| `tokenizer:{id}:meta`         | string (RecordMeta)   | 30 d              | API          |
| `tokenizer:{id}:status`       | string (Status)       | 30 d              | API, worker  |
| `tokenizer:{id}:msg`          | string                | 30 d              | worker       |
| `tokenizer:{id}:hb`           | string (unix ts)      | heartbeat TTL     | worker       |
| `tokenizer:{id}:cancelled`    | string "1"            | 30 d              | API          |
| `tokenizer:{id}:progress`     | string (TokenizerSummary) | 30 d          | worker       |
| `tokenizer:{id}:file_id`      | string (Data Bank id) | 30 d              | worker       |
| `tokenizer:{id}:error`        | string (ErrorInfo)    | 30 d              | worker       |
| `runs:logs:{tokenizer id}`    | stream                | 30 d after a job  | worker       |
| `corpora:index`               | zset (score = ts)     | none              | API          |
| `corpora:info`                | hash (id -> CorpusInfo) | none            | API          |
| `trainer:events` (setting)    | pub/sub channel       | -                 | worker       |
| `rq:*`                        | RQ's own              | RQ's              | RQ           |

A tokenizer job's log lines share the `runs:logs:` stream namespace: ids never collide
(`tok-...` vs `run-...`) and one reader serves both. DESIGN.md repeats this table; keep the
two in step.

Every write the owner of a run makes (status, progress, metrics, checkpoints, pointer,
events) is fenced: it happens only while `runs:lease:{id}` still holds the owner's token
(store/fencing.py), so a worker that lost its run cannot overwrite the new owner's state.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# Records and their satellites live this long after their last write (30 days).
RECORD_TTL_SEC = 30 * 24 * 3600
# The loss curve of a run keeps at most this many points (a run logs one every few steps).
METRICS_MAX_POINTS = 50_000


class KeySchema(BaseModel):
    """Key names for one kind of record; `{id}` is replaced by the record's id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: str
    message: str
    heartbeat: str
    cancelled: str
    file_id: str
    meta: str
    progress: str
    eval: str
    error: str
    index: str

    def key(self, template: str, record_id: str) -> str:
        return template.replace("{id}", record_id)


RUN_KEYS = KeySchema(
    status="runs:status:{id}",
    message="runs:msg:{id}",
    heartbeat="runs:hb:{id}",
    cancelled="runs:{id}:cancelled",
    file_id="runs:artifact:{id}:file_id",
    meta="runs:meta:{id}",
    progress="runs:progress:{id}",
    eval="runs:eval:{id}",
    error="runs:error:{id}",
    index="runs:index",
)

TOKENIZER_KEYS = KeySchema(
    status="tokenizer:{id}:status",
    message="tokenizer:{id}:msg",
    heartbeat="tokenizer:{id}:hb",
    cancelled="tokenizer:{id}:cancelled",
    file_id="tokenizer:{id}:file_id",
    meta="tokenizer:{id}:meta",
    progress="tokenizer:{id}:progress",
    eval="tokenizer:{id}:eval",
    error="tokenizer:{id}:error",
    index="tokenizers:index",
)


def logs_key(record_id: str) -> str:
    """A job's log lines (a run's or a tokenizer's); stream ids are the SSE event ids."""
    return f"runs:logs:{record_id}"


def metrics_key(run_id: str) -> str:
    """A run's loss curve: one JSON `MetricPoint` per element, oldest first."""
    return f"runs:metrics:{run_id}"


class RunKeys:
    """The keys only training runs have: ownership, attempts, checkpoints (see the table)."""

    @staticmethod
    def lease(run_id: str) -> str:
        return f"runs:lease:{run_id}"

    @staticmethod
    def epoch(run_id: str) -> str:
        return f"runs:epoch:{run_id}"

    @staticmethod
    def attempts(run_id: str) -> str:
        return f"runs:attempts:{run_id}"

    @staticmethod
    def checkpoints(run_id: str) -> str:
        return f"runs:checkpoints:{run_id}"

    @staticmethod
    def started(run_id: str) -> str:
        return f"runs:started:{run_id}"

    @staticmethod
    def job(run_id: str) -> str:
        return f"runs:job:{run_id}"

    @staticmethod
    def payload(run_id: str) -> str:
        return f"runs:payload:{run_id}"

    @staticmethod
    def claim(run_id: str) -> str:
        return f"runs:claim:{run_id}"


# Runs waiting out a retry delay: member = run id, score = when to enqueue it again.
DELAYED_RUNS = "trainer:runs:delayed"


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
