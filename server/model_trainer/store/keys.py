"""Every Redis key the API and the worker share: the whole schema, in one place.

Every job, whatever its kind (a tokenizer, a training run, an evaluation), has the same life
(queued -> running -> completed | failed | cancelled, jobs/ownership.py) and the same record:
one hash, read with one command and expiring `RECORD_TTL_SEC` after its last write. The keys
of one job share its id as a hash tag (`{id}`), so they live in one cluster slot and a
script that touches them touches one slot. DESIGN.md links here.

| key                              | type                              | TTL   | by             |
| -------------------------------- | --------------------------------- | ----- | -------------- |
| `job:{<id>}`                     | hash, the fields of `JobField`    | 30 d  | API, worker    |
| `job:{<id>}:lease`               | string (`worker#epoch`)           | lease | owning worker  |
| `job:{<id>}:claim`               | string (a reaper re-enqueuing it) | 30 s  | reaper         |
| `job:{<id>}:logs`                | stream (`line`)                   | 30 d  | worker         |
| `job:{<id>}:metrics`             | list (MetricPoint), runs          | 30 d  | owning worker  |
| `{kinds}:index`                  | zset (score = created ts)         | none  | API            |
| `{kinds}:by-status:{status}`     | zset (score = when set)           | none  | API, worker    |
| `{kinds}:by-owner:{principal}`   | zset (score = created ts)         | none  | API            |
| `{kinds}:by-tag:{tag}`           | zset (score = created ts)         | none  | API            |
| `{kinds}:by-name`                | zset (`<name>\0<id>`, lex order)  | none  | API            |
| `trainer:{kinds}:delayed`        | zset (score = due ts)             | none  | worker, reaper |
| `trainer:workers:{queue}`        | zset (score = seen ts)            | none  | worker         |
| `trainer:workers:{queue}:memory` | hash (worker -> bytes)            | none  | worker         |
| `corpora:index`                  | zset (`<principal>/<id>`, ts)     | none  | API            |
| `corpora:info`                   | hash (`<principal>/<id>` -> info) | none  | API            |
| `corpora:by-owner:{principal}`   | zset (id, score = ts)             | none  | API            |
| `corpora:holders:{id}`           | set (principals holding it)       | none  | API            |
| `corpora:bytes`                  | hash (principal -> bytes held)    | none  | API            |
| `models:index`                   | zset (`<principal>/<id>`, ts)     | none  | API            |
| `models:info`                    | hash (`<principal>/<id>` -> info) | none  | API            |
| `models:by-owner:{principal}`    | zset (id, score = ts)             | none  | API            |
| `models:inspected`               | hash (id -> what the tar holds)   | none  | API            |
| `trainer:limits:*`               | the `limits` library's windows    | 1 min | API            |
| `trainer:events` (setting)       | pub/sub channel                   | -     | worker         |
| `job:{<id>}:webhooks`            | hash (endpoint id -> url, secret) | 30 d  | API            |
| `job:{<id>}:deliveries`          | zset (delivery ids, created ts)   | 30 d  | worker         |
| `webhook:{<delivery id>}`        | string (Delivery JSON)            | 30 d  | worker         |
| `trainer:webhooks:ended`         | zset (`<kind>:<id>`, due ts)      | none  | all; API       |
| `trainer:webhooks:due`           | zset (delivery ids, due ts)       | none  | API            |
| `trainer:metrics:*`              | counters behind `GET /metrics`    | none  | API, worker    |
| `rq:*`                           | RQ's own (dispatch only)          | RQ's  | RQ             |

`{kinds}` is `runs`, `tokenizers`, `evals` or `sweeps`; ids never collide across kinds
(`run-`, `tok-`, `eval-`, `swp-`). A sweep's record keeps its plan (`payload`) and its
trials' state and rung results (`progress`); its trials are ordinary runs. An evaluation
logs to its run's stream; `delayed` holds the jobs in backoff.
`by-owner` lists what a principal (an API key's name, api/auth.py) submitted: what a `user`
key may see, and what its quotas count; a tokenizer asked for again by another principal is
in both of their indexes (one request, one tokenizer). A run's final evaluation is reached
through its run only.

Every write the owner of a job makes (its record, metrics, events) is fenced: it happens
only while the job's lease still holds the owner's token (store/fencing.py), so a worker
that lost its job cannot overwrite the new owner's state.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

# Records and their satellites live this long after their last write (30 days).
RECORD_TTL_SEC = 30 * 24 * 3600

# Webhooks (webhooks/): jobs that ended and deliveries due, each claimed by bumping its
# score past now (a sender that dies leaves it to be claimed again).
WEBHOOKS_ENDED = "trainer:webhooks:ended"
WEBHOOKS_DUE = "trainer:webhooks:due"


# Counters behind GET /metrics (api/metrics.py): checkpoint uploads that failed (a string),
# HTTP requests and their latency buckets (hashes, field = label values joined by "|").
CHECKPOINT_UPLOAD_FAILURES = "trainer:metrics:checkpoint_upload_failures"
HTTP_REQUESTS = "trainer:metrics:http_requests"
HTTP_LATENCY = "trainer:metrics:http_latency"


def webhooks_key(job_id: str) -> str:
    return f"job:{{{job_id}}}:webhooks"


def deliveries_key(job_id: str) -> str:
    return f"job:{{{job_id}}}:deliveries"


def delivery_key(delivery_id: str) -> str:
    return f"webhook:{{{delivery_id}}}"


# The loss curve of a run keeps at most this many points (a run logs one every few steps).
METRICS_MAX_POINTS = 50_000


class JobKind(StrEnum):
    """The kinds of job; each has its record's progress model, payload and job function."""

    TOKENIZER = "tokenizer"
    RUN = "run"
    EVAL = "eval"
    SWEEP = "sweep"  # driven by every worker's reaper pass, never dispatched (sweeps/)


# The kinds RQ dispatches to a job process; a sweep is driven in the workers' parents.
DISPATCHED_KINDS = (JobKind.TOKENIZER, JobKind.RUN, JobKind.EVAL)


class JobField(StrEnum):
    """The fields of a job's hash (`job:{<id>}`)."""

    STATUS = "status"  # Status
    MESSAGE = "message"  # for people
    META = "meta"  # RecordMeta: when, and the validated request
    HEARTBEAT = "heartbeat"  # unix ts the owner last said it works on the job
    PROGRESS = "progress"  # the kind's progress model (RunProgress, TokenizerSummary...)
    FILE_ID = "file_id"  # the artifact in Data Bank
    ERROR = "error"  # ErrorInfo: why it failed, or why its last attempt did
    ATTEMPTS = "attempts"  # failed attempts so far
    EPOCH = "epoch"  # fencing epoch: +1 each time the job changes hands
    CANCEL = "cancel"  # "1" (or why) once a cancel was asked
    PAUSE = "pause"  # "1" once a pause was asked (cleared when the run is paused)
    ANNOUNCED = "announced"  # "1" once the job's JobStarted event went out
    EVENT_EPOCHS = "event_epochs"  # a run's total_epochs as its RunConfigured said (set once)
    MLFLOW_RUN = "mlflow_run"  # a run's MLflow run id (jobs/tracking.py)
    PAYLOAD = "payload"  # the job's payload, to dispatch it again
    DISPATCH = "dispatch"  # the current RQ job's id
    EVAL = "eval"  # a run's latest evaluation's id
    CHECKPOINTS = "checkpoints"  # a run's CheckpointIndex


def job_key(job_id: str) -> str:
    return f"job:{{{job_id}}}"


def lease_key(job_id: str) -> str:
    return f"job:{{{job_id}}}:lease"


def claim_key(job_id: str) -> str:
    return f"job:{{{job_id}}}:claim"


def logs_key(job_id: str) -> str:
    """A job's log lines; stream ids are the SSE event ids."""
    return f"job:{{{job_id}}}:logs"


def metrics_key(run_id: str) -> str:
    """A run's loss curve: one JSON `MetricPoint` per element, oldest first."""
    return f"job:{{{run_id}}}:metrics"


class KeySchema(BaseModel):
    """The keys all jobs of one kind share."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: JobKind
    index: str
    by_status: str  # `{status}` is replaced by a status
    by_owner: str  # `{owner}` is replaced by a principal's name
    by_tag: str  # `{tag}` is replaced by a tag (store/labels.py)
    by_name: str  # every named record: `<casefolded name>\0<id>`, read by prefix
    delayed: str

    def status_index(self, status: str) -> str:
        return self.by_status.replace("{status}", status)

    def owner_index(self, owner: str) -> str:
        return self.by_owner.replace("{owner}", owner)

    def tag_index(self, tag: str) -> str:
        return self.by_tag.replace("{tag}", tag)


def _schema(kind: JobKind, plural: str) -> KeySchema:
    return KeySchema(
        kind=kind,
        index=f"{plural}:index",
        by_status=f"{plural}:by-status:{{status}}",
        by_owner=f"{plural}:by-owner:{{owner}}",
        by_tag=f"{plural}:by-tag:{{tag}}",
        by_name=f"{plural}:by-name",
        delayed=f"trainer:{plural}:delayed",
    )


RUN_KEYS = _schema(JobKind.RUN, "runs")
TOKENIZER_KEYS = _schema(JobKind.TOKENIZER, "tokenizers")
EVAL_KEYS = _schema(JobKind.EVAL, "evals")
SWEEP_KEYS = _schema(JobKind.SWEEP, "sweeps")
JOB_KEYS: dict[JobKind, KeySchema] = {
    JobKind.RUN: RUN_KEYS,
    JobKind.TOKENIZER: TOKENIZER_KEYS,
    JobKind.EVAL: EVAL_KEYS,
    JobKind.SWEEP: SWEEP_KEYS,
}


def workers_key(queue: str) -> str:
    """Live workers of a queue: member = worker name, score = when it last said so."""
    return f"trainer:workers:{queue}"


def worker_memory_key(queue: str) -> str:
    """The memory each worker of a queue may use (field = worker name, value = bytes): its
    cgroup limit, else its MemTotal. Read for the workers `workers_key` shows alive."""
    return f"trainer:workers:{queue}:memory"


# Corpora uploaded through the API (`POST /corpora`, the dashboard's picker), per principal
# (store/corpora.py): an entry `<principal>/<file_id>` with its JSON `CorpusInfo`, in the
# index of all (score = when it was last uploaded) and the principal's own; who holds each
# file (Data Bank's copy is deleted with its last holder); bytes held per principal (the
# quota). Corpora uploaded to Data Bank directly are not listed.
CORPORA_INDEX = "corpora:index"
CORPORA_INFO = "corpora:info"
CORPORA_BYTES = "corpora:bytes"


def corpora_owner_key(owner: str) -> str:
    return f"corpora:by-owner:{owner}"


def corpus_holders_key(file_id: str) -> str:
    return f"corpora:holders:{file_id}"


MODELS_INDEX = "models:index"
MODELS_INFO = "models:info"
# Base models read from their tar (pretrained.ModelFolder), by Data Bank id: a tar is read
# once, whoever uploaded it and however (POST /models or Data Bank directly).
MODELS_INSPECTED = "models:inspected"


def models_owner_key(owner: str) -> str:
    return f"models:by-owner:{owner}"


# Prefix of the rate limiter's windows (the `limits` library names the rest, api/quotas.py).
RATE_LIMIT_PREFIX = "trainer:limits"
