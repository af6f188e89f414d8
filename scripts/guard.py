#!/usr/bin/env python3
"""Guard rails that mypy and ruff do not enforce on their own.

Bans, in the package, the tests and the scripts:
- `typing.Any` and `typing.cast` (in any import form): types must be precise, not waived;
- `# type: ignore`: fix the type instead of silencing the checker;
- bare `except:`, and broad `except Exception` / `except BaseException` whose handler
  neither re-raises nor logs (a silent failure loses the reason a job died);
- `print(` in library code (`server/model_trainer`, `server/databank_server`,
  `server/service_common`): use the JSON logger.

Exit status 1 with one line per finding, 0 when clean.
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = [
    ROOT / "server" / name for name in ("model_trainer", "databank_server", "service_common")
]
SCANNED = [*LIBRARIES, ROOT / "server" / "tests", ROOT / "scripts"]
BANNED_TYPING = {"Any", "cast"}
BROAD = {"Exception", "BaseException"}
LOG_METHODS = {"exception", "error", "critical", "warning"}


def _is_broad(handler: ast.ExceptHandler) -> bool:
    kind = handler.type
    names: list[ast.expr] = (
        list(kind.elts) if isinstance(kind, ast.Tuple) else [kind] if kind else []
    )
    return any(isinstance(n, ast.Name) and n.id in BROAD for n in names)


def _handler_reports(handler: ast.ExceptHandler) -> bool:
    for node in ast.walk(ast.Module(body=handler.body, type_ignores=[])):
        if isinstance(node, ast.Raise):
            return True
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in LOG_METHODS
        ):
            return True
    return False


def check_source(path: Path, source: str, library: bool) -> list[str]:
    findings: list[str] = []
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    findings.extend(
        f"{rel}:{tok.start[0]}: `type: ignore` is banned"
        for tok in tokens
        if tok.type == tokenize.COMMENT and "type:" in tok.string and "ignore" in tok.string
    )
    tree = ast.parse(source, filename=str(path))
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.ImportFrom) and node.module in ("typing", "typing_extensions"):
            findings.extend(
                f"{rel}:{line}: typing.{alias.name} is banned"
                for alias in node.names
                if alias.name in BANNED_TYPING
            )
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in BANNED_TYPING
            and isinstance(node.value, ast.Name)
            and node.value.id in ("typing", "t")
        ):
            findings.append(f"{rel}:{line}: typing.{node.attr} is banned")
        elif isinstance(node, ast.ExceptHandler):
            if node.type is None:
                findings.append(f"{rel}:{line}: bare `except:` is banned")
            elif _is_broad(node) and not _handler_reports(node):
                findings.append(f"{rel}:{line}: broad except must log or re-raise")
        elif (
            library
            and isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "print"
        ):
            findings.append(f"{rel}:{line}: print() in library code; use the logger")
    return findings


def _is_library(path: Path) -> bool:
    return any(path.is_relative_to(library) for library in LIBRARIES)


def main(argv: list[str]) -> int:
    paths = [Path(a).resolve() for a in argv] or SCANNED
    files: list[Path] = []
    for p in paths:
        files.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
    findings: list[str] = []
    for f in files:
        if ".venv" in f.parts or "__pycache__" in f.parts:
            continue
        findings.extend(check_source(f, f.read_text(encoding="utf-8"), _is_library(f)))
    for finding in findings:
        sys.stdout.write(finding + "\n")
    sys.stdout.write(f"guard: {len(files)} files, {len(findings)} findings\n")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
