"""The wheel installs one import name, and every package folder is in it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_one_top_level_name_and_no_package_left_out():
    setuptools = PYPROJECT["tool"]["setuptools"]
    packages, folders = set(setuptools["packages"]), setuptools["package-dir"]
    assert {name.split(".")[0] for name in packages} == {"thronos_analytics"}
    assert packages == set(folders)
    found = set()
    for name, folder in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *relative.parts]))
    assert found == packages, f"package folders not mapped: {sorted(found - packages)}"


def test_bare_folder_names_cannot_be_imported_by_our_code():
    banned = PYPROJECT["tool"]["ruff"]["lint"]["flake8-tidy-imports"]["banned-api"]
    folders = PYPROJECT["tool"]["setuptools"]["package-dir"].values()
    top = {folder.split("/")[0] for folder in folders} - {"thronos_analytics"}
    assert top <= set(banned)
