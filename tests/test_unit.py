"""Runs every case of every C unit-test binary (tests/unit/test_*.c) as its
own pytest item, so a failing table row is reported by name."""
import os
import subprocess

import pytest

UNIT_DIR = os.environ.get("SESRELAY_UNIT_DIR", "build/release/tests/unit")
SRCDIR = os.environ.get("SESRELAY_SRCDIR", ".")


def _cases():
    out = []
    if not os.path.isdir(UNIT_DIR):
        return out
    for name in sorted(os.listdir(UNIT_DIR)):
        path = os.path.join(UNIT_DIR, name)
        if not name.startswith("test_") or name.endswith((".o", ".d")) or not os.access(path, os.X_OK):
            continue
        listed = subprocess.run([path, "--list"], capture_output=True, text=True, check=True)
        out += [(name, c) for c in listed.stdout.split()]
    return out


CASES = _cases()


def test_unit_binaries_exist():
    assert CASES, f"no unit test binaries in {UNIT_DIR}: run make first"


@pytest.mark.parametrize("binary,case", CASES, ids=[f"{b}:{c}" for b, c in CASES])
def test_unit(binary, case):
    env = dict(os.environ, SESRELAY_SRCDIR=SRCDIR)
    r = subprocess.run([os.path.join(UNIT_DIR, binary), case], capture_output=True, text=True,
                       timeout=120, cwd=SRCDIR, env=env)
    assert r.returncode == 0 and "FAIL" not in r.stderr, r.stdout + r.stderr
    assert "runtime error:" not in r.stderr and "Sanitizer" not in r.stderr, r.stderr
    for line in (r.stdout + r.stderr).splitlines():
        if line.startswith(f"skip {case}:"):
            pytest.skip(line.split(":", 1)[1].strip())
