"""The examples in the modules' docstrings run, and show what they say.

The layers live in folders of their own (pyproject's package-dir), so each package's own
``__path__`` is walked, not the top package's folder alone.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = (
    "thronos_analytics",
    "thronos_analytics.core",
    "thronos_analytics.analytics",
    "thronos_analytics.producers",
    "thronos_analytics.workers",
)
# Modules known to hold examples: if the walk stops finding them, this test would pass
# having run nothing.
KNOWN = {
    "thronos_analytics.analytics.anomaly",
    "thronos_analytics.analytics.forest",
    "thronos_analytics.analytics.incidents",
    "thronos_analytics.analytics.quality",
    "thronos_analytics.producers.ai_ledger",
}


def module_names() -> list[str]:
    names = set()
    for name in PACKAGES:
        package = importlib.import_module(name)
        names.add(name)
        names |= {m.name for m in pkgutil.walk_packages(package.__path__, name + ".")}
    return sorted(names)


def with_examples() -> list[str]:
    finder = doctest.DocTestFinder()
    return [
        name
        for name in module_names()
        if any(test.examples for test in finder.find(importlib.import_module(name)))
    ]


def test_every_layer_is_walked_and_the_known_examples_are_found():
    names = module_names()
    for package in PACKAGES:
        assert any(n.startswith(package + ".") for n in names), f"no module found in {package}"
    assert set(with_examples()) >= KNOWN


@pytest.mark.parametrize("name", with_examples())
def test_docstring_examples(name: str):
    results = doctest.testmod(importlib.import_module(name), report=False)
    assert results.attempted > 0
    # testmod printed each failing example, with what it got, to the captured output.
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples failed"
