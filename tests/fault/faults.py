"""The fault suite's harness: run one bad input through the CLI and classify what happened.

Every case ends in one of three outcome classes, recorded on the test (``user_properties``) and totalled in the
terminal summary by ``tests/conftest.py``:

- ``error``: exit status 2 and exactly one stderr line, ``textseg: error: ...``, naming what to fix; no traceback.
- ``skip``: the run goes on and the bad item is counted (and logged), never silently dropped.
- ``ok``: the run succeeds and its output is correct (the case asserts what "correct" means).

A case that raises anything but :class:`~textseg.errors.UserError` out of ``main`` fails the test with the
traceback: that is the outcome the suite exists to catch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pytest

from textseg.cli import main

TINY = ["--model", "tiny", "--no-pretrained"]


@dataclass
class Run:
    rc: int
    out: str
    err: str


class Fault:
    """The ``fault`` fixture: runs the CLI in this process and asserts the outcome class of a case."""

    def __init__(self, capsys: pytest.CaptureFixture, record) -> None:
        self._capsys = capsys
        self._record = record

    def run(self, argv: Sequence[str]) -> Run:
        self._capsys.readouterr()
        rc = main([str(a) for a in argv])
        captured = self._capsys.readouterr()
        return Run(rc, captured.out, captured.err)

    def error(self, argv: Sequence[str], *fragments: str) -> Run:
        """Assert a clean one-line error (exit 2) whose message contains every fragment (case-insensitive)."""
        r = self.run(argv)
        lines = [line for line in r.err.splitlines() if line.strip() and not line.startswith(("WARNING", "INFO"))]
        assert r.rc == 2, f"exit {r.rc}, expected 2; stderr:\n{r.err}"
        assert "Traceback" not in r.err, r.err
        assert len(lines) == 1 and lines[0].startswith("textseg: error: "), f"not one error line:\n{r.err}"
        for fragment in fragments:
            assert fragment.lower() in lines[0].lower(), f"{fragment!r} not in {lines[0]!r}"
        self._record("fault", "error")
        return r

    def skip(self, run: Run | None = None) -> None:
        """Record a counted skip; the case itself asserts the count and that nothing else was lost."""
        if run is not None:
            assert "Traceback" not in run.err, run.err
        self._record("fault", "skip")

    def ok(self, argv: Sequence[str] | None = None) -> Run | None:
        """Assert exit 0 with no traceback (when ``argv`` is given); the case asserts the output is correct."""
        r = None
        if argv is not None:
            r = self.run(argv)
            assert r.rc == 0, f"exit {r.rc}; stderr:\n{r.err}"
            assert "Traceback" not in r.err, r.err
        self._record("fault", "ok")
        return r


@pytest.fixture
def fault(capsys, record_property) -> Fault:
    return Fault(capsys, record_property)
