"""Base models to fine-tune: `POST /models` (a tar of a transformers model folder, checked and
stored in Data Bank) and the submit-time checks of a run's `base_model`.

The API reads a tar without loading it (pretrained.py: no torch, no pickle): what it is, its
context and parameters. That reading is kept in Redis per Data Bank id (`ModelCatalog`), so
a tar uploaded here is never read again, and one uploaded to Data Bank directly is fetched
and read once, at its first run. A run is refused (422, field by field) when its base model
is not a causal LM with safetensors weights and a tokenizer.json, when `max_seq_len` is past
the model's context, or when its memory estimate (training/memory.py) exceeds what a worker
may use.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from model_trainer.api.auth import Principal
from model_trainer.api.corpus_upload import receive_file, transfer_client, uploads_dir
from model_trainer.api.deps import ApiContext, memory_limit
from model_trainer.api.errors import FieldError, FieldsInvalid
from model_trainer.api.schemas import TrainRequest
from model_trainer.databank import errors as bank_errors
from model_trainer.errors import AppError, ErrorCode, NotFoundError
from model_trainer.hub import is_hub_model
from model_trainer.jobs.queue import run_queue_name
from model_trainer.pretrained import ModelFolder, read_model_archive
from model_trainer.store.base_models import ModelCatalog, ModelInfo
from model_trainer.training.memory import estimate_fine_tune_memory, gib

TAR = "application/x-tar"


async def receive_model(
    ctx: ApiContext,
    chunks: AsyncIterator[bytes],
    name: str,
    content_type: str | None,
    who: Principal,
) -> ModelInfo:
    def check_and_upload(path: Path) -> ModelInfo:
        return _check_and_upload(ctx, path, name, who)

    return await receive_file(ctx, chunks, content_type, who, TAR, "model.tar", check_and_upload)


def _check_and_upload(ctx: ApiContext, path: Path, name: str, who: Principal) -> ModelInfo:
    model = read_model_archive(path)  # UserError (422) with the reason
    try:
        with transfer_client(ctx, "upload the model") as bank:
            stored = bank.upload_file(path, content_type=TAR)
    except bank_errors.DataBankError as exc:
        raise AppError(
            ErrorCode.UPSTREAM_ERROR, f"cannot upload the model to Data Bank: {exc.message}"
        ) from exc
    info = ModelInfo(
        file_id=stored.file_id,
        name=name,
        size=stored.size,
        created_at=time.time(),
        owner=who.name,
        model=model,
    )
    ModelCatalog(ctx.redis).add(info)
    return info


def inspect_base_model(ctx: ApiContext, file_id: str) -> ModelFolder:
    """What the tar `file_id` holds: Redis's reading, or Data Bank's tar read now (once)."""
    catalog = ModelCatalog(ctx.redis)
    known = catalog.inspected(file_id)
    if known is not None:
        return known
    app = ctx.settings.app
    try:
        with (
            transfer_client(ctx, "read the base model") as bank,
            tempfile.TemporaryDirectory(dir=uploads_dir(ctx), prefix=".base-") as tmp,
        ):
            size = bank.head(file_id).size
            if size > app.artifact_max_bytes:
                raise FieldsInvalid(
                    f"base_model {file_id} is {gib(size)}, more than a model may be "
                    f"(app.artifact_max_bytes, {gib(app.artifact_max_bytes)})",
                    [FieldError(field="base_model", message="too large", type="too_large")],
                )
            path = Path(tmp) / "model.tar"
            bank.download(file_id, path)
            model = read_model_archive(path)
    except bank_errors.NotFound as exc:
        raise NotFoundError(
            f"base_model {file_id} not found in Data Bank: upload the model folder first "
            "(POST /models, or `modeltrainer model upload FOLDER`)"
        ) from exc
    except bank_errors.DataBankError as exc:
        raise AppError(
            ErrorCode.UPSTREAM_ERROR, f"cannot read the base model in Data Bank: {exc.message}"
        ) from exc
    catalog.remember(file_id, model)
    return model


def check_base_model(ctx: ApiContext, config: TrainRequest) -> ModelFolder | None:
    """The run's base model, once it can be fine-tuned as `config` asks (see the module doc);
    None for a hub model (`hf:`), which the worker checks."""
    base_model = config.base_model
    if base_model is None:
        raise ValueError("check_base_model needs a run with base_model")
    if is_hub_model(base_model):
        # The API does not reach the hub: the worker fetches and checks it (hub.py), and
        # checks its memory before loading it.
        return None
    model = inspect_base_model(ctx, base_model)
    if model.context_length is not None and config.max_seq_len > model.context_length:
        raise FieldsInvalid(
            f"max_seq_len {config.max_seq_len} is past the base model's context "
            f"({model.context_length} tokens)",
            [
                FieldError(
                    field="max_seq_len",
                    message=f"{config.max_seq_len}: at most {model.context_length}",
                    type="context_length",
                )
            ],
        )
    limit = memory_limit(ctx, run_queue_name(ctx.settings.rq, config.device))
    if limit is None:
        return model
    estimate = estimate_fine_tune_memory(config, model)
    if estimate.total_bytes > limit.bytes:
        lower = "batch_size or max_seq_len" + (
            ", or use method lora" if config.method == "full" else ""
        )
        raise FieldsInvalid(
            f"fine-tuning this {model.architecture} ({model.n_params / 1e6:.1f}M parameters) "
            f"needs about {estimate.describe()}, more than the {limit.describe()}; lower "
            f"{lower}, or pick a smaller base model",
            [
                FieldError(
                    field="base_model",
                    message=f"the estimate is {estimate.total_bytes} bytes, the limit "
                    f"{limit.bytes} bytes",
                    type="memory_limit",
                )
            ],
        )
    return model
