"""docs/design.md matches the code: its module map lists every module under src/xraytriage and
nothing else, and its layers block is the one .importlinter enforces."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import xraytriage

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(xraytriage.__file__).parent
DESIGN = ROOT / "docs" / "design.md"


def _block_after(text: str, heading: str) -> str:
    """The first fenced block after ``heading``."""
    rest = text[text.index(heading) :]
    return rest.split("```", 2)[1]


def documented_modules(text: str) -> set[str]:
    """``pkg/module`` (``module`` at the top) for every name in the module map; ``pkg/sub/``
    for a sub-package listed whole."""
    names, package = set(), None
    for line in _block_after(text, "## Module map").strip("\n").splitlines():
        head = re.match(r"^(\S+/)\s", line)
        if head:
            package = head.group(1)
            line = line[head.end() :]
        assert package, f"module map line without a package: {line!r}"
        prefix = "" if package == "xraytriage/" else package
        names.update(prefix + word for word in line.split())
    return names


def code_modules(package: Path) -> set[str]:
    """The same spelling for the modules in the tree; a sub-package inside a package whose
    modules are not Python code of ours (Alembic's ``migrations/``) counts as one ``pkg/sub/``."""
    names = set()
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).parts
        if len(parts) > 2:
            names.add(f"{parts[0]}/{parts[1]}/")
        elif path.name != "__init__.py":
            names.add(path.relative_to(package).with_suffix("").as_posix())
    return names


def test_every_module_is_in_the_design_map_and_nothing_else():
    documented, code = documented_modules(DESIGN.read_text(encoding="utf-8")), code_modules(PACKAGE)
    assert not code - documented, (
        f"modules missing from docs/design.md's module map: {sorted(code - documented)}"
    )
    assert not documented - code, (
        f"docs/design.md names modules that do not exist: {sorted(documented - code)}"
    )


def test_the_map_check_catches_a_missing_and_a_stale_module(tmp_path):
    """The control: a tree with one module more and one less than its map."""
    (tmp_path / "serving" / "migrations" / "versions").mkdir(parents=True)
    for name in ("errors.py", "serving/api.py", "serving/new.py", "serving/migrations/env.py"):
        (tmp_path / name).write_text("")
    (tmp_path / "serving" / "migrations" / "versions" / "0001.py").write_text("")
    text = "## Module map\n```\nserving/  api gone migrations/\nxraytriage/ errors\n```\n"
    assert code_modules(tmp_path) - documented_modules(text) == {"serving/new"}
    assert documented_modules(text) - code_modules(tmp_path) == {"serving/gone"}


def test_the_layers_block_is_the_import_linter_contract():
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    enforced = [
        [name.strip().removeprefix("xraytriage.") for name in line.split("|")]
        for line in config["importlinter:contract:layers"]["layers"].strip().splitlines()
    ]
    drawn = [
        [name.strip() for name in line.split("  ")[0].split("|")]
        for line in _block_after(DESIGN.read_text(encoding="utf-8"), "## Layers").splitlines()
        if line.strip() and line.strip() != "│"
    ]
    assert drawn == enforced
