"""Shared fixtures: start the real sesrelay binary with a private config and
spool, talk to it over loopback, and stop it by PID.

Every daemon a test starts is stopped at teardown; its log is checked for
sanitizer reports (make asan) so a memory error anywhere fails the test that
triggered it.
"""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))

from relayharness import Relay, free_port, SmtpConn  # noqa: E402,F401

BIN = os.environ.get("SESRELAY_BIN") or os.path.join(
    os.path.dirname(__file__), "..", "sesrelay")


@pytest.fixture
def relay_factory(tmp_path):
    started = []

    def make(extra="", listeners=None, start=True, **kw):
        r = Relay(tmp_path / f"r{len(started)}", extra=extra, listeners=listeners, **kw)
        started.append(r)
        if start:
            r.start()
        return r

    yield make
    problems = []
    for r in started:
        r.stop()
        problems += r.sanitizer_reports()
    assert not problems, "sanitizer reports:\n" + "\n".join(problems)


@pytest.fixture
def relay(relay_factory):
    """A relay with one plain listener on loopback, relay_networks = loopback."""
    return relay_factory()
