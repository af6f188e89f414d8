"""The guard script catches what it promises to catch (and the tree is clean)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

GUARD = Path(__file__).resolve().parents[2] / "scripts" / "guard.py"


def _guard() -> ModuleType:
    spec = importlib.util.spec_from_file_location("guard", GUARD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _findings(source: str, library: bool = True) -> list[str]:
    found = _guard().check_source(Path("/x/mod.py"), source, library)
    assert isinstance(found, list)
    return [str(f) for f in found]


def test_banned_constructs_are_reported() -> None:
    assert any("typing.Any" in f for f in _findings("from typing import Any\n"))
    assert any("typing.cast" in f for f in _findings("import typing\ny = typing.cast(int, 1)\n"))
    assert any("type: ignore" in f for f in _findings("x = 1  # type: ignore[misc]\n"))
    assert any("bare" in f for f in _findings("try:\n    pass\nexcept:\n    pass\n"))
    silent = "try:\n    pass\nexcept Exception:\n    x = 1\n"
    assert any("broad except" in f for f in _findings(silent))
    assert any("print()" in f for f in _findings("print('hi')\n"))


def test_allowed_constructs_pass() -> None:
    logged = "try:\n    pass\nexcept Exception:\n    log.exception('boom')\n"
    reraised = "try:\n    pass\nexcept BaseException:\n    cleanup()\n    raise\n"
    assert _findings(logged) == []
    assert _findings(reraised) == []
    assert _findings("print('tests may print')\n", library=False) == []


def test_the_repository_is_clean() -> None:
    assert _guard().main([]) == 0
