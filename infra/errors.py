"""Errors that say whose fault a failure is, so the CLI can answer with the right exit code.

- `InputError`: the lake's data or the request is wrong (a missing partition, too little data, an
  unknown model). The user fixes the input; nothing is wrong with the job.
- A job that raises anything else while it runs has failed; its attempt leaves a failure note and
  nothing visible. `mark_failed_run` tags such an exception with the attempt it ended.
"""

from __future__ import annotations


class InputError(ValueError):
    """The input or request cannot be served as asked; the message says what to change."""


FAILED_RUN_ATTRIBUTE = "lakelens_failed_run"


def mark_failed_run(exc: BaseException, job: str, run_id: str, attempt_id: str) -> None:
    """Remember on the exception which attempt it ended (read back by `failed_run_of`)."""
    try:
        setattr(exc, FAILED_RUN_ATTRIBUTE, f"{job} {run_id} attempt {attempt_id}")
    except AttributeError:  # some C-level exceptions take no attributes; the failure note still exists
        pass


def failed_run_of(exc: BaseException) -> str | None:
    return getattr(exc, FAILED_RUN_ATTRIBUTE, None)
