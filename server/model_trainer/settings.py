"""Settings for the API, the worker and the tools, read once by `load_settings()`.

Sources, highest priority first: environment variables, then `.env`, then an optional TOML
file (path in `MODEL_TRAINER_CONFIG`). Nested names use `__`, e.g. `APP__DATA_ROOT`.
Nothing here is read at import time: the app and the worker call `load_settings()`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_FILE_ENV = "MODEL_TRAINER_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


EventsDialect = Literal["v1", "platform"]


def _every_dialect() -> list[EventsDialect]:
    return ["v1", "platform"]


class AppSettings(_Section):
    # Each service keeps its own disk; everything shared travels through Data Bank.
    data_root: Path = Path("/data")
    artifacts_root: Path = Path("/data/artifacts")
    runs_root: Path = Path("/data/runs")
    # 0 means "all cores this process may use" (cgroup- and affinity-aware).
    threads: int = Field(default=0, ge=0, le=256)
    # Workers download the hub models (`hf:<org>/<name>`) that runs ask for as base_model
    # into HF_HOME; otherwise only models already in that cache are used (hub.py).
    hub_downloads: bool = False
    # Does this CPU compute bf16 natively? Unset: read from its flags (/proc/cpuinfo). Set it
    # where a VM hides or misreports them; `precision: auto` probes bf16 only when true.
    native_bf16: bool | None = None
    # May this worker compile training steps (torch.compile)? Unset: when a C++ compiler is
    # installed. `false`: never (`compile: auto` stays eager, `on` is refused), e.g. where
    # compiling misbehaves, or for test workers whose runs are about something else.
    compile_steps: bool | None = None
    # What this worker trains on. `cuda`: it serves the GPU queue (rq.gpu_queue_name) before
    # the ordinary one, and refuses to start where torch sees no CUDA device (DESIGN.md,
    # "Devices and precision"). `cpu`: the ordinary queue only, even on a machine with a GPU.
    worker_device: Literal["cpu", "cuda"] = "cpu"
    data_bank_api_url: str = "http://127.0.0.1:8001"
    data_bank_api_key: SecretStr | None = None
    # Corpora larger than this are sampled for SentencePiece (input_sentence_size).
    spm_sample_bytes: int = Field(default=100_000_000, ge=1_000_000)
    events_channel: str = "trainer:events"
    # The protocols published on it (store/events.py): "v1" (trainer-events-v1.md) and
    # "platform" (trainer-events-platform.md, today's public Discord bot). [] publishes none.
    events_dialects: list[EventsDialect] = Field(default_factory=_every_dialect)
    log_stream_maxlen: int = Field(default=10_000, ge=100)
    # Corpus check at a job's start: a line ("\n"-separated, in bytes) longer than this fails
    # the job (a file without line breaks). Real text has short lines (tinyshakespeare: under
    # 100 bytes) and a JSONL document rarely passes 1 MiB; 4 MiB leaves room for long ones.
    # At most 64 MiB, the longest line the corpus readers hold in memory.
    corpus_max_line_bytes: int = Field(default=4 * 1024**2, ge=1024, le=64 * 1024**2)
    # A structured corpus (JSONL, CSV, Parquet) is written out as text at most this long: a
    # few KB of Parquet can decode to gigabytes. Checked from Parquet's metadata and
    # dictionaries before any text is decoded, and while streaming; past it the job fails
    # as a user error. 4 GiB of text is far more than CPU training gets through.
    corpus_max_text_bytes: int = Field(default=4 * 1024**3, ge=1024)
    # Caps on extracting an artifact (a tokenizer's or a run's tar from Data Bank). Ours hold
    # under 20 files (weights, configs, tokenizer files, manifest, logs, eval): 1,000 members
    # leaves room for sharded weights. 8 GiB is about 2 billion float32 parameters, far past
    # what CPU training produces (GPT-2 small, 124M parameters, is 0.5 GB).
    artifact_max_members: int = Field(default=1_000, ge=1, le=1_000_000)
    artifact_max_bytes: int = Field(default=8 * 1024**3, ge=1)
    # The most bytes the worker's disk cache (`data_root/cache`: corpora from Data Bank, the
    # text of structured ones, token files) holds; past it, adding an entry evicts the least
    # recently used ones that no running job uses (model_trainer/disk_cache.py). 20 GiB holds
    # a few of the largest corpora (APP__CORPUS_MAX_TEXT_BYTES) with their token files.
    cache_bytes: int = Field(default=20 * 1024**3, ge=1024**2)
    # The worker lowers its CPU priority by this much (nice): training is batch work, and on a
    # machine it shares with the API or other services those should answer first. 0 keeps it.
    worker_nice: int = Field(default=10, ge=0, le=19)
    # Where inductor keeps the training steps it compiles (and the memo of compile times the
    # `compile: auto` choice reads), so a shape compiles once per worker disk. Unset:
    # data_root / "compile-cache".
    compile_cache_dir: Path | None = None
    # Presets whose steps a worker compiles at start, in a background process (it takes jobs
    # meanwhile), at the default family, batch and context and this vocabulary size (a
    # byte-level BPE tokenizer's): e.g. ["tiny", "mini"].
    compile_warm_presets: list[Literal["tiny", "mini", "small"]] = Field(default_factory=list)
    compile_warm_vocab_size: int = Field(default=32_000, ge=128)

    def compile_cache(self) -> Path:
        return self.compile_cache_dir or self.data_root / "compile-cache"


Role = Literal["admin", "user"]


class ApiKey(_Section):
    """One person's (or one program's) key: a `user` sees and acts on its own jobs and corpora
    only, an `admin` on everyone's. Only the key's SHA-256 is configured (hex), so settings,
    logs and Redis never hold the key itself: `printf %s "$KEY" | sha256sum`."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")
    role: Role = "user"
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class SecuritySettings(_Section):
    """Who may call the API (api/auth.py) and under which Host names (api/hosts.py)."""

    # One admin key given in clear (what `make start` sets): the principal `admin`.
    api_key: SecretStr | None = None
    # Keys per person, as JSON: [{"name": "ada", "role": "user", "key_sha256": "..."}].
    api_keys: list[ApiKey] = Field(default_factory=list)
    # With no key configured the API refuses to start, unless this says anyone who reaches it
    # may use it (then every request acts as the admin `anonymous`, and the API warns).
    allow_anonymous: bool = False
    # Host header values the API answers (400 otherwise): a page elsewhere cannot reach a local
    # API through DNS rebinding. `*.example.com` matches subdomains, `*` anything. Railway's
    # health checks and domains (DEPLOYING_RAILWAY.md) are its own names, safe to trust.
    trusted_hosts: list[str] = Field(
        default_factory=lambda: [
            "localhost",
            "127.0.0.1",
            "[::1]",
            "healthcheck.railway.app",
            "*.up.railway.app",
            "*.railway.internal",
        ],
        min_length=1,
    )
    # Wrong or missing keys one client address may send per minute; past it the address gets
    # 429 until the minute has passed, even with a right key, so keys cannot be guessed fast.
    auth_failures_per_minute: int = Field(default=30, ge=1, le=100_000)
    # Behind a reverse proxy (Railway's edge) every client has the proxy's address: take the
    # client's from X-Forwarded-For, this many proxies from the right. 0: no proxy.
    proxy_hops: int = Field(default=0, ge=0, le=10)


class QuotaSettings(_Section):
    """What one principal (one key, api/quotas.py) may hold at once or submit per minute.
    Past any of them: 429 with Retry-After and nothing written or queued."""

    # Runs queued or running.
    active_runs: int = Field(default=8, ge=1, le=100_000)
    # Jobs of every kind (tokenizers, runs, evaluations) waiting in the queue.
    queued_jobs: int = Field(default=32, ge=1, le=100_000)
    # Submissions (tokenizers, runs, evaluations, corpus uploads) in any 60 seconds.
    submissions_per_minute: int = Field(default=60, ge=1, le=100_000)
    # Bytes of corpora uploaded through the API and not deleted (50 GiB).
    corpus_bytes: int = Field(default=50 * 1024**3, ge=1024)


class LoggingSettings(_Section):
    level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")


class RQSettings(_Section):
    queue_name: str = Field(default="training", min_length=1)
    # Runs that ask for `device: cuda` wait here; only workers with APP__WORKER_DEVICE=cuda
    # serve it, so a CPU worker never takes one.
    gpu_queue_name: str = Field(default="training-gpu", min_length=1)
    # Training runs for hours or days: RQ's default of 180 s would kill it.
    job_timeout_sec: int = Field(default=7 * 24 * 3600, ge=1)
    result_ttl_sec: int = Field(default=7 * 24 * 3600, ge=0)
    failure_ttl_sec: int = Field(default=30 * 24 * 3600, ge=0)
    # RQ only dispatches: it retries nothing (every job kind follows `recovery`). How often
    # the worker refreshes a running job's RQ heartbeat, and how long past that RQ files a
    # dead worker's job as abandoned (its own bookkeeping; our reapers take the job back).
    job_monitoring_interval_sec: int = Field(default=5, ge=1, le=600)
    abandoned_grace_sec: int = Field(default=20, ge=1, le=3600)
    # How often an idle worker sweeps RQ's registries (finds abandoned jobs).
    maintenance_interval_sec: int = Field(default=30, ge=1, le=3600)


class RecoverySettings(_Section):
    """How jobs of every kind survive workers dying, redeploys and outages (jobs/ownership.py).

    A worker owns a job through a lease in Redis that it renews; every worker's reaper hands
    a job whose lease lapsed to the queue again. A run's checkpoints go to Data Bank so that
    any worker, with any disk, can continue.
    """

    # A job's lease lives this long unless its worker renews it (every third of it).
    lease_ttl_sec: float = Field(default=15.0, ge=1.0, le=600)
    # How often each worker renews its presence and runs the reaper / reconcile pass.
    reaper_interval_sec: float = Field(default=5.0, gt=0, le=300)
    # A worker not seen for this long is not counted by /readyz.
    worker_presence_ttl_sec: float = Field(default=20.0, ge=1.0, le=3600)
    # Checkpoint at least this often (seconds of training), besides every checkpoint_interval.
    checkpoint_every_seconds: float = Field(default=300.0, gt=0, le=7 * 24 * 3600)
    # Periodic checkpoints kept in Data Bank per run (the best one is kept besides).
    checkpoints_keep_last: int = Field(default=2, ge=1, le=100)
    # Transient failures and lost workers, together, per job before it fails for good.
    max_attempts: int = Field(default=5, ge=1, le=100)
    # Retry delay: base * 2**(attempt-1), capped, times a random factor in [1-jitter, 1+jitter].
    backoff_base_sec: float = Field(default=5.0, ge=0, le=3600)
    backoff_max_sec: float = Field(default=300.0, ge=0, le=24 * 3600)
    backoff_jitter: float = Field(default=0.5, ge=0, le=1)
    # How long a job keeps retrying the final artifact upload while Data Bank is down.
    upload_retry_sec: float = Field(default=60.0, ge=0, le=24 * 3600)
    # How long a finished job waits for Redis to come back to record its result.
    redis_wait_sec: float = Field(default=300.0, ge=0, le=24 * 3600)


class LimitsSettings(_Section):
    """What the API accepts of a request before any route sees it."""

    # Request bodies over this many bytes are refused with 413 before they are read into
    # memory: at once by Content-Length, or by counting a chunked body as it arrives. The
    # API's JSON bodies are under a few KiB; Data Bank, not the API, receives files.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    # `POST /corpora` (a text corpus uploaded through the API, for the dashboard) is the one
    # route with a body larger than that: it is streamed to a temp file, never held in memory,
    # and refused with 413 past this size. Larger corpora go to Data Bank directly.
    corpus_upload_max_bytes: int = Field(default=256 * 1024**2, ge=1024, le=64 * 1024**3)
    # `POST /models`: a tar of a base model to fine-tune, streamed to disk the same way (a
    # 1.5B-parameter model in bf16 is ~3 GiB; a larger one goes to Data Bank directly).
    model_upload_max_bytes: int = Field(default=8 * 1024**3, ge=1024, le=256 * 1024**3)
    # Checks against Data Bank on the request path (api/remote.py): no retries, this timeout,
    # at most this many in flight (more get 503 at once), and 503 without calling for the
    # cooldown after Data Bank was found unavailable.
    remote_timeout_sec: float = Field(default=3.0, gt=0, le=60)
    remote_max_concurrent: int = Field(default=8, ge=1, le=256)
    remote_cooldown_sec: float = Field(default=5.0, ge=0, le=300)
    # Log streams (server-sent events): each ends after this long with `event: reconnect`
    # (the client resumes with Last-Event-ID), so none holds a connection and a Redis poller
    # forever; and one caller (api/callers.py) holds at most this many at once (429 past it).
    sse_max_lifetime_sec: float = Field(default=3600.0, ge=1, le=7 * 24 * 3600)
    sse_max_per_caller: int = Field(default=8, ge=1, le=10_000)


class HealthSettings(_Section):
    """`/readyz` answers from a background probe's last result (api/readiness.py): a probe
    every `probe_interval_sec`, never a call per request."""

    probe_interval_sec: float = Field(default=5.0, gt=0, le=300)


class AdmissionSettings(_Section):
    """What `POST /runs/train` refuses before anything is queued (DESIGN.md, "Admission").

    A run whose memory estimate (training/memory.py) exceeds `memory_fraction` of a worker's
    memory is refused with 422. A worker's memory is `worker_memory_bytes` when set, else
    the largest that a live worker reports (its cgroup limit, else MemTotal); when neither
    is known (no worker up), runs are admitted.
    """

    # Memory of one worker (machine or container); unset: what live workers report.
    worker_memory_bytes: int | None = Field(default=None, ge=256 * 1024**2)
    # The share of a worker's memory one run may take by the estimate (the rest: headroom for
    # the kernel, other processes and the estimate's error).
    memory_fraction: float = Field(default=0.9, gt=0, le=1)


class GenerateSettings(_Section):
    """`POST /runs/{id}/generate` in the API process (api/generation.py).

    Models are downloaded from Data Bank once and kept in memory, least recently used out
    first, within `cache_models` models and `cache_bytes` of weights. Generation runs in
    `workers` threads; at most `max_waiting` more requests wait for one, and beyond that the
    API answers 503 at once.
    """

    cache_models: int = Field(default=4, ge=1, le=256)
    cache_bytes: int = Field(default=2 * 1024**3, ge=1024**2)
    workers: int = Field(default=2, ge=1, le=64)
    max_waiting: int = Field(default=8, ge=0, le=1024)
    # torch threads per generation (0: torch's default, every core).
    torch_threads: int = Field(default=0, ge=0, le=256)


class WebhookEndpoint(_Section):
    url: str
    secret: SecretStr  # whsec_ + base64, as Standard Webhooks writes secrets


def _standard_webhooks_schedule() -> list[float]:
    # Standard Webhooks' suggested retry schedule (as Svix runs it): ~28 h after the first try.
    return [5, 300, 1800, 7200, 18000, 36000, 36000]


class WebhookSettings(_Section):
    """POSTs when jobs end (webhooks/): to a request's `webhook_url`, and to these."""

    # Told of every job's end, as JSON: [{"url": "https://...", "secret": "whsec_..."}].
    endpoints: list[WebhookEndpoint] = Field(default_factory=list)
    # Requests' URLs may resolve to private or loopback addresses (refused otherwise).
    allow_private_addresses: bool = False
    # Seconds between a failed attempt and the next; one more attempt than delays in all.
    retry_delays_sec: list[float] = Field(default_factory=_standard_webhooks_schedule)
    timeout_sec: float = Field(default=10.0, gt=0, le=120)
    poll_sec: float = Field(default=1.0, gt=0, le=60)


class TrackingSettings(_Section):
    """Experiment trackers runs log to (jobs/tracking.py); TensorBoard files are always in
    the artifact."""

    # MLflow: a tracking server's URL (http://...), or a store URI (sqlite:///...). Unset: off.
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = "model-trainer"
    # Where a new experiment keeps its artifacts (unset: the tracking server's default).
    mlflow_artifact_location: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        case_sensitive=False,
    )

    redis_url: str = "redis://127.0.0.1:6379/0"
    hf_home: Path | None = None
    # For `hf:` base models on a worker that downloads them (app.hub_downloads): gated and
    # private models need an account's token.
    hf_token: SecretStr | None = None
    app: AppSettings = Field(default_factory=AppSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    rq: RQSettings = Field(default_factory=RQSettings)
    recovery: RecoverySettings = Field(default_factory=RecoverySettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    generate: GenerateSettings = Field(default_factory=GenerateSettings)
    quotas: QuotaSettings = Field(default_factory=QuotaSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        toml_path = os.environ.get(CONFIG_FILE_ENV)
        if toml_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(toml_path)))
        return tuple(sources)


def load_settings() -> Settings:
    """Build the settings from the environment, `.env` and the optional TOML file."""
    settings = Settings()
    if settings.hf_home is not None:
        # transformers reads HF_HOME itself; keep the two in agreement.
        os.environ["HF_HOME"] = str(settings.hf_home)
    # Nothing is fetched from a hub at run time, but the `hf:` base models a run asks for on
    # a worker whose operator allows it (hub.py).
    if settings.app.hub_downloads:
        os.environ["HF_HUB_OFFLINE"] = "0"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # corpora are local files only
    # Progress bars ("Writing model shards") are noise in JSON logs.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return settings
