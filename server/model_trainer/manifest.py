"""`manifest.json`: the file that explains an artifact folder, for tokenizers and models alike.

This module is the one owner of the file's name and of writing it. The libraries
(`tokenization.train`, `training.run`) write a folder's manifest once, as its last file; the
job adds the artifact pointer to the worker's copy after the upload (`add_artifact_pointer`),
since the uploaded manifest cannot contain the id of the tar that holds it.

A leaf module (standard library only) so that tokenization, training and the jobs can all
import it without an upward import.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

MANIFEST_JSON = "manifest.json"
# Every package whose version can change what an artifact holds; one list for both kinds of
# artifact, so the two manifests record the same environment the same way.
VERSIONED = (
    "torch",
    "transformers",
    "tokenizers",
    "sentencepiece",
    "numpy",
    "safetensors",
    "model-trainer",
)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_manifest(folder: Path, content: Mapping[str, object]) -> Path:
    """Write `folder/manifest.json` atomically: a reader never sees half a manifest."""
    path = folder / MANIFEST_JSON
    write_text_atomic(path, json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    return path


def read_manifest(folder: Path) -> dict[str, object]:
    path = folder / MANIFEST_JSON
    loaded: object = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} is not a JSON object")
    return {str(key): value for key, value in loaded.items()}


def add_artifact_pointer(folder: Path, file_id: str) -> None:
    """Record where the uploaded tar of `folder` lives (Data Bank `file_id`) in its manifest."""
    manifest = read_manifest(folder) if (folder / MANIFEST_JSON).is_file() else {}
    manifest["artifact_pointer"] = {"storage": "data-bank", "file_id": file_id}
    write_manifest(folder, manifest)


def write_text_atomic(path: Path, text: str) -> None:
    """Temp file beside `path`, then rename: the file is either the old one or the new one."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
