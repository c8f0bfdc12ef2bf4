"""The app reaches the engine through ``engine.api`` only.

Every ``.py`` file under ``app/`` and ``launch.py`` is parsed with ``ast`` (imports inside functions
included) and any import of another engine module is reported with its file and line:
``import engine.x``, ``from engine.x import y``, ``from engine import x`` (x other than ``api``),
a bare ``import engine``, and ``importlib.import_module("engine.x")`` / ``__import__("engine.x")``
with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = "engine.api"


def _is_engine_internal(module: str) -> bool:
    """True for ``engine`` itself and any ``engine.*`` module other than engine.api (and below it)."""
    if module != "engine" and not module.startswith("engine."):
        return False
    return not (module == ALLOWED or module.startswith(ALLOWED + "."))


def engine_import_violations(source: str, filename: str = "<string>") -> list[str]:
    """``"file:line: what"`` for each import in ``source`` that bypasses engine.api."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_engine_internal(alias.name):
                    found.append((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom):
            if node.level or node.module is None:
                continue  # relative: inside the app
            if node.module == "engine":
                for alias in node.names:
                    if alias.name != "api":
                        found.append((node.lineno, f"from engine import {alias.name}"))
            elif _is_engine_internal(node.module):
                names = ", ".join(a.name for a in node.names)
                found.append((node.lineno, f"from {node.module} import {names}"))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            arg = node.args[0]
            if (name in ("import_module", "__import__") and isinstance(arg, ast.Constant)
                    and isinstance(arg.value, str) and _is_engine_internal(arg.value)):
                found.append((node.lineno, f"{name}({arg.value!r})"))
    return [f"{filename}:{line}: {what} (use engine.api)" for line, what in sorted(found)]


def app_sources() -> list[Path]:
    files = sorted((ROOT / "app").rglob("*.py")) + [ROOT / "launch.py"]
    assert len(files) > 10 and all(f.is_file() for f in files)
    return files


def test_the_app_imports_the_engine_through_engine_api_only():
    problems = []
    for path in app_sources():
        problems += engine_import_violations(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not problems, "app code imports engine modules other than engine.api:\n" + "\n".join(problems)


@pytest.mark.parametrize("line", [
    "from engine.model.field import X",
    "import engine.synthesizer",
    "import engine.export.mesh as mesh_export",
    "from engine import errors",
    "from engine import api, checkpoint",
    "import engine",
    "import importlib\nimportlib.import_module('engine.train.warmup')",
    "__import__('engine.eval')",
    "def handler():\n    if True:\n        from engine.export import sweeps\n",
])
def test_the_checker_reports_a_bypass(line):
    problems = engine_import_violations(f'"""doc"""\n\n{line}\n', "app/bad.py")
    assert problems and all(p.startswith("app/bad.py:") and "engine" in p for p in problems), problems


def test_the_checker_names_file_and_line():
    src = "import os\nfrom engine.api import CgofError\n\n\ndef f():\n    from engine.model.field import X\n"
    assert engine_import_violations(src, "app/x.py") == [
        "app/x.py:6: from engine.model.field import X (use engine.api)"]


@pytest.mark.parametrize("line", [
    "from engine.api import CgofError, FaceSpec",
    "import engine.api",
    "import engine.api as api",
    "from engine import api",
    "from .service import RenderService",
    "from ..state import EditorState",
    "import enginex.model",
    "from engineering import x",
])
def test_the_checker_accepts_the_public_surface(line):
    assert engine_import_violations(line + "\n") == []


def test_every_name_engine_api_exports_resolves():
    """The lazily re-exported names exist in the modules engine.api points to."""
    import engine.api as api

    missing = [name for name in api.__all__ if not hasattr(api, name)]
    assert not missing, f"engine.api.__all__ names that do not resolve: {missing}"
    with pytest.raises(AttributeError):
        api.no_such_name  # noqa: B018
