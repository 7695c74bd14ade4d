"""The modules the build compiles run compiled, and one whose source changed since runs from
its source rather than as its old build."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from thronos_analytics import _compiled

EXTENSION = importlib.machinery.EXTENSION_SUFFIXES[0]


@pytest.mark.parametrize("name", _compiled.MODULES)
def test_each_listed_module_runs_its_build_unless_its_source_is_newer(name):
    fullname = f"{_compiled.PACKAGE}.{name}"
    origin = Path(importlib.import_module(fullname).__file__ or "")
    build = origin.with_name(origin.name.split(".")[0] + EXTENSION)
    assert build.exists(), f"{_compiled.source_of(name)} is not compiled: `make build`"
    if origin != build:
        assert _compiled.stale(importlib.util.spec_from_file_location(fullname, build)) == origin


def _import_from(folder: Path) -> subprocess.CompletedProcess[str]:
    """Import ``pkg.mod`` from ``folder`` in a new interpreter, with the finder installed for
    it: where the module came from, and stderr."""
    script = textwrap.dedent(
        """
        import sys
        from thronos_analytics._compiled import SourceWhenStale
        sys.meta_path.insert(0, SourceWhenStale(["pkg.mod"]))
        try:
            import pkg.mod
            print(pkg.mod.__file__)
        except ImportError as exc:  # the fake build is no real one
            print("build:", exc)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(folder)}
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )


def test_a_build_older_than_its_source_is_passed_over_for_the_source(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    source = package / "mod.py"
    source.write_text("VALUE = 1\n")
    build = package / f"mod{EXTENSION}"
    build.write_bytes(b"not a shared object")

    os.utime(source, (1_000_000, 1_000_000))
    os.utime(build, (1_000_100, 1_000_100))
    newer_build = _import_from(tmp_path)
    assert newer_build.stdout.startswith("build:")  # the build was taken
    assert newer_build.stderr == ""

    os.utime(source, (1_000_200, 1_000_200))
    newer_source = _import_from(tmp_path)
    assert newer_source.stdout.strip() == str(source)
    assert newer_source.stderr.count("\n") == 1
    assert "is newer than its compiled build" in newer_source.stderr
    assert "make build" in newer_source.stderr
