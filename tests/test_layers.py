"""The layer table of docs/ARCHITECTURE.md, enforced: the table is read from the guide itself, and
every module's imports (absolute and relative, read from its source) are checked against it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "tickerplant"
GUIDE = SRC.parent / "docs" / "ARCHITECTURE.md"

# What the guide's words for the standard library mean, module by module.
STDLIB = {"sockets": {"socket", "selectors", "ssl"}, "asyncio": {"asyncio"}, "time": {"time"}}


def guide_table() -> list[tuple[str, list[str], str, str]]:
    """The rows of the guide's layer table: (its first cell, the layers it names, may import,
    never imports)."""
    text = GUIDE.read_text()
    start = text.index("| layer | may import | never imports |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("| "):
            break
        first, may, never = (cell.strip() for cell in line.strip("|").split(" | "))
        if "the face" in first:
            names = ["face"]
        else:
            names = [n.strip().rstrip("/") for n in first.split(" — ")[0].split(",")]
        rows.append((first, names, may, never))
    return rows


def read_table() -> tuple[set[str], dict[str, set[str]], dict[str, set[str]]]:
    """From the guide: the base modules, each layer's allowed layers, and the stdlib it never
    imports."""
    rows = guide_table()
    layers = [name for _, names, _, _ in rows for name in names]
    base: set[str] = {"tickerplant"}
    may_import: dict[str, set[str]] = {}
    never: dict[str, set[str]] = {}
    above: set[str] = set()
    for first, names, may, refused in rows:
        if names == ["base"]:  # a list of modules, named in backticks
            for path in re.findall(r"`([\w/]+)\.py`", first):
                base.add("tickerplant." + path.replace("/", "."))
        if may == "everything":
            allowed = set(layers)
        elif may == "every layer above":
            allowed = set(above)
        else:
            allowed = {w.strip().rstrip("/") for w in may.split(",")} & set(layers)
        # "(io/ opens them)" explains; it names no layer refused
        words = [w.strip() for w in re.split(r"[,;]", re.sub(r"\([^)]*\)", "", refused))]
        stdlib = set().union(*(STDLIB.get(w, set()) for w in words))
        refused_layers = {w.rstrip("/") for w in words if w.endswith("/")}
        for name in names:
            may_import[name] = allowed
            never[name] = stdlib
            assert not refused_layers & allowed, f"the guide's {name}/ row contradicts itself"
        above.update(names)
    return base, may_import, never


BASE, MAY_IMPORT, NEVER = read_table()


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


def imports(path: Path, known: set[str], module: str = "") -> set[str]:
    """Every module ``path`` (the module ``module``) imports; ``from pkg import mod`` counts as
    ``pkg.mod``, and a relative import as the absolute name it stands for."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                here = package[: len(package) - node.level + 1]
                source = ".".join([*here, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                out.add(sub if sub in known else source)
    return out


MODULES = modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layer_table(module: str) -> None:
    mine = layer(module)
    allowed = MAY_IMPORT[mine] | {mine}
    wrong = []
    for name in imports(MODULES[module], set(MODULES), module):
        top = name.split(".")[0]
        if name.startswith("tickerplant"):
            if name == "tickerplant" or name in BASE:
                continue
            if layer(name) not in allowed:
                wrong.append(f"{name} ({layer(name)}/)")
        elif top in NEVER.get(mine, set()):
            wrong.append(f"{name} (stdlib: {mine}/ never touches it)")
    assert not wrong, f"{module} ({mine}/) imports {', '.join(sorted(wrong))}"


def test_the_guides_table_knows_every_package_and_reads_as_meant() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    face = next(first for first, names, _, _ in guide_table() if names == ["face"])
    in_face = set(re.findall(r"\b(\w+)/ \(", face))  # the face's own packages: plant/ (...)
    assert in_face == {"plant", "edge"}
    known = set(MAY_IMPORT) - {"base", "face"} | in_face
    assert packages == known, "a package the guide has no row for"
    for module in BASE:
        assert module in MODULES, f"the guide's base names {module}, which does not exist"
    # What the rules say, spot-checked against the prose: a misparse loosens every check.
    assert MAY_IMPORT["receive"] == {"wire", "base"} and MAY_IMPORT["base"] == set()
    assert MAY_IMPORT["distribute"] == {"receive", "session", "wire", "base"}
    assert NEVER["distribute"] == {"socket", "selectors", "ssl", "asyncio", "time"}
    assert "tickerplant.latency" in BASE
    assert "book" not in MAY_IMPORT["io"] and "exchange" not in MAY_IMPORT["feed"]
    assert MAY_IMPORT["face"] == set(MAY_IMPORT) and "tickerplant.errors" in BASE


def test_the_checker_catches_a_wrong_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import socket\nfrom tickerplant.io import multicast\nfrom ..io import web\n")
    found = imports(bad, set(MODULES), "tickerplant.session.bad")
    assert {"tickerplant.io.multicast", "socket", "tickerplant.io.web"} <= found
    assert layer("tickerplant.receive.feed") == "receive"
    assert layer("tickerplant.distribute.fanout.core") == "distribute"
    assert layer("tickerplant.io.multicast") not in MAY_IMPORT["session"]


def test_io_carries_out_what_the_fan_out_decides() -> None:
    """The slow-consumer limits are the fan-out's to act on: io reads none of them (it is told
    the high-water mark, when to reset, how long after a FIN)."""
    decided = {"linger", "write_deadline", "max_backlog"}
    tree = ast.parse((PACKAGE / "io" / "soupbin.py").read_text())
    read = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert not read & decided, f"io/soupbin.py reads {sorted(read & decided)}"


# Long by nature: the compiled order-book kernel, and ITCH's layout table (one row per field of
# every message type).
LONG = {"book/kernel.py", "wire/itch.py"}


def test_no_module_is_over_500_lines_but_the_kernel_and_the_layout_table() -> None:
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines())
             for p in PACKAGE.rglob("*.py")}  # fmt: skip
    assert set(LONG) <= set(sizes)
    assert {name: n for name, n in sizes.items() if n > 500 and name not in LONG} == {}
