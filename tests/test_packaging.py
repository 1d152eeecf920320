"""Packaging: the pyproject package list covers every package folder, and the shipped settings file."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"mvbind": "mvbind", "pipeline": "mvbind.pipeline", "stages": "mvbind.stages", "cache": "mvbind.cache"}


def test_every_package_folder_is_installed_under_mvbind():
    # pyproject lists packages explicitly (the design card's folders are mapped under `mvbind`):
    # a new subpackage that is not listed would be missing from a non-editable install.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert project["package-dir"] == {v: k for k, v in MAPPED.items()}
    found = set()
    for folder, name in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join([name, *rel]))
    assert found == set(project["packages"])


def test_the_shipped_settings_file_is_the_top_level_one():
    shipped = ROOT / "mvbind" / "pipeline.toml"
    assert shipped.is_symlink() and shipped.resolve() == (ROOT / "pipeline.toml").resolve()
