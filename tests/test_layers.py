"""The layer table of docs/ARCHITECTURE.md, enforced: every module's imports, read from its source.

The table lives here as data and in the guide as prose; when one changes, the other must.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "tickerplant"

# Modules every layer may import: they import only the standard library, numpy and numba.
BASE = {"tickerplant", "tickerplant.jit", "tickerplant.endpoint", "tickerplant.errors",
        "tickerplant.ops.config"}
PROCESS = {"wire", "session", "book", "io", "capture", "ops", "base"}
# layer -> the layers it may import (its own package always)
MAY_IMPORT: dict[str, set[str]] = {
    "base": set(),
    "wire": {"base"},
    "session": {"wire", "base"},
    "book": {"wire", "base"},
    "io": {"wire", "session", "ops", "base"},
    "capture": {"wire", "session", "base"},
    "ops": {"base"},
    "exchange": PROCESS,
    "feed": PROCESS,
    "client": PROCESS,
    "face": PROCESS | {"exchange", "feed", "client", "face"},
}
# Who touches sockets, the event loop and the clock: only io/ (and the processes drive the
# loop and read the clock for their adapters; they never open a socket themselves).
PURE = {"socket", "selectors", "asyncio", "time", "ssl"}
NEVER: dict[str, set[str]] = {
    "base": PURE,
    "wire": PURE,
    "session": PURE,
    "book": PURE,
    "capture": {"socket", "selectors", "asyncio", "ssl"},
    "ops": {"socket", "selectors", "ssl"},
    "exchange": {"socket", "selectors", "ssl"},
    "feed": {"socket", "selectors", "ssl"},
    "client": {"socket", "selectors", "ssl"},
}


def layer(module: str) -> str:
    if module in BASE:
        return "base"
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in MAY_IMPORT:
        return parts[1]
    return "face"  # cli.py and the commands beside it


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """Every module ``path`` imports; ``from pkg import mod`` counts as ``pkg.mod``."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
    return out


MODULES = modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layer_table(module: str) -> None:
    mine = layer(module)
    allowed = MAY_IMPORT[mine] | {mine}
    wrong = []
    for name in imports(MODULES[module], set(MODULES)):
        top = name.split(".")[0]
        if name.startswith("tickerplant"):
            if name == "tickerplant" or name in BASE:
                continue
            if layer(name) not in allowed:
                wrong.append(f"{name} ({layer(name)}/)")
        elif top in NEVER.get(mine, set()):
            wrong.append(f"{name} (stdlib: {mine}/ never touches it)")
    assert not wrong, f"{module} ({mine}/) imports {', '.join(sorted(wrong))}"


def test_the_table_knows_every_package_and_the_guide_states_it() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages <= set(MAY_IMPORT) - {"base", "face"}
    guide = (SRC.parent / "docs" / "ARCHITECTURE.md").read_text()
    rows = [line.split("|")[1] for line in guide.splitlines() if line.startswith("| ")]
    for name in packages:
        assert any(f"{name}/" in row for row in rows), f"ARCHITECTURE.md has no row for {name}/"
    for module in BASE - {"tickerplant"}:
        assert module.removeprefix("tickerplant.").replace(".", "/") + ".py" in guide, module


def test_the_checker_catches_a_wrong_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import socket\nfrom tickerplant.io import multicast\n")
    found = imports(bad, set(MODULES))
    assert "tickerplant.io.multicast" in found and "socket" in found
    assert layer("tickerplant.session.feed") == "session"
    assert layer("tickerplant.io.multicast") not in MAY_IMPORT["session"]
