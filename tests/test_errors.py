"""Every error class lives in xraytriage.errors (the scan follows base classes across modules, so
``class X(SomeOtherError)`` counts); one "file not found" type names the file."""

from __future__ import annotations

import ast
import builtins
import pickle
from pathlib import Path

import pytest

import xraytriage
from xraytriage.errors import ConfigError, MissingFileError, XRayTriageError

PACKAGE = Path(xraytriage.__file__).parent
ERRORS = PACKAGE / "errors.py"
BUILTIN_EXCEPTIONS = {
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
}
# Library exception bases: a class derived from one of them is an exception class too.
LIBRARY_EXCEPTIONS = {"HTTPException", "SQLAlchemyError", "ValidationError"}


def _base_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _classes(path: Path) -> list[tuple[str, list[str], int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        (node.name, [b for b in map(_base_name, node.bases) if b], node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
    ]


def exception_classes_outside(package: Path, errors_file: Path) -> list[str]:
    """``path:line class`` for every exception class defined outside ``errors_file``."""
    exceptions = BUILTIN_EXCEPTIONS | LIBRARY_EXCEPTIONS | {name for name, _, _ in _classes(errors_file)}
    found = {path: _classes(path) for path in sorted(package.rglob("*.py")) if path != errors_file}
    outside: dict[str, str] = {}
    changed = True
    while changed:  # a class whose base is an exception is one too, wherever that base lives
        changed = False
        for path, classes in found.items():
            for name, bases, line in classes:
                key = f"{path.relative_to(package.parent)}:{line} {name}"
                if key not in outside and any(base in exceptions for base in bases):
                    outside[key] = name
                    exceptions.add(name)
                    changed = True
    return sorted(outside)


def test_every_exception_class_is_in_errors_py():
    assert exception_classes_outside(PACKAGE, ERRORS) == []


def test_the_scan_finds_an_exception_class_outside_errors_py(tmp_path):
    """The control: a package with exceptions outside its errors.py, directly and by inheritance."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "errors.py").write_text("class BaseError(Exception):\n    pass\n")
    (package / "a.py").write_text(
        "import errors\n\nclass Full(OSError):\n    pass\n\nclass Plain:\n    pass\n"
    )
    (package / "sub" / "b.py").write_text(
        "class Refused(errors.BaseError):\n    pass\n\nclass Late(Full):\n    pass\n"
    )
    found = exception_classes_outside(package, package / "errors.py")
    assert [entry.split(" ")[1] for entry in found] == ["Full", "Refused", "Late"]


@pytest.mark.parametrize(
    "call",
    [
        lambda p: __import__("xraytriage.models", fromlist=["load_checkpoint"]).load_checkpoint(p),
        lambda p: __import__("xraytriage.train.config", fromlist=["load_config"]).load_config(p),
        lambda p: __import__("xraytriage.data.csv_dataset", fromlist=["CSVDataset"]).CSVDataset(p),
    ],
)
def test_one_missing_file_type_names_the_file(tmp_path, call):
    missing = tmp_path / "nowhere.file"
    with pytest.raises(MissingFileError) as caught:
        call(missing)
    assert str(caught.value).startswith(f"{missing}: ") and str(caught.value).endswith("not found")
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, XRayTriageError)
    again = pickle.loads(pickle.dumps(caught.value))
    assert (again.path, again.what) == (caught.value.path, caught.value.what)
