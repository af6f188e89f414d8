"""Base models named on the Hugging Face hub (`hf:<org>/<name>[@<revision>]`), fetched into
the worker's hub cache (`HF_HOME`) only because a run asked for that model.

Nothing else in the service reaches a hub (HF_HUB_OFFLINE is on by default). A worker whose
operator allows downloads (`APP__HUB_DOWNLOADS=true`, which turns HF_HUB_OFFLINE off; an
`HF_TOKEN` for gated or private models) downloads the model's safetensors weights, config and
tokenizer files, never pickle weights; otherwise only a model already in its cache is used.
Every failure is the user's to fix and says how (`UserError`).
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from pydantic import SecretStr

from model_trainer.errors import ErrorCode, UserError

HUB_PREFIX = "hf:"
# What a base model needs, and nothing that would be unpickled.
HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.txt"]


def is_hub_model(base_model: str) -> bool:
    return base_model.startswith(HUB_PREFIX)


def split_hub_model(base_model: str) -> tuple[str, str | None]:
    """`hf:org/name@rev` -> (`org/name`, `rev`), the revision None when not given."""
    repo, _, revision = base_model.removeprefix(HUB_PREFIX).partition("@")
    return repo, revision or None


def fetch_hub_model(
    base_model: str, *, hf_home: Path | None, downloads: bool, token: SecretStr | None
) -> Path:
    """The snapshot folder of `base_model` in the hub cache under `hf_home` (None: the
    library's default), its name the commit."""
    repo, revision = split_hub_model(base_model)
    try:
        folder = snapshot_download(
            repo,
            revision=revision,
            # Passed, not left to HF_HOME: the library reads that once, when it is imported.
            cache_dir=hf_home / "hub" if hf_home is not None else None,
            token=token.get_secret_value() if token is not None else None,
            local_files_only=not downloads,
            allow_patterns=HUB_FILES,
        )
    except GatedRepoError as exc:
        raise UserError(
            f"{base_model} is gated: the worker's HF_TOKEN must belong to an account that "
            "accepted its terms on the hub",
            ErrorCode.DATA_INVALID,
        ) from exc
    except RepositoryNotFoundError as exc:
        raise UserError(
            f"no model {repo} on the hub (or it is private: set the worker's HF_TOKEN)"
        ) from exc
    except RevisionNotFoundError as exc:
        raise UserError(f"{repo} has no revision {revision!r} on the hub") from exc
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        how = (
            "the hub could not be reached"
            if downloads
            else "this worker does not download from the hub (APP__HUB_DOWNLOADS=false)"
        )
        raise UserError(
            f"{base_model} is not in this worker's hub cache and {how}: upload the model "
            "folder instead (`modeltrainer model upload FOLDER`) and give its file_id"
        ) from exc
    except HfHubHTTPError as exc:
        raise UserError(f"cannot fetch {base_model} from the hub: {exc}") from exc
    if not isinstance(folder, str):
        raise TypeError("snapshot_download returned no folder")
    return Path(folder)
