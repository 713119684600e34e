"""Issue 26: what a newcomer's first hour hits on the command line: an 80-column console,
progress that suits a log file, one ``--model`` rule, and paths checked before any work."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from xraytriage.cli.main import main
from xraytriage.errors import MissingFileError, UnknownModelError
from xraytriage.progress import LineProgress, progress_bar
from xraytriage.triage.console import print_worklist, short_study
from xraytriage.triage.worklist import WorklistRow, sort_worklist

REPO = Path(__file__).resolve().parents[1]
UID = "1.2.276.0.7230010.3.1.2.8323329.6904.1517875201.850818"
LONG_FINDINGS = (
    "Pleural Thickening 0.91; Consolidation 0.84; Infiltration 0.77; Cardiomegaly 0.66; Effusion 0.51"
)


def _rows(site: bool = False) -> list[WorklistRow]:
    rows = [
        WorklistRow(study=UID, path="/pacs/in/a.dcm", priority=0.9, abnormal=0.9, flagged=True,
                    findings=LONG_FINDINGS),
        WorklistRow(study="/data/incoming/ward-7/night-shift/patient00042/00001301_009.png",
                    path="/data/incoming/ward-7/night-shift/patient00042/00001301_009.png",
                    priority=0.7, abnormal=0.7, flagged=False, warnings="low resolution: 200 x 180 px"),
        WorklistRow(study="b.png", path="b.png", priority=0.3, abnormal=0.3, flagged=False),
    ]  # fmt: skip
    if site:
        rows[2].priority, rows[2].site_priority = 0.95, 0.95
    return sort_worklist(rows)


def _printed(rows, width: int = 80, wide: bool = False) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    print_worklist(rows, len(rows), 2.0, top=10, console=console, wide=wide)
    return console.export_text()


def test_the_worklist_fits_80_columns_with_every_finding_in_full():
    text = _printed(_rows())
    assert max(len(line) for line in text.splitlines()) <= 80, text
    flat = " ".join(text.split())
    for name, p in re.findall(r"([A-Z][a-z]+(?: [A-Z][a-z]+)?) (0\.\d\d)", LONG_FINDINGS):
        assert f"{name} {p}" in flat, (name, text)
    assert "…" not in text.split("findings:")[1].split("\n")[0]
    assert "00001301_009.png" in text and "low resolution" in text
    uid_key = short_study(UID)
    assert (
        uid_key in text and len(uid_key) <= 24 and uid_key.startswith("1.2.") and UID.endswith(uid_key[-6:])
    )
    header = text.splitlines()[1]
    assert "P(abn)" in header and "priority" not in header  # equal to P(abnormal) here: one column


def test_a_raised_priority_gets_its_own_column_and_wide_shows_everything_on_one_line():
    narrow = _printed(_rows(site=True))
    assert "priority" in narrow.splitlines()[1] and "site 0.95" in narrow
    wide = _printed(_rows(), width=80, wide=True)
    lines = wide.splitlines()
    assert any(
        UID in line and "Pleural Thickening 0.91" in line and "Effusion 0.51" in line for line in lines
    )
    assert any(line.rstrip().endswith("patient00042/00001301_009.png") or "ward-7" in line for line in lines)


def test_short_study_keeps_the_file_name_and_what_fits_of_its_folders():
    key = short_study("/very/long/folder/name/that/goes/on/patient00001/study1", 24)
    assert key.endswith("patient00001/study1") and len(key) <= 24
    assert short_study("b.png") == "b.png"
    assert len(short_study("/x/" + "a" * 40 + ".png")) == 24


def test_progress_to_a_log_file_is_one_line_not_thousands_of_redraws():
    log = io.StringIO()
    bar = progress_bar(total=5000, desc="epoch 1/3", unit="batch", file=log)
    assert isinstance(bar, LineProgress)
    for _ in range(5000):
        bar.update(1)
        bar.set_postfix(loss="0.1234")
    bar.close()
    assert log.getvalue().count("\n") == 1 and "\r" not in log.getvalue()
    assert "epoch 1/3: 5000/5000 batch" in log.getvalue() and "loss=0.1234" in log.getvalue()
    transient = io.StringIO()
    for _ in progress_bar(range(300), desc="batches", leave=False, file=transient):
        pass
    assert transient.getvalue() == ""  # the epoch's own log line says it


@pytest.mark.slow  # the CLI as a subprocess, end to end
def test_triage_piped_to_a_file_writes_one_progress_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "xraytriage.cli.main", "demo", "--output", str(tmp_path / "demo"), "--workers", "0"],
        capture_output=True, text=True, timeout=300, env=_env(),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stderr and out.stderr.count("triage:") == 1, out.stderr
    assert all(len(line.rstrip()) <= 80 for line in out.stdout.splitlines()), out.stdout
    assert re.search(r"^\s+6\s.*siim_cr_chest_pa\.dcm\s+\(not from NIH", out.stdout, re.M), out.stdout


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO / "src"), COLUMNS="80")


# --- one --model rule ----------------------------------------------------------------------------
def test_every_name_of_the_bundled_model_resolves_to_it(tmp_path):
    from xraytriage.cli.common import resolve_model_path
    from xraytriage.models.checkpoint import load_checkpoint
    from xraytriage.models.published import BUNDLED_MODEL, BUNDLED_NAME, load_model, resolve_model
    from xraytriage.serving.config import ServeConfig

    for value in (None, "default", BUNDLED_NAME):
        assert resolve_model(value) == BUNDLED_MODEL
        assert resolve_model_path(value) == BUNDLED_MODEL
    assert ServeConfig(data_dir=tmp_path).model_file == BUNDLED_MODEL
    assert ServeConfig(data_dir=tmp_path, model_path="default").model_file == BUNDLED_MODEL
    assert load_checkpoint(BUNDLED_MODEL).name == BUNDLED_NAME  # the name the web header shows
    assert load_model("default").name == BUNDLED_NAME


def test_a_wrong_model_lists_the_names_it_takes(tmp_path):
    from xraytriage.models.published import resolve_model

    for bogus in ("densenet121", str(tmp_path / "nope.pt")):
        with pytest.raises(UnknownModelError) as caught:
            resolve_model(bogus, cache=tmp_path)
        message = str(caught.value)
        assert bogus in message and "nih-default-compact" in message and "default" in message
        assert "densenet121-res224-all" in message and "models fetch" in message
    assert isinstance(caught.value, MissingFileError)
    with pytest.raises(Exception, match="not a folder"):
        resolve_model(tmp_path)


def test_triage_of_a_missing_folder_fails_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["triage", str(tmp_path / "incomming"), "--output", str(out), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "incomming: not found" in captured.err and captured.out == "" and not out.exists()
    (tmp_path / "empty").mkdir()
    assert main(["triage", str(tmp_path / "empty"), "--output", str(out), "--no-progress"]) == 1
    assert "no image files" in capsys.readouterr().err and not out.exists()


def test_demo_into_an_existing_file_is_a_clear_error(tmp_path, capsys):
    target = tmp_path / "worklist.txt"
    target.write_text("keep me")
    assert main(["demo", "--output", str(target)]) == 2
    captured = capsys.readouterr()
    assert "--output must be a folder" in captured.err and str(target) in captured.err
    assert "Traceback" not in captured.err and captured.out == "" and target.read_text() == "keep me"


def test_serve_with_a_bogus_model_fails_before_making_its_data_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["serve", "--model", "bogus", "--data-dir", str(tmp_path / "data")]) == 2
    assert "bogus" in capsys.readouterr().err and not (tmp_path / "data").exists()
    assert main(["serve", "--model", "bogus"]) == 2
    assert list(tmp_path.iterdir()) == []


def test_serve_keeps_its_data_where_make_serve_does_and_git_ignores_it():
    from xraytriage.serving.config import DEFAULT_DATA_DIR

    makefile = (REPO / "Makefile").read_text()
    assert f"serve --data-dir {DEFAULT_DATA_DIR.as_posix()}" in makefile
    ignored = subprocess.run(["git", "check-ignore", "-q", str(DEFAULT_DATA_DIR / "xraytriage.db")], cwd=REPO)
    assert ignored.returncode == 0


def test_a_label_csv_given_to_the_nih_kind_names_the_flags_and_suggests_the_csv_kind(tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("path,Mass\na.png,1\n")
    assert main(["evaluate", "--dataset", "nih", "--csv", str(labels), "--output", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert "--csv" in err and "--data-entry" in err and "--dataset csv" in err
    assert "data_entry" not in err and "split_file" not in err
    assert not (tmp_path / "ev").exists()


def test_evaluate_defaults_to_the_bundled_model(tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("path,Mass\nmissing.png,1\n")
    main(["evaluate", "--dataset", "csv", "--csv", str(labels), "--output", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert "--model" not in err and "exactly one of" not in err


def test_models_list_puts_the_bundled_model_first_with_a_legend(tmp_path, capsys):
    assert main(["models", "list", "--cache", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert "[bundled]" in lines[0] and "[not fetched]" in text.split("\n\n")[0]
    entries = [line for line in lines if re.match(r"^\S+  \[", line)]
    assert entries[0].startswith("nih-default-compact  [bundled]")
    assert all("[not fetched]" in e for e in entries[1:]) and "[-]" not in text
    assert all(len(line) <= 80 for line in lines if "https://" not in line)
    assert main(["models", "show", "densenet121-res224-nih", "--cache", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert "not fetched" in shown and str(tmp_path / "models" / "densenet121-res224-nih") in shown


def test_a_service_start_logs_no_alembic_info_lines(tmp_path, caplog):
    import logging

    from sqlalchemy import create_engine

    from xraytriage.serving.migrations import head, upgrade

    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with caplog.at_level(logging.INFO):
        upgrade(engine)
        upgrade(engine)  # a restart: nothing to migrate
    alembic = [r for r in caplog.records if r.name.startswith("alembic")]
    ours = [r.getMessage() for r in caplog.records if r.name == "xraytriage.serving.migrations"]
    assert alembic == [] and ours == [f"database schema migrated from revision (empty) to {head()}"]
    engine.dispose()


def test_datasets_inspect_fits_80_columns_without_cutting_a_cell(shared_data, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    root = shared_data / "nih"
    assert main(["datasets", "inspect", "nih", "--root", str(root), "--folds", "5", "--skip-file-check"]) == 0
    text = capsys.readouterr().out
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text and "(part 2 of" in text
    collections = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "meta")
    assert all(name in text for name in collections)
    assert "Pleural Thickening" in text and "fold 4" in text
    assert main(["datasets", "inspect", "nih", "--root", str(root), "--skip-file-check", "--wide"]) == 0
    assert "(part" not in capsys.readouterr().out


@pytest.mark.slow
def test_a_fresh_process_opening_the_database_prints_no_alembic_lines(tmp_path):
    """What `serve` does at start, in a new process (alembic logs some lines while imported)."""
    code = (
        "from xraytriage.logconfig import configure_logging; configure_logging('info');"
        "from sqlalchemy import create_engine; from xraytriage.serving.migrations import upgrade;"
        f"upgrade(create_engine('sqlite:///{tmp_path / 'x.db'}'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env()
    )
    assert out.returncode == 0, out.stderr
    assert "alembic" not in out.stderr and "database schema migrated" in out.stderr, out.stderr
