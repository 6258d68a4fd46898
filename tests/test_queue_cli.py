"""`sesrelay queue list|show|delete|flush|hold|release` (SPEC section 2)
against a running daemon (through SPOOL/control.sock) and against a stopped
one (the files, read-only for list/show), delivering to tests/lib/fake_ses.py.

Also: delete and hold while a delivery attempt is in flight, the control
socket's permissions, and the spool lock that keeps a second daemon off a
spool.
"""
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time

import pytest

from fake_ses import UNAVAILABLE_503, Fault
from relayharness import ASAN, BIN, Relay
from test_delivery import (BASE_ENV, MSG, _deferred_for_an_hour, deferred_rx, fake,  # noqa: F401
                           queued, sent_rx, ses_relay, settle, submit, submit_many,
                           wait_delivered, wait_for)

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")


def cli_env():
    e = dict(os.environ)
    if ASAN:
        e.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        e.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    return e


def q(relay, *args, user=None, timeout=30):
    """Run `sesrelay -c CONFIG queue ARGS...`; returns the CompletedProcess (text)."""
    cmd = [BIN, "-c", relay.config, "queue", *args]
    if user is not None:
        cmd = ["runuser", "-u", user, "--"] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=cli_env())
    assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr
    return p


def ok(relay, *args, **kw):
    p = q(relay, *args, **kw)
    assert p.returncode == 0, (args, p.returncode, p.stdout, p.stderr)
    return p.stdout


def qlist(relay):
    """`queue list --json`, by id."""
    return {m["id"]: m for m in json.loads(ok(relay, "list", "--json"))}


def table(relay):
    """`queue list` as (header, rows split on 2+ spaces, footer)."""
    lines = ok(relay, "list").splitlines()
    return lines[0], [re.split(r"\s{2,}", l) for l in lines[1:-1]], lines[-1]


def file_size(relay, qid):
    return os.path.getsize(os.path.join(relay.spool, "queue", qid))


def state_file(relay, qid):
    try:
        with open(os.path.join(relay.spool, "state", qid)) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def sends(fake):
    return len(fake.send_requests())


def failing_relay(ses_relay, fake, fault=UNAVAILABLE_503):
    """A relay whose every call fails transiently and that waits an hour to retry."""
    fake.fail_always(fault)
    return ses_relay(retry_initial="1h", retry_max="2h", lifetime="1d")


# --- list and show against a running daemon --------------------------------------

def test_list_text_and_json(ses_relay, fake):
    odd = Fault(503, "ServiceUnavailable", 'Try "later" \\ or not \u2014 caf\u00e9')
    r = failing_relay(ses_relay, fake, odd)
    before = time.time()
    a, b = submit_many(r, [("alice@example.com", ["bob@example.net", "carol@example.org"], MSG),
                           ("", ["dave@example.net"], MSG)])
    r.wait_log(deferred_rx(a, "bob@example.net"))
    r.wait_log(deferred_rx(b, "dave@example.net"))

    got = qlist(r)
    assert set(got) == {a, b}
    ma, mb = got[a], got[b]
    assert ma["sender"] == "alice@example.com" and mb["sender"] == ""
    assert (ma["recipients"], ma["recipients_left"]) == (2, 2)
    assert (mb["recipients"], mb["recipients_left"]) == (1, 1)
    assert ma["size"] == file_size(r, a) and mb["size"] == file_size(r, b)
    assert ma["attempts"] == 1 and ma["state"] == "deferred" and ma["held"] is False
    assert before - 1 <= ma["arrival"] <= time.time() and 0 <= ma["age"] < 30
    # retry_initial = 1h with +-20% jitter
    assert 0.75 * 3600 < ma["next_try"] - time.time() < 1.25 * 3600, ma
    assert 'Try "later" \\ or not' in ma["last_error"], ma["last_error"]  # JSON escapes
    assert "503" in ma["last_error"]

    head, rows, foot = table(r)
    assert head.split() == ["ID", "AGE", "SIZE", "SENDER", "RCPTS-LEFT", "ATTEMPTS", "NEXT-TRY",
                            "LAST-ERROR"]
    rows = {row[0]: row for row in rows}
    assert set(rows) == {a, b}
    assert rows[a][2:7] == [str(file_size(r, a)), "alice@example.com", "2/2", "1",
                            rows[a][6]]
    assert re.fullmatch(r"in (4[5-9]|[5-7]\d)m", rows[a][6]), rows[a]
    assert rows[b][3] == "<>" and rows[b][4] == "1/1"
    assert "503" in rows[a][7]
    assert foot == f"-- 2 messages, {file_size(r, a) + file_size(r, b)} bytes"


def test_list_empty(ses_relay, fake):
    r = ses_relay()
    assert ok(r, "list").strip() == "Mail queue is empty"
    assert json.loads(ok(r, "list", "--json")) == []


def test_show(ses_relay, fake):
    r, qid = _deferred_for_an_hour(ses_relay, fake)
    out = ok(r, "show", qid)
    assert re.search(rf"(?m)^id: +{qid}$", out)
    assert re.search(r"(?m)^state: +deferred, next try in \d+m", out), out
    assert re.search(r"(?m)^sender: +<alice@example.com>$", out)
    assert re.search(r"(?m)^attempts: +1$", out)
    assert re.search(r"(?m)^last error: +.*503", out)
    assert re.search(r"(?m)^recipients: +1 of 1 left$", out)
    assert re.search(r"(?m)^  <bob@example.net> +pending$", out)
    assert re.search(r"(?m)^  Subject: delivery test$", out), "the header is shown"
    assert "hello" not in out, "the body is not"
    assert ok(r, "show", qid.lower()) == out, "ids are not case-sensitive"

    p = q(r, "show", "0000000000")
    assert p.returncode == 1 and "no message 0000000000 in the queue" in p.stderr
    p = q(r, "show", "../../etc/passwd")
    assert p.returncode == 1 and "in the queue" in p.stderr


def test_recipients_left_from_state(ses_relay, fake):
    """A recipient SES accepted before a restart is not counted as left."""
    r = failing_relay(ses_relay, fake)
    qid = submit(r, "alice@example.com", ["bob@example.net", "carol@example.org"])
    r.wait_log(deferred_rx(qid, "carol@example.org"))
    r.stop()
    with open(os.path.join(r.spool, "state", qid), "a") as f:
        f.write("sent 0 MessageId 0101-test\n")
    assert qlist(r)[qid]["recipients_left"] == 1, "read from the files"
    r.start(env=BASE_ENV)
    m = qlist(r)[qid]
    assert (m["recipients"], m["recipients_left"]) == (2, 1)
    out = ok(r, "show", qid)
    assert re.search(r"(?m)^  <bob@example.net> +sent \(MessageId 0101-test\)$", out), out
    assert re.search(r"(?m)^  <carol@example.org> +pending$", out), out


# --- flush ----------------------------------------------------------------------------

def test_flush_all(ses_relay, fake):
    r, qid = _deferred_for_an_hour(ses_relay, fake)
    out = ok(r, "flush")
    assert "1 deferred message" in out
    wait_delivered(r, fake, 1, timeout=5)
    r.wait_log(sent_rx(qid, "bob@example.net", attempts=2))


def test_flush_id(ses_relay, fake):
    r = ses_relay(retry_initial="1h", retry_max="2h", lifetime="1d")
    fake.fail_next(UNAVAILABLE_503, n=2)
    a, b = submit_many(r, [("alice@example.com", ["a@example.net"], MSG),
                           ("alice@example.com", ["b@example.net"], MSG)])
    r.wait_log(deferred_rx(a, "a@example.net"))
    r.wait_log(deferred_rx(b, "b@example.net"))
    assert f"{b}: due now" in ok(r, "flush", b)
    wait_for(lambda: queued(r) == {a}, 5, "only the flushed message delivered", r, fake)
    settle(r, fake, 1)
    assert queued(r) == {a} and qlist(r)[a]["state"] == "deferred"
    p = q(r, "flush", b)
    assert p.returncode == 1 and f"no message {b} in the queue" in p.stderr


# --- hold and release -------------------------------------------------------------------

def test_hold_survives_flush_and_restart_then_release(ses_relay, fake):
    r, qid = _deferred_for_an_hour(ses_relay, fake)
    assert f"{qid}: on hold" in ok(r, "hold", qid)
    r.wait_log(rf"{qid}: held by the operator")
    assert "hold" in state_file(r, qid).split("\n")
    m = qlist(r)[qid]
    assert m["state"] == "held" and m["held"] is True
    assert "held" in ok(r, "list")

    ok(r, "flush")
    p = q(r, "flush", qid)
    assert p.returncode == 1 and "on hold" in p.stderr
    settle(r, fake, 1.5)
    assert sends(fake) == 1 and queued(r) == {qid}

    r.stop()
    r.start(env=BASE_ENV)
    assert qlist(r)[qid]["state"] == "held", "a hold survives a restart"
    settle(r, fake, 1.5)
    assert sends(fake) == 1, "a held message found at start is not delivered"

    assert f"{qid}: released" in ok(r, "release", qid)
    wait_delivered(r, fake, 1, timeout=5)
    r.wait_log(rf"{qid}: released by the operator")
    p = q(r, "release", qid)
    assert p.returncode == 1 and "no message" in p.stderr


def test_release_of_a_message_not_held(ses_relay, fake):
    r, qid = _deferred_for_an_hour(ses_relay, fake)
    p = q(r, "release", qid)
    assert p.returncode == 1 and "not on hold" in p.stderr
    assert ok(r, "hold", qid) and "already on hold" in ok(r, "hold", qid)


# --- delete -------------------------------------------------------------------------------

def test_delete(ses_relay, fake):
    r, qid = _deferred_for_an_hour(ses_relay, fake)
    assert f"{qid}: deleted" in ok(r, "delete", qid)
    r.wait_log(rf"{qid}: removed \(deleted by the operator\)")
    assert queued(r) == set() and qlist(r) == {}
    assert not os.path.exists(os.path.join(r.spool, "state", qid))
    ok(r, "flush")
    settle(r, fake, 1)
    assert sends(fake) == 1 and not fake.accepted(), "never delivered"
    p = q(r, "delete", qid)
    assert p.returncode == 1 and f"no message {qid} in the queue" in p.stderr


# --- while a delivery attempt is in flight --------------------------------------------------

def in_flight(ses_relay, fake, fail):
    """A message whose first SES call is in flight for 3 s (and fails
    transiently if fail); retries would come after 1 s."""
    r = ses_relay(retry_initial="1s", retry_max="1s", lifetime="1h")
    fake.set_latency(3)
    if fail:
        fake.fail_next(UNAVAILABLE_503)
    qid = submit(r, "alice@example.com", ["bob@example.net"])
    fake.wait_until(lambda f: f.send_requests(), 10)
    assert qlist(r)[qid]["state"] == "active"
    return r, qid


@pytest.mark.parametrize("fail", [True, False], ids=["call-deferred", "call-sent"])
def test_delete_while_in_flight(ses_relay, fake, fail):
    r, qid = in_flight(ses_relay, fake, fail)
    out = ok(r, "delete", qid)
    assert "in flight" in out, out
    assert "deleted when its delivery attempt returns" in ok(r, "show", qid)
    if fail:
        r.wait_log(deferred_rx(qid, "bob@example.net", r"503\b"))
    else:
        r.wait_log(sent_rx(qid, "bob@example.net"))
    r.wait_log(rf"{qid}: removed \(deleted by the operator\)")
    fake.set_latency(0)
    settle(r, fake, 2.5)
    assert sends(fake) == 1, "not retried"
    assert queued(r) == set() and qlist(r) == {}
    assert r.proc.poll() is None
    assert "sender non-delivery" not in r.read_log()


def test_hold_while_in_flight(ses_relay, fake):
    r, qid = in_flight(ses_relay, fake, fail=True)
    out = ok(r, "hold", qid)
    assert "in flight" in out and "held when it returns" in out, out
    r.wait_log(deferred_rx(qid, "bob@example.net", r"503\b"))
    r.wait_log(rf"{qid}: held by the operator")
    fake.set_latency(0)
    settle(r, fake, 2.5)
    assert sends(fake) == 1, "parked, not retried"
    m = qlist(r)[qid]
    assert m["state"] == "held" and m["attempts"] == 1 and "503" in m["last_error"]
    ok(r, "release", qid)
    wait_delivered(r, fake, 1, timeout=5)
    assert r.proc.poll() is None


def test_hold_while_in_flight_of_a_message_that_gets_sent(ses_relay, fake):
    r, qid = in_flight(ses_relay, fake, fail=False)
    ok(r, "hold", qid)
    wait_delivered(r, fake, 1, timeout=10)
    r.wait_log(rf"{qid}: removed")
    assert "held by the operator" not in r.read_log(), "nothing was left to hold"


def test_release_cancels_a_pending_hold(ses_relay, fake):
    r, qid = in_flight(ses_relay, fake, fail=True)
    ok(r, "hold", qid)
    assert "hold cancelled" in ok(r, "release", qid)
    fake.set_latency(0)
    wait_delivered(r, fake, 1, timeout=10)
    assert "held by the operator" not in r.read_log()


# --- a stopped daemon ---------------------------------------------------------------------------

def test_stopped_daemon(ses_relay, fake):
    r = failing_relay(ses_relay, fake)
    a, b, c = submit_many(r, [("alice@example.com", ["a@example.net"], MSG),
                              ("", ["b@example.net", "b2@example.net"], MSG),
                              ("alice@example.com", ["c@example.net"], MSG)])
    for qid, rc in ((a, "a"), (b, "b"), (c, "c")):
        r.wait_log(deferred_rx(qid, f"{rc}@example.net"))
    r.stop()
    assert not os.path.exists(os.path.join(r.spool, "control.sock"))
    # a file some daemon is writing: list/show must not "recover" it away
    tmpfile = os.path.join(r.spool, "tmp", "0000000001")
    with open(tmpfile, "w") as f:
        f.write("SESRELAY-QUEUE 1\n")
    before = sorted(os.listdir(os.path.join(r.spool, "queue")))

    got = qlist(r)
    assert set(got) == {a, b, c}
    assert got[b]["sender"] == "" and got[b]["recipients_left"] == 2
    assert got[a]["attempts"] is None and got[a]["next_try"] is None
    assert got[a]["state"] == "queued" and got[a]["size"] == file_size(r, a)
    head, rows, foot = table(r)
    assert {row[0] for row in rows} == {a, b, c}
    assert foot == f"-- 3 messages, {sum(file_size(r, x) for x in (a, b, c))} bytes"
    out = ok(r, "show", b)
    assert re.search(r"(?m)^state: +queued \(the relay is not running\)$", out), out
    assert re.search(r"(?m)^  <b2@example.net> +pending$", out)
    assert os.path.exists(tmpfile) and sorted(os.listdir(os.path.join(r.spool, "queue"))) == before

    p = q(r, "flush")
    assert p.returncode == 1 and "not running" in p.stderr
    p = q(r, "flush", a)
    assert p.returncode == 1 and "not running" in p.stderr

    assert f"{a}: on hold" in ok(r, "hold", a)
    assert state_file(r, a).endswith("hold\n")
    assert qlist(r)[a]["state"] == "held"
    assert f"{b}: deleted" in ok(r, "delete", b)
    assert b not in queued(r) and not os.path.exists(os.path.join(r.spool, "state", b))
    p = q(r, "release", c)
    assert p.returncode == 1 and "not on hold" in p.stderr
    assert q(r, "show", b).returncode == 1
    os.unlink(tmpfile)

    fake.clear_faults()
    r.start(env=BASE_ENV)
    wait_for(lambda: queued(r) == {a}, 10, "c delivered, a held", r, fake)
    settle(r, fake, 1)
    assert qlist(r)[a]["state"] == "held"
    assert [m.rcpts for m in fake.accepted()] == [["c@example.net"]]
    r.stop()
    assert f"{a}: released" in ok(r, "release", a)
    assert state_file(r, a).endswith("hold\nrelease\n")
    r.start(env=BASE_ENV)
    wait_delivered(r, fake, 2)


def test_no_spool_yet(relay_factory):
    r = relay_factory(start=False)
    assert ok(r, "list").strip() == "Mail queue is empty"
    assert json.loads(ok(r, "list", "--json")) == []
    p = q(r, "show", "0000000000")
    assert p.returncode == 1 and "no message" in p.stderr
    assert not os.path.exists(r.spool), "the queue command creates no spool"


def test_usage_and_config_errors(relay_factory, tmp_path):
    r = relay_factory(start=False)
    for args in (["bogus"], ["show"], ["list", "extra"], ["delete", "A", "B"], ["list", "--xml"],
                 ["hold"], []):
        p = q(r, *args)
        assert p.returncode == 2, (args, p.returncode, p.stderr)
        assert "usage" in p.stderr
    bad = tmp_path / "bad.ini"
    bad.write_text("[relay]\nspool = /tmp/x\nnonsense = 1\n")
    p = subprocess.run([BIN, "queue", "list", "-c", str(bad)], capture_output=True, text=True,
                       timeout=10, env=cli_env())
    assert p.returncode == 78 and "nonsense" in p.stderr


# --- the control socket and the lock ----------------------------------------------------------

def test_socket_protocol_limits(ses_relay, fake):
    r = ses_relay()
    path = os.path.join(r.spool, "control.sock")

    def ask(data):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(path)
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        s.close()
        return out.decode()

    assert ask(b"x" * 600).startswith("error request too long")
    assert ask(b"frobnicate\n").startswith("error unknown request")
    assert ask(b"show \x01\x02\n").startswith("error no message")
    assert ask(b"list\n") == "ok 0\n"
    # a client that says nothing is dropped in time, and does not block others
    idle = socket.socket(socket.AF_UNIX)
    idle.connect(path)
    assert ask(b"list\n") == "ok 0\n"
    idle.close()
    assert r.proc.poll() is None


@pytest.fixture
def world_dir():
    """A directory other users can reach (pytest's tmp_path is root-only)."""
    d = tempfile.mkdtemp(prefix="sesrelay-q-", dir="/tmp")
    os.chmod(d, 0o755)
    relays = []
    yield d, relays
    problems = []
    for r in relays:
        r.stop()
        problems += r.sanitizer_reports()
    shutil.rmtree(d, ignore_errors=True)
    assert not problems, "\n".join(problems)


@as_root
def test_other_user_gets_a_clear_refusal(world_dir):
    d, relays = world_dir
    r = Relay(os.path.join(d, "r"))
    os.chmod(r.dir, 0o755)
    os.chmod(r.config, 0o644)
    relays.append(r.start())
    assert ok(r, "list").strip() == "Mail queue is empty"
    p = q(r, "list", user="nobody")
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "Permission denied" in p.stderr and "run as root" in p.stderr, p.stderr
    p = q(r, "delete", "0000000000", user="nobody")
    assert p.returncode == 1 and "run as root" in p.stderr


@as_root
def test_socket_mode_and_peer_check(world_dir):
    d, relays = world_dir
    r = Relay(os.path.join(d, "r"))
    relays.append(r.start())
    sock = os.path.join(r.spool, "control.sock")
    st = os.stat(sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(r.spool).st_mode) == 0o700
    # Let another user reach the socket anyway: the daemon still refuses it.
    os.chmod(r.spool, 0o755)
    os.chmod(sock, 0o666)
    code = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n"
            "try:\n  s.sendall(b'list\\n')\nexcept OSError:\n  pass\n"  # refused at once
            "print(s.recv(4096).decode())\n")
    p = subprocess.run(["/usr/bin/python3", "-c", code, sock], capture_output=True, text=True,
                       timeout=10, user=NOBODY)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("error permission denied"), p.stdout
    r.wait_log(r"control: refused a request from uid 65534")
    assert ok(r, "list").strip() == "Mail queue is empty", "root still may"


@as_root
def test_daemon_user_may_use_the_socket(world_dir):
    """Started as root with [relay] user: the socket belongs to that user, who
    may use it like root; other users may not."""
    d, relays = world_dir
    r = Relay(os.path.join(d, "r"), relay_section="user = nobody")
    os.chmod(r.dir, 0o755)
    os.chmod(r.config, 0o644)
    relays.append(r.start())
    r.wait_log(r"running as user nobody")
    sock = os.path.join(r.spool, "control.sock")
    wait_for(lambda: os.path.exists(sock), 5, "the control socket")
    st = os.stat(sock)
    assert st.st_uid == NOBODY and stat.S_IMODE(st.st_mode) == 0o600
    assert os.stat(os.path.join(r.spool, "lock")).st_uid == NOBODY
    assert ok(r, "list").strip() == "Mail queue is empty"
    assert ok(r, "list", user="nobody").strip() == "Mail queue is empty"
    p = q(r, "list", user="daemon")
    assert p.returncode == 1 and "run as root or as user nobody" in p.stderr, p.stderr


def test_second_daemon_on_the_same_spool_refuses(relay_factory):
    r1 = relay_factory()
    r2 = relay_factory(start=False)
    r2.spool = r1.spool
    r2.write_config()
    r2.start(wait=False)
    assert r2.proc.wait(15) == 1
    log = r2.read_log()
    assert f"another sesrelay is running on spool {r1.spool} (pid {r1.proc.pid})" in log, log
    assert ok(r1, "list").strip() == "Mail queue is empty", "the first one is unharmed"
    assert os.path.exists(os.path.join(r1.spool, "control.sock"))
    r1.stop()
    r2.start()  # free again
    assert ok(r2, "list").strip() == "Mail queue is empty"


def test_sigterm_with_a_client_connected(ses_relay, fake):
    r = ses_relay()
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.path.join(r.spool, "control.sock"))
    s.sendall(b"li")
    r.signal(signal.SIGTERM)
    assert r.proc.wait(15) == 0
    s.close()
    assert not os.path.exists(os.path.join(r.spool, "control.sock"))
