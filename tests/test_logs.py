"""Structured logging: JSON lines with context and progress, readable text, clear errors, idempotent set-up."""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timezone

import pytest

from lakelens.infra.logs import configure_logging, log_context, progress, timed_step


@pytest.fixture(autouse=True)
def restore_lakelens_logger():
    """configure_logging changes the process-wide "lakelens" logger; put it back for the other tests."""
    logger = logging.getLogger("lakelens")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_lines_carry_merged_context_and_structured_fields(capsys):
    configure_logging("INFO", "json")
    log = logging.getLogger("lakelens.operators.example")
    with log_context(job="build-sequences", run_id="r1"):
        with log_context(attempt_id="a1", stage="features"):
            progress(log, "shards", 3, 10)
            log.info("wrote %d rows", 5, extra={"elapsed_s": 1.5, "sizes": {"rows": 5}})
        log.info("after the stage")
    log.info("outside")
    first, second, third, fourth = _json_lines(capsys.readouterr().err)

    assert first["message"] == "shards: 3/10"
    assert first["progress"] == {"done": 3, "total": 10}
    assert first["level"] == "INFO" and first["logger"] == "lakelens.operators.example"
    assert {k: first[k] for k in ("job", "run_id", "attempt_id", "stage")} == {
        "job": "build-sequences", "run_id": "r1", "attempt_id": "a1", "stage": "features"}
    ts = datetime.fromisoformat(first["ts"])
    assert ts.utcoffset() == timezone.utc.utcoffset(None)
    assert abs((datetime.now(timezone.utc) - ts).total_seconds()) < 60

    assert second["message"] == "wrote 5 rows" and second["elapsed_s"] == 1.5 and second["sizes"] == {"rows": 5}
    assert third["job"] == "build-sequences" and "stage" not in third and "attempt_id" not in third
    assert not {"job", "run_id", "attempt_id", "stage"} & set(fourth)


def test_json_includes_the_traceback_and_timed_steps_report_elapsed_seconds(capsys):
    configure_logging("DEBUG", "json")
    log = logging.getLogger("lakelens.jobs")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("step failed")
    with timed_step(log, "write") as step:
        step["rows"] = 7
    with pytest.raises(KeyError):
        with timed_step(log, "read"):
            raise KeyError("x")
    failed, started, done, read_started, read_failed = _json_lines(capsys.readouterr().err)

    assert failed["level"] == "ERROR" and "RuntimeError: boom" in failed["traceback"]
    assert failed["traceback"].startswith("Traceback")
    assert started["message"] == "write: started" and started["step"] == "write"
    assert done["message"].startswith("write: done in ") and done["rows"] == 7 and done["elapsed_s"] >= 0
    assert read_failed["level"] == "WARNING" and read_failed["message"].startswith("read: failed after")


def test_text_format_is_one_readable_line_with_job_and_stage(capsys):
    configure_logging("info", "text")
    log = logging.getLogger("lakelens.runs")
    with log_context(job="cluster-behaviour", run_id="r9", stage="assign"):
        progress(log, "epochs", 2, 40)
    log.debug("hidden at INFO")
    log.warning("no context")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"\d\d:\d\d:\d\d INFO lakelens\.runs \[cluster-behaviour assign\] epochs: 2/40", lines[0])
    assert re.fullmatch(r"\d\d:\d\d:\d\d WARNING lakelens\.runs no context", lines[1])


@pytest.mark.parametrize("level, fmt, named", [("LOUD", "text", "'LOUD'"), ("INFO", "yaml", "'yaml'")])
def test_an_unknown_level_or_format_is_an_error_naming_it(level, fmt, named):
    with pytest.raises(ValueError, match=named):
        configure_logging(level, fmt)


def test_configuring_twice_gives_one_line_per_record_in_the_latest_format(capsys):
    configure_logging("INFO", "text")
    configure_logging("INFO", "json")
    logging.getLogger("lakelens.x").info("once")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["message"] == "once"


def test_records_from_other_loggers_are_left_alone(capsys):
    configure_logging("DEBUG", "json")
    logging.getLogger("ray.data").info("not ours")
    assert capsys.readouterr().err == ""
