"""Under CI=true a skip for a missing tool or missing shared data fails; locally it stays a skip.

Runs pytest in a subprocess on small generated test files that use tests/conftest.py's hooks and
tool_support's helpers, once with CI=true and once without.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

CONFTEST = f"""
import importlib.util
spec = importlib.util.spec_from_file_location("repo_conftest", {str(TESTS / "conftest.py")!r})
repo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(repo)
pytest_runtest_makereport = repo.pytest_runtest_makereport
pytest_make_collect_report = repo.pytest_make_collect_report
shared_data = repo.shared_data
"""

TESTS_FILE = """
import pytest
from tool_support import skip_missing, skipif_missing

def test_needs_a_tool():
    skip_missing("frobnicator is not installed")

@skipif_missing(True, "gizmo is not installed")
def test_marked_for_a_tool():
    pass

def test_needs_shared_data(shared_data):
    pass

def test_intentional_skip():
    pytest.skip("too few cases in this data")

def test_plain():
    assert True
"""

MODULE_LEVEL = """
from tool_support import importorskip_tool
importorskip_tool("no_such_module_xraytriage_ci", "no_such_module is not installed")

def test_never_collected():
    pass
"""


def _run(folder: Path, ci: str | None) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(REPO / "src"), env.get("PYTHONPATH", "")])
    env["XRAYTRIAGE_SHARED_DATA"] = str(folder / "no-shared-data-here")
    if ci is not None:
        env["CI"] = ci
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", "--continue-on-collection-errors", str(folder)],
        cwd=folder, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    last = done.stdout.strip().splitlines()[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", last)}
    counts["errors"] = counts.pop("error", 0) + counts.pop("errors", 0)
    counts["output"] = done.stdout  # type: ignore[assignment]
    return counts


def _write(folder: Path) -> None:
    (folder / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (folder / "conftest.py").write_text(CONFTEST, encoding="utf-8")
    (folder / "test_tools.py").write_text(TESTS_FILE, encoding="utf-8")
    (folder / "test_module_level.py").write_text(MODULE_LEVEL, encoding="utf-8")


@pytest.mark.slow  # over 3 s: runs pytest / a DICOM node end to end
def test_missing_tools_fail_under_ci_and_skip_otherwise(tmp_path: Path) -> None:
    _write(tmp_path)
    local = _run(tmp_path, None)
    assert (local.get("passed"), local.get("skipped"), local.get("failed", 0), local["errors"]) == (
        1,
        5,
        0,
        0,
    ), local["output"]
    ci = _run(tmp_path, "true")
    out = ci["output"]
    # the tool, the mark, the shared data and the module-level import all go red (setup-time and
    # collection-time ones count as errors); the intentional skip stays a skip
    assert (ci.get("passed"), ci.get("skipped"), ci.get("failed", 0) + ci["errors"]) == (1, 1, 4), out
    assert "CI=true and this test would skip" in out
    assert "frobnicator is not installed" in out and "gizmo is not installed" in out
    assert "shared data not found" in out and "no_such_module is not installed" in out
    assert re.search(r"SKIPPED .*too few cases in this data", out), out
