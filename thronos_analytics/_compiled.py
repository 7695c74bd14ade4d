"""The pure-Python modules that the build also compiles with Cython, unchanged: the per-row
path (parse, live context, batch plan, flags) and the rankings. Compiled, the same code
takes about a quarter fewer instructions per row (docs/performance.md).

A module's compiled build is imported in place of its source. A build older than its
source (the source was edited or checked out since) would run old code, so the import of
such a module runs the source instead and says once how to rebuild. setup.py reads
``MODULES`` from this file, which imports only the standard library for that reason.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec
from pathlib import Path
from types import ModuleType

PACKAGE = "thronos_analytics"
MODULES = (
    "core.contract",
    "core.keys",
    "core.store.batch",
    "core.store.records",
    "core.store.shards",
    "core.store.window",
    "producers.receipts",
    "producers.tail",
    "analytics.anomaly_scoring",
    "analytics.features",
    "analytics.recommend",
    "workers.scoring",
)
# A wheel's files are written within moments of each other; an edit comes later than that.
SLACK_S = 2.0


def source_of(module: str) -> str:
    """The file a module in ``MODULES`` is compiled from, relative to the repository."""
    return module.replace(".", "/") + ".py"


def stale(spec: ModuleSpec) -> Path | None:
    """The source of a compiled module when it is newer than the build, else None."""
    origin = Path(spec.origin or "")
    if not any(origin.name.endswith(suffix) for suffix in EXTENSION_SUFFIXES):
        return None
    source = origin.with_name(spec.name.rsplit(".", 1)[-1] + ".py")
    try:
        return source if source.stat().st_mtime > origin.stat().st_mtime + SLACK_S else None
    except OSError:
        return None


class SourceWhenStale(MetaPathFinder):
    """Finds the modules ``names`` as the other finders do, but a build older than its
    source as the source."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(names)
        self.warned = False

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in self.names:
            return None
        for finder in sys.meta_path:
            found = None if finder is self else getattr(finder, "find_spec", None)
            spec = found(fullname, path, target) if found else None
            if spec is not None:
                break
        else:
            return None
        source = stale(spec)
        if source is None:
            return spec
        if not self.warned:
            self.warned = True
            print(
                f"note: {source} is newer than its compiled build, so its source runs (slower);"
                " `make build` compiles it again",
                file=sys.stderr,
            )
        return importlib.util.spec_from_file_location(fullname, source)


def install() -> None:
    if not any(isinstance(finder, SourceWhenStale) for finder in sys.meta_path):
        sys.meta_path.insert(0, SourceWhenStale([f"{PACKAGE}.{m}" for m in MODULES]))
