"""The fuzz targets of ``fuzz/``, at a smaller count than ``fuzz/run.py``'s million: their seeds,
the corpus they grew (if any) and mutations of both through the compiled code, then each target
coverage-guided under atheris for a few thousand inputs, from a fixed seed (a run that finds
something new is ``fuzz/run.py``'s; what it finds is mended and kept in ``fuzz/seeds``). A target
raises only for a defect."""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
TARGETS = ("moldudp64", "soupbin_server", "soupbin_client", "rerequest", "config", "files")
MUTATIONS = 300  # a target, each a seed or corpus entry changed at a few random places


def target(name: str) -> ModuleType:
    """``fuzz/NAME.py`` as module ``fuzz_NAME`` (its own names, such as ``config``, would
    shadow others); it imports ``common`` from beside it."""
    if str(FUZZ) not in sys.path:
        sys.path.append(str(FUZZ))
    loaded = sys.modules.get(f"fuzz_{name}")
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(f"fuzz_{name}", FUZZ / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def inputs(name: str) -> Iterator[bytes]:
    """Its seeds and corpus, then mutations of them: bytes flipped, cut, repeated, spliced."""
    found = [p.read_bytes() for where in ("seeds", "corpus") if (FUZZ / where / name).is_dir()
             for p in sorted((FUZZ / where / name).iterdir())]  # fmt: skip
    assert found, f"no seeds for {name}"
    yield from found
    rng = random.Random(name)
    for _ in range(MUTATIONS):
        data = bytearray(rng.choice(found))
        for _ in range(rng.randrange(1, 6)):
            at = rng.randrange(len(data) + 1)
            how = rng.randrange(4)
            if how == 0 and data:
                data[min(at, len(data) - 1)] = rng.randrange(256)
            elif how == 1:
                del data[at : at + rng.randrange(1, 40)]
            elif how == 2:
                data[at:at] = data[at : at + rng.randrange(1, 40)] * rng.randrange(1, 4)
            else:
                data[at:at] = rng.choice(found)[: rng.randrange(1, 60)]
        yield bytes(data)


@pytest.mark.parametrize("name", TARGETS)
def test_seeds_corpus_and_mutations_go_through_the_compiled_code(name: str) -> None:
    run = target(name).TestOneInput
    for data in inputs(name):
        run(data)


@pytest.mark.slow  # (it runs its target as Python already: once in make test is enough)
@pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                    reason="atheris is not installed (pip install -e '.[dev]')")  # fmt: skip
@pytest.mark.parametrize("name", TARGETS)
def test_each_target_runs_coverage_guided_without_a_crash(name: str, tmp_path: Path) -> None:
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1", "PYTHONPATH": str(FUZZ)}
    done = subprocess.run(
        [sys.executable, str(FUZZ / f"{name}.py"), "-runs=3000", "-seed=1", "-timeout=20",
         "-rss_limit_mb=2048", f"-artifact_prefix={tmp_path}/", str(tmp_path),
         str(FUZZ / "seeds" / name)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DONE" in done.stderr, done.stderr[-3000:]
