"""The architecture rules hold: the import contract of .importlinter (docs/design.md's layers)
and the light modules that must not pull in torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tool_support import skip_missing

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src")}


def test_import_contract_is_kept() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    if not lint_imports.exists():
        skip_missing("import-linter is not installed (pip install -e '.[dev]')")
    done = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_parser_and_triage_engine_load_without_torch() -> None:
    """The CLI's parser (every subcommand, defaults included) and the triage engine that decoder
    processes import stay free of torch: ``xraytriage --help`` is instant and decoders small."""
    code = (
        "import sys; from xraytriage.cli.main import build_parser; build_parser();"
        "import xraytriage.triage.engine, xraytriage.models.predictor;"
        "print(sorted(m for m in ('torch', 'monai', 'onnxruntime') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
