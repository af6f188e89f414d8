"""OpenAI-compatible inference: `GET /v1/models` and `POST /v1/completions`.

What OpenAI's completions API says, so that its clients (the `openai` package, LangChain,
anything that takes a base URL) work unchanged: the key as `Authorization: Bearer`, the
request and answer fields by OpenAI's names, and `stream: true` as server-sent events of
`text_completion` chunks ending with `data: [DONE]`. A model is a completed run (`run-...`)
or a checkpoint of any run (`run-...@<step>`, `@last`, `@best`), or the base model a
fine-tuning run started from (`@base`). Generation is /generate's:
the same model cache, thread pool and admission (503 when full), and a client that leaves
stops its generation.

Differences, said rather than faked: every sample runs `max_tokens` tokens (the models have
no end-of-text habit worth stopping on) and `stop` cuts the text where a stop sequence
begins (`finish_reason: "stop"`); `usage.completion_tokens` counts the tokens generated.
OpenAI's fields we do not implement (`logprobs`, `echo`, `suffix`, `best_of`, penalties,
`logit_bias`) are refused with 422 unless left at their neutral values.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from model_trainer.api import services
from model_trainer.api.auth import Me, Principal
from model_trainer.api.callers import disconnected
from model_trainer.api.deps import ApiContext, Ctx
from model_trainer.api.errors import error_responses
from model_trainer.api.generation import MAX_SEED, GenerateRequest, GenerateResponse, ModelRef
from model_trainer.errors import AppError, NotFoundError
from model_trainer.hub import is_hub_model
from model_trainer.store.checkpoints import read_checkpoints
from model_trainer.store.records import Status

router = APIRouter(prefix="/v1", tags=["openai"])

MAX_MODELS_LISTED = 100  # newest runs of each kind listed (completed; with checkpoints)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelCard(_Body):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(_Body):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class CompletionRequest(_Body):
    model: str = Field(min_length=1, max_length=200, description="run-id or run-id@step")
    prompt: str | list[str] = Field(default="", description="one prompt, or up to 8")
    max_tokens: int = Field(default=16, ge=1, le=2048)
    temperature: float = Field(default=1.0, ge=0, le=2, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0, le=1, allow_inf_nan=False)
    n: int = Field(default=1, ge=1, le=8)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, bool] | None = None  # include_usage: a last chunk with usage
    user: str | None = Field(default=None, max_length=256)  # accepted: OpenAI's tracking id
    # OpenAI's, at their neutral values only (see the module doc).
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        unsupported = [
            name
            for name, neutral in (
                ("echo", False),
                ("logprobs", None),
                ("suffix", None),
                ("presence_penalty", 0.0),
                ("frequency_penalty", 0.0),
                ("logit_bias", None),
            )
            if getattr(self, name) != neutral
        ]
        if self.best_of not in (None, 1):
            unsupported.append("best_of")
        if unsupported:
            raise ValueError(f"not supported here: {', '.join(unsupported)}")
        prompts = self.prompts()
        if not 1 <= len(prompts) <= 8:
            raise ValueError("prompt: one string, or a list of 1 to 8")
        if len(self.stops()) > 4 or any(not s for s in self.stops()):
            raise ValueError("stop: up to 4 non-empty strings")
        return self

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else self.stop


class Choice(_Body):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class Usage(_Body):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(_Body):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None


@router.get("/models", responses=error_responses())
def list_models(ctx: Ctx, who: Me) -> ModelList:
    """The completed runs `who` sees, and the checkpoints of its completed and running runs
    as `run-id@step` (the newest `MAX_MODELS_LISTED` runs of each); a fine-tuning run's base
    model as `run-id@base`."""
    cards: list[ModelCard] = []
    for status in (Status.COMPLETED, Status.RUNNING):
        ids, _ = ctx.runs.list_ids(0, MAX_MODELS_LISTED, status, who.scope)
        for run_id in ids:
            record = ctx.runs.record(run_id)
            if record is None:
                continue
            owner = record.meta.owner if record.meta and record.meta.owner else "model-trainer"
            created = int(record.meta.created_at) if record.meta else 0
            if status is Status.COMPLETED:
                cards.append(ModelCard(id=run_id, created=created, owned_by=owner))
            request = record.meta.request if record.meta else None
            base = request.get("base_model") if request else None
            if isinstance(base, str) and not is_hub_model(base):  # the model before training
                cards.append(ModelCard(id=f"{run_id}@base", created=created, owned_by=owner))
            for entry in read_checkpoints(ctx.redis, run_id).entries:
                if entry.kind == "last":
                    card = ModelCard(
                        id=f"{run_id}@{entry.step}", created=int(entry.created_at), owned_by=owner
                    )
                    cards.append(card)
    return ModelList(data=cards)


@router.post(
    "/completions",
    response_model=Completion,
    responses={**error_responses(404, 409, 422), 200: {"content": {"text/event-stream": {}}}},
)
async def create_completion(
    request: CompletionRequest, ctx: Ctx, who: Me, http: Request
) -> Completion | StreamingResponse:
    refs = await run_in_threadpool(_resolve, ctx, request, who)
    completion_id = f"cmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    if request.stream:
        return StreamingResponse(
            _stream(ctx, refs, request, completion_id, created),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    choices: list[Choice] = []
    prompt_tokens = completion_tokens = 0
    for i, (ref, generate) in enumerate(refs):
        answer = await ctx.generation.generate(ref, generate, disconnected(http))
        prompt_tokens += answer.prompt_tokens
        completion_tokens += answer.new_tokens * request.n
        for j, sample in enumerate(answer.samples):
            text, reason = _cut(sample, request.stops())
            choices.append(Choice(text=text, index=i * request.n + j, finish_reason=reason))
    usage = Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )
    return Completion(
        id=completion_id, created=created, model=request.model, choices=choices, usage=usage
    )


def _resolve(
    ctx: ApiContext, request: CompletionRequest, who: Principal
) -> list[tuple[ModelRef, GenerateRequest]]:
    """The model (404/409 as /generate answers them) and one generation per prompt."""
    run_id, _, checkpoint = request.model.partition("@")
    which: Literal["last", "best", "base"] | int | None = None
    if checkpoint in ("last", "best", "base"):
        which = "last" if checkpoint == "last" else "best" if checkpoint == "best" else "base"
    elif checkpoint:
        if not checkpoint.isdigit():
            raise NotFoundError(f"unknown model {request.model!r}: run-id or run-id@step")
        which = int(checkpoint)
    jobs: list[tuple[ModelRef, GenerateRequest]] = []
    for prompt in request.prompts():
        generate = GenerateRequest(
            prompt=prompt,
            max_new_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            num_samples=request.n,
            seed=request.seed,
            checkpoint=which,
        )
        jobs.append((services.resolve_generation_model(ctx, run_id, generate, who), generate))
    return jobs


def _cut(text: str, stops: list[str]) -> tuple[str, Literal["stop", "length"]]:
    """The text up to its first stop sequence, and why it ends."""
    ends = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(ends)], "stop") if ends else (text, "length")


async def _stream(
    ctx: ApiContext,
    jobs: list[tuple[ModelRef, GenerateRequest]],
    request: CompletionRequest,
    completion_id: str,
    created: int,
) -> AsyncIterator[str]:
    """The stream's events; leaving it (the client went) stops the generation."""
    gone = asyncio.Event()
    header = {"id": completion_id, "object": "text_completion", "created": created}
    try:
        async for event in _chunks(ctx, jobs, request, gone, {**header, "model": request.model}):
            yield _event(event)
        yield "data: [DONE]\n\n"
    except AppError as exc:
        # The answer's status went out with the first byte: the error is the last event.
        yield _event({"error": {"message": exc.message, "code": exc.code.value}})
    finally:
        gone.set()


def _event(body: dict[str, object]) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


async def _chunks(
    ctx: ApiContext,
    jobs: list[tuple[ModelRef, GenerateRequest]],
    request: CompletionRequest,
    gone: asyncio.Event,
    header: dict[str, object],
) -> AsyncIterator[dict[str, object]]:
    """Chunks as the tokens come: each choice's new text, held back where it could be the
    start of a stop sequence, then its finish reason; the usage last if asked for."""
    stops = request.stops()
    holdback = max((len(s) for s in stops), default=1) - 1
    loop = asyncio.get_running_loop()
    prompt_tokens = completion_tokens = 0

    def chunk(index: int, text: str, reason: Literal["stop", "length"] | None) -> dict[str, object]:
        choice = Choice(text=text, index=index, finish_reason=reason)
        return {**header, "choices": [choice.model_dump()]}

    for i, (ref, generate) in enumerate(jobs):
        updates: asyncio.Queue[list[str]] = asyncio.Queue()
        task = asyncio.create_task(
            ctx.generation.generate(
                ref,
                generate,
                _until(gone),
                _feeder(loop, updates),
            )
        )
        sent = [0] * request.n
        stopped = [False] * request.n
        while not (task.done() and updates.empty()):
            getter = asyncio.ensure_future(updates.get())
            await asyncio.wait((getter, task), return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                continue  # the task ended: drain what it left (the loop's condition)
            for j, text in enumerate(getter.result()):
                if stopped[j]:
                    continue
                cut, reason = _cut(text, stops)
                end = len(cut) if reason == "stop" else max(sent[j], len(text) - holdback)
                if end > sent[j]:
                    yield chunk(i * request.n + j, cut[sent[j] : end], None)
                    sent[j] = end
                if reason == "stop":
                    stopped[j] = True
                    yield chunk(i * request.n + j, "", "stop")
        answer: GenerateResponse = await task  # raises what the generation raised
        prompt_tokens += answer.prompt_tokens
        completion_tokens += answer.new_tokens * request.n
        for j, sample in enumerate(answer.samples):
            if not stopped[j]:
                yield chunk(i * request.n + j, sample[sent[j] :], "length")
    if request.stream_options and request.stream_options.get("include_usage"):
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
        yield {**header, "choices": [], "usage": usage.model_dump()}


def _feeder(
    loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[list[str]]
) -> Callable[[list[str]], None]:
    """`on_text` for a generation thread: hands each update to the event loop's queue."""

    def feed(texts: list[str]) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, texts)

    return feed


async def _until(event: asyncio.Event) -> None:
    await event.wait()
