"""Lower stages never import upper ones (module-level and function-local imports alike, parsed with ast).

receive/spool/assemble/route/pipelines/outputs/send/imaging never import runtime, console or cli;
observability never imports runtime (it would make the one cycle the wiring removed).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dicomnode

PACKAGE = Path(dicomnode.__file__).parent
UPPER = ("runtime", "console", "cli")
FORBIDDEN = {
    **{stage: UPPER for stage in
       ("receive", "spool", "assemble", "route", "pipelines", "outputs", "send", "imaging")},
    "observability": ("runtime",),
}


def imported_modules(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, wherever in the file it is written."""
    package = ".".join(("dicomnode", *path.relative_to(root).parent.parts))
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def violations(stage: str, root: Path = PACKAGE) -> list[str]:
    banned = tuple(f"dicomnode.{upper}" for upper in FORBIDDEN[stage])
    out = []
    for path in sorted((root / stage).rglob("*.py")):
        for line, module in imported_modules(path, root):
            if any(module == b or module.startswith(b + ".") for b in banned):
                out.append(f"{path.relative_to(root.parent)}:{line} imports {module}")
    return out


@pytest.mark.parametrize("stage", sorted(FORBIDDEN))
def test_lower_stage_never_imports_an_upper_one(stage: str) -> None:
    assert (PACKAGE / stage).is_dir(), f"dicomnode/{stage} is gone: update FORBIDDEN"
    assert violations(stage) == []


def test_the_parser_sees_function_local_and_relative_imports(tmp_path: Path) -> None:
    root = tmp_path / "dicomnode"
    (root / "route").mkdir(parents=True)
    (root / "route" / "probe.py").write_text(
        "import logging\nfrom dicomnode.runtimes import x\n\n\ndef f():\n"
        "    from dicomnode.runtime import service\n    from ..console import app\n"
        "    import dicomnode.cli.common\n")
    assert violations("route", root) == [
        "dicomnode/route/probe.py:6 imports dicomnode.runtime",
        "dicomnode/route/probe.py:6 imports dicomnode.runtime.service",
        "dicomnode/route/probe.py:7 imports dicomnode.console",
        "dicomnode/route/probe.py:7 imports dicomnode.console.app",
        "dicomnode/route/probe.py:8 imports dicomnode.cli.common",
    ]
