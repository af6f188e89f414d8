"""`POST /runs/{id}/generate`: text from a run's model, in the API process.

The model is found by its Data Bank pointer (API and worker share no disk): a completed
run's artifact, or a checkpoint from the run's index (weights only: the model is built from
the run's request and its tokenizer's artifact). It is downloaded to the API's own disk,
extracted safely (`databank.artifacts`), loaded, and the files removed: what stays is the
loaded model, in a bounded in-memory cache (least recently used out first, within
`generate.cache_models` models and `generate.cache_bytes` bytes of weights).

Generation never runs on the event loop: it runs in a pool of `generate.workers` threads,
and at most `generate.max_waiting` more requests wait for one; beyond that the answer is 503
at once. A request whose client disconnects is dropped from the queue or stopped at its next
token, so abandoned requests never hold the pool. torch and transformers are imported in
those threads on first use (training/generate.py), never when the API starts. Data Bank is
called under the API's `RemoteGuard` (api/remote.py): no retries, a short timeout, 503 fast
while it is down.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from model_trainer.api.errors import FieldError, FieldsInvalid
from model_trainer.api.remote import RemoteGuard
from model_trainer.databank import errors as bank_errors
from model_trainer.databank.artifacts import fetch_extracted, most_artifact_bytes
from model_trainer.databank.client import DataBankClient
from model_trainer.errors import (
    AppError,
    CheckpointInvalid,
    ClientGone,
    ConflictError,
    ErrorCode,
    UserError,
)
from model_trainer.settings import Settings
from model_trainer.training.config import TrainingSpec
from service_common.jsonlog import log_fields

if TYPE_CHECKING:
    from model_trainer.training.generate import LoadedModel

log = logging.getLogger("model_trainer.api")

MAX_PROMPT_CHARS = 10_000
MAX_SEED = 2**63 - 1
# Loads of different models go on in parallel; the same model is loaded once (its stripe).
_LOAD_STRIPES = 16

ModelSource = Literal["artifact", "checkpoint", "base"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerateRequest(_Body):
    prompt: str = Field(
        max_length=MAX_PROMPT_CHARS,
        description="a longer one than the model's context keeps its last tokens",
    )
    max_new_tokens: int = Field(
        default=100,
        ge=1,
        le=2048,
        description="tokens per sample; past the context the window slides",
    )
    temperature: float = Field(
        default=1.0, ge=0, le=5, allow_inf_nan=False, description="0: greedy"
    )
    top_k: int = Field(default=0, ge=0, description="0: off; at most the vocabulary size")
    top_p: float = Field(default=1.0, gt=0, le=1, allow_inf_nan=False)
    num_samples: int = Field(default=1, ge=1, le=8)
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="the same seed gives the same text"
    )
    checkpoint: Literal["last", "best", "base"] | Annotated[int, Field(ge=0)] | None = Field(
        default=None,
        description="generate from this checkpoint of the run (`last`, `best` or the step "
        "of a `last` one), even a running run's, or from the base model a fine-tuning run "
        "started from (`base`: the model before training); unset: the completed run's artifact",
    )


class ModelUsed(_Body):
    run_id: str
    file_id: str  # the Data Bank file the weights came from
    source: ModelSource
    step: int | None = None  # the checkpoint's step (source = checkpoint)


class GenerateResponse(_Body):
    samples: list[str]
    prompt_tokens: int = Field(description="prompt tokens the model saw")
    new_tokens: int = Field(description="tokens generated per sample")
    elapsed_ms: float = Field(description="time in the generation thread, model load included")
    seed: int = Field(description="the seed used (drawn at random when none was given)")
    model: ModelUsed


@dataclass(frozen=True)
class ModelRef:
    """Where a run's model is in Data Bank, as `services.resolve_generation_model` found it."""

    run_id: str
    file_id: str
    source: ModelSource
    step: int | None = None
    config: TrainingSpec | None = None  # checkpoints: the model to build
    tokenizer_id: str | None = None
    tokenizer_file_id: str | None = None


class _Weighed(Protocol):
    @property
    def nbytes(self) -> int: ...


V = TypeVar("V", bound=_Weighed)


class ModelCache(Generic[V]):
    """Loaded models by file id, least recently used out first; thread-safe."""

    def __init__(self, max_models: int, max_bytes: int) -> None:
        self._max_models = max_models
        self._max_bytes = max_bytes
        self._items: OrderedDict[str, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: V) -> bool:
        """Keep `value` (evicting the least recently used); False if it alone is too big."""
        if value.nbytes > self._max_bytes:
            return False
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._max_models or self.nbytes > self._max_bytes:
                evicted, _ = self._items.popitem(last=False)
                log.info("generation cache: model %s evicted", evicted)
        return True

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self._items.values())

    def cached_ids(self) -> list[str]:
        with self._lock:
            return list(self._items)


class GenerationService:
    def __init__(self, settings: Settings, databank: DataBankClient, guard: RemoteGuard) -> None:
        g = settings.generate
        self._settings = settings
        self._databank = databank
        self._guard = guard
        self._workers = g.workers
        self._max_waiting = g.max_waiting
        self._pool = ThreadPoolExecutor(max_workers=g.workers, thread_name_prefix="generate")
        self._admitted = threading.BoundedSemaphore(g.workers + g.max_waiting)
        self._load_locks = [threading.Lock() for _ in range(_LOAD_STRIPES)]
        self._count_lock = threading.Lock()
        self.in_flight = 0  # admitted requests, running or waiting (tests and operators read it)
        self.cache: ModelCache[LoadedModel] = ModelCache(g.cache_models, g.cache_bytes)
        self.downloads = 0  # files fetched from Data Bank (tests and operators read it)
        self.abandoned = 0  # generations dropped or stopped because their client left

    async def generate(
        self,
        ref: ModelRef,
        request: GenerateRequest,
        client_gone: Awaitable[None],
        on_text: Callable[[list[str]], None] | None = None,
    ) -> GenerateResponse:
        """Run one generation in the pool; 503 at once when the pool and its queue are full.

        `client_gone` completes when the client disconnects. If it does first, the work is
        dropped from the queue, or told to stop before its next token (a model being loaded
        is loaded, and cached, first): its thread serves the next request instead of text
        nobody reads, and `ClientGone` is raised. `on_text` is called from the generation
        thread with each sample's text so far, after every token (a stream).
        """
        if not self._admitted.acquire(blocking=False):
            raise AppError(
                ErrorCode.SERVICE_UNAVAILABLE,
                f"generation is busy ({self._workers} running, {self._max_waiting} waiting); "
                "try again shortly",
            )
        self._count(+1)
        stop = threading.Event()
        try:
            future = self._pool.submit(self._run, ref, request, stop.is_set, on_text)
        except RuntimeError:  # the pool is shut down (the app is stopping)
            self._leave()
            raise
        future.add_done_callback(lambda _: self._leave())
        result = asyncio.wrap_future(future)
        gone = asyncio.ensure_future(client_gone)
        try:
            await asyncio.wait((result, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not result.done():  # the client left, or this request task was cancelled
                stop.set()
                result.cancel()  # and the pool's future, if no thread has taken it yet
        if result.cancelled():
            self._count_abandoned()
            log.info(
                "generation from %s abandoned: the client left",
                ref.file_id,
                extra=log_fields("generation_abandoned", run_id=ref.run_id, file_id=ref.file_id),
            )
            raise ClientGone("the client closed the connection before the text was ready")
        return result.result()

    def _count(self, change: int) -> None:
        with self._count_lock:
            self.in_flight += change

    def _leave(self) -> None:
        self._count(-1)
        self._admitted.release()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- in a generation thread ---------------------------------------------------------
    def _run(
        self,
        ref: ModelRef,
        request: GenerateRequest,
        should_stop: Callable[[], bool],
        on_text: Callable[[list[str]], None] | None,
    ) -> GenerateResponse:
        from model_trainer.training import generate as engine  # torch: here, not at startup

        started = time.perf_counter()
        engine.set_threads(self._settings.generate.torch_threads)
        loaded = self._model(ref)
        vocab = loaded.tokenizer.vocab_size
        if request.top_k > vocab:
            raise FieldsInvalid(
                f"top_k {request.top_k} is more than this model's vocabulary ({vocab} tokens)",
                [FieldError(field="top_k", message=f"at most {vocab}", type="less_than_equal")],
            )
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED)
        sampling = engine.Sampling(
            max_new_tokens=request.max_new_tokens,
            temperature=request.temperature,
            top_k=request.top_k,
            top_p=request.top_p,
            num_samples=request.num_samples,
            seed=seed,
        )
        out = engine.generate(loaded, request.prompt, sampling, should_stop, on_text)
        elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
        log.info(
            "generated %d x %d tokens from %s %s in %.0f ms",
            request.num_samples,
            out.new_tokens,
            ref.source,
            ref.file_id,
            elapsed_ms,
            extra=log_fields("generated", run_id=ref.run_id, file_id=ref.file_id),
        )
        return GenerateResponse(
            samples=out.samples,
            prompt_tokens=out.prompt_tokens,
            new_tokens=out.new_tokens,
            elapsed_ms=elapsed_ms,
            seed=seed,
            model=ModelUsed(
                run_id=ref.run_id, file_id=ref.file_id, source=ref.source, step=ref.step
            ),
        )

    def _model(self, ref: ModelRef) -> LoadedModel:
        cached = self.cache.get(ref.file_id)
        if cached is not None:
            return cached
        with self._load_locks[hash(ref.file_id) % _LOAD_STRIPES]:
            cached = self.cache.get(ref.file_id)  # loaded while we waited
            if cached is not None:
                return cached
            loaded = self._load(ref)
            if not self.cache.put(ref.file_id, loaded):
                log.warning(
                    "model %s (%d bytes) is larger than the generation cache (%d bytes): "
                    "loaded for this request only",
                    ref.file_id,
                    loaded.nbytes,
                    self._settings.generate.cache_bytes,
                )
            return loaded

    def _load(self, ref: ModelRef) -> LoadedModel:
        from model_trainer.training import generate as engine

        work = self._settings.app.data_root / "generate" / uuid.uuid4().hex
        started = time.perf_counter()
        try:
            if ref.source == "artifact":
                folder = self._fetch_tar(work, ref.file_id, "run", ref.run_id)
                loaded = engine.load_artifact(folder)
            elif ref.source == "base":
                folder = self._fetch_tar(work, ref.file_id, "base model", ref.run_id)
                loaded = engine.load_artifact(folder, base=True)
            else:
                if ref.config is None or ref.tokenizer_file_id is None or ref.tokenizer_id is None:
                    raise ConflictError(f"run {ref.run_id!r}: its checkpoint has no model to build")
                tokenizer = self._fetch_tar(
                    work, ref.tokenizer_file_id, "tokenizer", ref.tokenizer_id
                )
                weights = self._fetch_file(work, ref)
                try:
                    loaded = engine.load_checkpoint(ref.config, tokenizer, weights)
                except (CheckpointInvalid, RuntimeError) as exc:
                    raise ConflictError(
                        f"checkpoint at step {ref.step} of run {ref.run_id!r} cannot be "
                        f"loaded: {exc}"
                    ) from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log.info(
            "loaded the %s model of %s (%s, %d bytes) in %.1f s",
            ref.source,
            ref.run_id,
            ref.file_id,
            loaded.nbytes,
            time.perf_counter() - started,
            extra=log_fields("generation_model_loaded", run_id=ref.run_id, file_id=ref.file_id),
        )
        return loaded

    def _count_download(self) -> None:
        with self._count_lock:
            self.downloads += 1

    def _count_abandoned(self) -> None:
        with self._count_lock:
            self.abandoned += 1

    def _fetch_tar(self, work: Path, file_id: str, kind: str, record_id: str) -> Path:
        try:
            with self._guard.call(f"download the {kind} artifact"):
                self._count_download()
                return fetch_extracted(
                    self._databank, self._settings.app, work, file_id, kind, record_id
                )
        except UserError as exc:  # gone from Data Bank, or refused
            raise ConflictError(exc.message) from exc
        except bank_errors.DataBankError as exc:
            raise _upstream(exc) from exc

    def _fetch_file(self, work: Path, ref: ModelRef) -> Path:
        path = work / "weights.pt"
        what = f"checkpoint at step {ref.step} of run {ref.run_id!r}"
        try:
            with self._guard.call("download the checkpoint"):
                size = self._databank.head(ref.file_id).size
                if size > most_artifact_bytes(self._settings.app):
                    raise ConflictError(f"{what} is refused: {size} bytes, too large")
                self._count_download()
                work.mkdir(parents=True, exist_ok=True)
                return self._databank.download(ref.file_id, path)
        except bank_errors.NotFound as exc:
            raise ConflictError(f"{what} is not in Data Bank any more") from exc
        except bank_errors.DataBankError as exc:
            raise _upstream(exc) from exc


def _upstream(exc: bank_errors.DataBankError) -> AppError:
    return AppError(
        ErrorCode.UPSTREAM_ERROR, f"cannot fetch the model from Data Bank: {exc.message}"
    )
