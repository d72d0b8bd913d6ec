"""Structured logs for the "lakelens" logger hierarchy.

    configure_logging("INFO", "json")              # once, in the driver (the CLI)
    with log_context(job="build-sequences", run_id=run_id):
        with log_context(stage="features"):        # nested contexts merge
            log.info("...")                        # carries job, run_id and stage
    progress(log, "shards", 3, 10)                 # "shards: 3/10", progress={"done": 3, "total": 10}
    with timed_step(log, "write") as step:         # "write: started" ... "write: done in 1.2 s"
        step["rows"] = n                           # extra fields for the closing line

Only "lakelens" gets a handler (on stderr, not propagated): Ray configures its own loggers and
the root logger belongs to whoever embeds us. Operators log with plain `logging.getLogger(__name__)`
and structured `extra=` fields; this module is what turns those into JSON lines.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any, Iterator

ROOT = "lakelens"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")
CONTEXT_FIELDS = ("job", "run_id", "attempt_id", "stage")

_context: ContextVar[dict[str, Any]] = ContextVar("lakelens_log_context", default={})
# every attribute a plain LogRecord has; anything else on a record came from `extra=`
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Fields (job, run_id, attempt_id, stage, ...) carried by every record logged inside; None removes one."""
    merged = {**_context.get(), **fields}
    token = _context.set({k: v for k, v in merged.items() if v is not None})
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    return dict(_context.get())


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Log the "lakelens" hierarchy to stderr as readable text or JSON lines; calling again replaces the setup."""
    name = str(level).upper()
    if name not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; use one of {', '.join(FORMATS)}")
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(name)
    logger.propagate = False  # or a root handler (basicConfig, a host app) prints every line twice


def progress(logger: logging.Logger, step: str, done: int, total: int, level: int = logging.INFO,
             **extra: Any) -> None:
    """One "step: done/total" line with a structured progress field."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s: %d/%d", step, done, total,
                   extra={"step": step, "progress": {"done": int(done), "total": int(total)}, **extra})


@contextmanager
def timed_step(logger: logging.Logger, step: str, level: int = logging.INFO) -> Iterator[dict[str, Any]]:
    """Log the step's start and end with elapsed_s; the yielded dict adds fields to the end line."""
    fields: dict[str, Any] = {}
    logger.log(level, "%s: started", step, extra={"step": step})
    started = time.perf_counter()
    try:
        yield fields
    except BaseException:
        elapsed = time.perf_counter() - started
        # the traceback is logged once, by whoever handles the error
        logger.warning("%s: failed after %.1f s", step, elapsed, extra={**fields, "step": step,
                                                                         "elapsed_s": round(elapsed, 3)})
        raise
    elapsed = time.perf_counter() - started
    logger.log(level, "%s: done in %.1f s", step, elapsed, extra={**fields, "step": step,
                                                                  "elapsed_s": round(elapsed, 3)})


def record_extra(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a call passed through `extra=`."""
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """`12:03:04 INFO lakelens.jobs [build-sequences features] message`."""

    def format(self, record: logging.LogRecord) -> str:
        context = _context.get()
        tags = " ".join(str(context[k]) for k in ("job", "stage") if k in context)
        when = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{when} {record.levelname} {record.name} {f'[{tags}] ' if tags else ''}{record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (ISO, UTC), level, logger, message, context, extra fields, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        # a call's own fields win over the context's; neither may replace the four above
        for key, value in {**_context.get(), **record_extra(record)}.items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=_jsonable)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (pytest and notebooks swap it), not the one at set-up."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _jsonable(value: Any) -> Any:
    # numpy scalars and arrays, paths, dataclasses: whatever a call passed in `extra`
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
