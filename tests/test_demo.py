"""`make demo` (SPEC 9) end to end: the emulator starts, sesrelay delivers the
sample message to it, and the script prints where to look."""
import os
import subprocess

from relayharness import free_port

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_make_demo_delivers_to_the_emulator(tmp_path):
    env = dict(os.environ, SES_PORT=str(free_port()), SMTP_PORT=str(free_port()),
               SESRELAY_DEMO_DIR=str(tmp_path), CI="true")
    p = subprocess.run([os.path.join(ROOT, "tests", "demo", "run")], cwd=ROOT, env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Delivered." in p.stdout
    assert f"http://127.0.0.1:{env['SES_PORT']}/" in p.stdout
    assert "status=sent (MessageId ses-" in p.stdout
