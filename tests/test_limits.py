"""Limits through the real binary (SPEC sections 3-5): connection caps, many
idle connections, timeouts, disk pressure, SIGHUP reload and SIGTERM.

Everything runs on 127.0.0.1.  The disk-pressure tests mount a small tmpfs
as the spool (root only; skipped with the reason otherwise) and unmount it
at teardown.  Timeouts are configured in seconds so each test stays short.
"""
import os
import re
import resource
import select
import selectors
import signal
import smtplib
import socket
import subprocess
import time

import pytest

from relayharness import SmtpConn, read_queue


MSG = b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: limits\r\n\r\nhello\r\n"


# --- helpers ---------------------------------------------------------------

def settle(relay):
    """wait_ready() leaves a probe connection behind: wait until the daemon
    has closed it, so it does not count against a cap."""
    relay.wait_log(r"disconnect from ")


def connect_from(relay, src, timeout=10):
    """An SmtpConn whose source address is src (any 127/8 address works)."""
    host, port = relay.addr()
    c = SmtpConn.__new__(SmtpConn)
    c.sock = socket.create_connection((host, port), timeout=timeout, source_address=(src, 0))
    c.buf = b""
    c.banner = c.reply()
    return c


def send_message(c, body=MSG, sender="alice@example.com", rcpts=("bob@example.net",)):
    assert c.cmd(f"MAIL FROM:<{sender}>")[0] == 250
    for r in rcpts:
        assert c.cmd(f"RCPT TO:<{r}>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    c.send(body + b".\r\n")
    return c.reply()


def spool_dir(relay, sub):
    p = os.path.join(relay.spool, sub)
    return sorted(os.listdir(p)) if os.path.isdir(p) else []


def assert_refused_421_470(c, why):
    code, text, _ = c.banner
    assert code == 421 and text.startswith("4.7.0 ") and why in text, c.banner
    assert c.closed()


def reply_within(c, seconds):
    """Wait for one reply for at most `seconds`; None if none came."""
    c.sock.settimeout(seconds)
    try:
        return c.reply()
    except socket.timeout:
        return None
    finally:
        c.sock.settimeout(10)


def trickle(c, piece, interval, limit):
    """Send `piece` every `interval` seconds until a reply arrives (returned
    with the time it took) or `limit` seconds pass (None)."""
    t0 = time.time()
    while time.time() - t0 < limit:
        try:
            c.send(piece)
        except (BrokenPipeError, ConnectionResetError):
            break
        r, _, _ = select.select([c.sock], [], [], interval)
        if r:
            break
    try:
        return c.reply(), time.time() - t0
    except (ConnectionError, socket.timeout):
        return None, time.time() - t0


# --- connection caps -----------------------------------------------------------

def test_max_connections(relay_factory):
    r = relay_factory(relay_section="max_connections = 3")
    settle(r)
    conns = [r.connect() for _ in range(3)]
    try:
        for c in conns:
            assert c.banner[0] == 220
            assert c.cmd("EHLO c")[0] == 250
        over = r.connect()
        assert_refused_421_470(over, "too many connections")
        over.close()
        r.wait_log(r"refused: 3 connections reached \(max_connections\)")
        # a trusted (loopback) client is not exempt from the global cap
        # and the sessions already open are unaffected
        assert conns[0].cmd("NOOP")[0] == 250
        assert send_message(conns[1])[0] == 250
        # a slot frees up when a session ends
        conns[2].cmd("QUIT")
        conns[2].close()
        deadline = time.time() + 5
        while True:
            c = r.connect()
            if c.banner[0] == 220:
                conns[2] = c
                break
            c.close()
            assert time.time() < deadline, "slot never freed"
            time.sleep(0.05)
        assert conns[2].cmd("EHLO c")[0] == 250
    finally:
        for c in conns:
            c.close()


def test_max_connections_per_ip(relay_factory):
    r = relay_factory(relay_section="max_connections_per_ip = 2", start=False)
    r.listeners["local"]["relay_networks"] = "192.0.2.0/24"  # 127.0.0.1 is not trusted
    r.write_config(relay_section="max_connections_per_ip = 2")
    r.start()
    settle(r)
    conns = [r.connect(), r.connect()]
    try:
        assert [c.banner[0] for c in conns] == [220, 220]
        over = r.connect()
        assert_refused_421_470(over, "too many connections from your address")
        over.close()
        r.wait_log(r"connect from unknown\[127\.0\.0\.1\]: refused: too many connections from "
                   r"this address \(max_connections_per_ip = 2\)")
        # another address has its own count
        other = [connect_from(r, "127.0.0.2"), connect_from(r, "127.0.0.2")]
        conns += other
        assert [c.banner[0] for c in other] == [220, 220]
        over = connect_from(r, "127.0.0.2")
        assert_refused_421_470(over, "too many connections from your address")
        over.close()
        # the open sessions work; closing one frees a slot for that address
        assert conns[0].cmd("EHLO c")[0] == 250
        conns[0].cmd("QUIT")
        conns[0].close()
        deadline = time.time() + 5
        while True:
            c = r.connect()
            if c.banner[0] == 220:
                conns[0] = c
                break
            c.close()
            assert time.time() < deadline, "per-IP slot never freed"
            time.sleep(0.05)
    finally:
        for c in conns:
            c.close()


def test_relay_networks_exempt_from_per_ip_cap(relay_factory):
    """Clients in relay_networks are not subject to max_connections_per_ip
    (SPEC section 3); others on the same listener are."""
    r = relay_factory(start=False)
    r.listeners["local"]["relay_networks"] = "127.0.0.2/32"
    r.write_config(relay_section="max_connections_per_ip = 2")
    r.start()
    settle(r)
    conns = []
    try:
        for _ in range(8):
            c = connect_from(r, "127.0.0.2")
            conns.append(c)
            assert c.banner[0] == 220, c.banner
        for c in conns:
            assert c.cmd("EHLO c")[0] == 250
        assert send_message(conns[-1])[0] == 250
        # 127.0.0.1 is outside relay_networks here: capped at 2
        conns += [connect_from(r, "127.0.0.1"), connect_from(r, "127.0.0.1")]
        assert [c.banner[0] for c in conns[-2:]] == [220, 220]
        over = connect_from(r, "127.0.0.1")
        assert_refused_421_470(over, "too many connections from your address")
        over.close()
    finally:
        for c in conns:
            c.close()


def test_loopback_default_networks_exempt(relay_factory):
    r = relay_factory(relay_section="max_connections_per_ip = 2")
    settle(r)
    conns = []
    try:
        for _ in range(6):
            conns.append(r.connect())
        assert [c.banner[0] for c in conns] == [220] * 6
    finally:
        for c in conns:
            c.close()


def vm_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_5000_idle_connections_and_a_working_client(relay_factory, record_property):
    """5000 connections held open: all get the banner, a normal client still
    gets its message queued.  Daemon RSS is printed (and recorded in the
    junit properties) for information; only a generous bound is asserted."""
    n = 5000
    t_start = time.time()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = n + 500
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.fail(f"RLIMIT_NOFILE hard limit {hard} is below {need}: cannot hold {n} sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    r = relay_factory(relay_section="max_connections = 6000")
    settle(r)
    rss_before = vm_rss_kb(r.proc.pid)
    host, port = r.addr()
    socks = []
    sel = selectors.DefaultSelector()
    try:
        for i in range(n):
            s = socket.socket()
            s.settimeout(10)
            s.connect((host, port))
            s.setblocking(False)
            socks.append(s)
            sel.register(s, selectors.EVENT_READ, i)
        t_connected = time.time()
        bufs = [b""] * n
        pending = n
        deadline = time.time() + 60
        while pending and time.time() < deadline:
            for key, _ in sel.select(timeout=1):
                i = key.data
                try:
                    chunk = key.fileobj.recv(512)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fileobj)
                    pending -= 1
                    continue
                bufs[i] += chunk
                if b"\r\n" in bufs[i]:
                    sel.unregister(key.fileobj)
                    pending -= 1
        t_banners = time.time()
        bad = [i for i, b in enumerate(bufs) if not b.startswith(b"220 relay.test ESMTP sesrelay\r\n")]
        assert not bad, f"{len(bad)} connections without a banner, e.g. #{bad[0]}: {bufs[bad[0]]!r}"
        # while all 5000 are open, a real client is served
        t0 = time.time()
        with smtplib.SMTP(host, port, timeout=20) as c:
            c.ehlo("busy.test")
            assert c.sendmail("alice@example.com", ["bob@example.net"], MSG) == {}
        t_served = time.time() - t0
        assert len(r.queue()) == 1
        rss = vm_rss_kb(r.proc.pid)
        record_property("daemon_rss_kb_5000_idle", rss)
        record_property("daemon_rss_kb_idle_start", rss_before)
        print(f"\n5000 idle connections: daemon VmRSS {rss} kB ({rss / 1024:.1f} MB; "
              f"{rss_before} kB before, {(rss - rss_before) * 1024 / n:.0f} B per connection); "
              f"connect {t_connected - t_start:.2f}s, banners {t_banners - t_connected:.2f}s, "
              f"message served in {t_served:.2f}s")
        assert rss < 200 * 1024, f"daemon RSS {rss} kB with {n} idle connections"
        assert r.proc.poll() is None
        assert "accept on" not in r.read_log(), "the daemon ran out of descriptors"
    finally:
        sel.close()
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert time.time() - t_start < 90


# --- timeouts ------------------------------------------------------------------

def test_idle_timeout_before_helo(relay_factory):
    r = relay_factory(relay_section="smtp_timeout = 1s")
    with r.connect() as c:
        t0 = time.time()
        got = reply_within(c, 5)
        took = time.time() - t0
        assert got and got[0] == 421 and got[1].startswith("4.4.2"), got
        assert 0.7 < took < 3.5, took
        assert c.closed()
    r.wait_log(r"timeout after CONNECT from localhost\[127\.0\.0\.1\]")


def test_idle_timeout_is_per_command(relay_factory):
    """Activity restarts the idle timer: NOOPs every 0.4 s keep a 1 s
    timeout at bay for 3 s; silence then gets 421 4.4.2 and a close."""
    r = relay_factory(relay_section="smtp_timeout = 1s")
    with r.connect() as c:
        assert c.cmd("EHLO c")[0] == 250
        t_end = time.time() + 3
        while time.time() < t_end:
            assert c.cmd("NOOP")[0] == 250
            time.sleep(0.4)
        assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
        t0 = time.time()
        got = reply_within(c, 5)
        took = time.time() - t0
        assert got and got[0] == 421 and got[1].startswith("4.4.2"), got
        assert 0.7 < took < 3.5, took
        assert c.closed()
    r.wait_log(r"timeout after MAIL from localhost\[127\.0\.0\.1\]")


def test_idle_timeout_in_data(relay_factory):
    r = relay_factory(relay_section="smtp_timeout = 1s")
    with r.connect() as c:
        c.cmd("EHLO c")
        assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
        assert c.cmd("RCPT TO:<b@example.net>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(MSG)
        got = reply_within(c, 5)
        assert got and got[0] == 421 and got[1].startswith("4.4.2"), got
        assert c.closed()
    assert r.queue() == {} and spool_dir(r, "tmp") == []


def test_data_timeout_caps_the_data_phase(relay_factory):
    """A client that trickles a byte every 0.3 s is never idle for
    smtp_timeout, but the whole DATA phase is capped by data_timeout."""
    r = relay_factory(relay_section="smtp_timeout = 10s\ndata_timeout = 2s")
    with r.connect() as c:
        c.cmd("EHLO c")
        assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
        assert c.cmd("RCPT TO:<b@example.net>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(MSG)
        got, took = trickle(c, b"x", 0.3, 8)
        assert got and got[0] == 421 and got[1].startswith("4.4.2"), got
        assert 1.5 < took < 4.5, took
        assert c.closed()
    r.wait_log(r"timeout after DATA \(\d+ bytes\) from localhost\[127\.0\.0\.1\]")
    assert r.queue() == {}
    assert spool_dir(r, "tmp") == []


def test_data_timeout_is_per_message(relay_factory):
    """Each DATA phase gets the full data_timeout: two slow messages of 1.2 s
    each in one session, 2.4 s of DATA in all, are both accepted."""
    r = relay_factory(relay_section="smtp_timeout = 10s\ndata_timeout = 2s")
    with r.connect() as c:
        c.cmd("EHLO c")
        for _ in range(2):
            assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
            assert c.cmd("RCPT TO:<b@example.net>")[0] == 250
            assert c.cmd("DATA")[0] == 354
            c.send(MSG)
            for _ in range(4):
                time.sleep(0.3)
                c.send(b"slow line\r\n")
            c.send(b".\r\n")
            assert c.reply()[0] == 250
    assert len(r.queue()) == 2


def test_session_timeout_caps_the_session(relay_factory):
    r = relay_factory(relay_section="smtp_timeout = 10s\nsession_timeout = 3s")
    with r.connect() as c:
        t0 = time.time()
        assert c.cmd("EHLO c")[0] == 250
        got = None
        while time.time() - t0 < 8:
            got = c.cmd("NOOP")
            if got[0] != 250:
                break
            time.sleep(0.3)
        took = time.time() - t0
        assert got and got[0] == 421 and got[1].startswith("4.4.2"), got
        assert 2.5 < took < 5, took
        assert c.closed()
    r.wait_log(r"session time limit exceeded for localhost\[127\.0\.0\.1\]")


def test_session_timeout_during_data(relay_factory):
    r = relay_factory(relay_section="smtp_timeout = 10s\nsession_timeout = 3s")
    with r.connect() as c:
        t0 = time.time()
        c.cmd("EHLO c")
        assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
        assert c.cmd("RCPT TO:<b@example.net>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(MSG)
        got, _ = trickle(c, b"y", 0.3, 8)
        took = time.time() - t0
        assert got and got[0] == 421 and got[1].startswith("4.4.2"), got
        assert 2.5 < took < 5, took
        assert c.closed()
    assert r.queue() == {}
    assert spool_dir(r, "tmp") == []


# --- disk pressure (tmpfs spool) ---------------------------------------------------

@pytest.fixture
def tmpfs_relay(relay_factory):
    """make(size, relay_section): a relay whose spool is a fresh tmpfs."""
    mounts, relays = [], []

    def make(size="2m", relay_section=""):
        r = relay_factory(relay_section=relay_section, start=False)
        os.makedirs(r.spool, exist_ok=True)
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                            r.spool], capture_output=True, text=True, timeout=20)
        if p.returncode != 0:
            pytest.skip("disk-pressure test needs a tmpfs for the spool and mounting one "
                        f"failed (needs root or CAP_SYS_ADMIN): {p.stderr.strip()}")
        mounts.append(r.spool)
        relays.append(r)
        r.start()
        return r

    yield make
    for r in relays:
        r.stop()
    for m in mounts:
        if subprocess.run(["umount", m], capture_output=True, timeout=20).returncode != 0:
            subprocess.run(["umount", "-l", m], capture_output=True, timeout=20)


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


# (spool_reserve, [(SIZE= parameter or None, expected MAIL reply code)]) on a
# 2 MiB tmpfs: MAIL is refused when free < spool_reserve + SIZE.
RESERVE_CASES = {
    "reserve_10M": ("10M", [(None, 452), (1000, 452)]),
    "reserve_1M": ("1M", [(None, 250), (500000, 250), (1500000, 452)]),
    "reserve_0": ("0", [(None, 250), (1000, 250), (1900000, 250), (5000000, 452)]),
}


@pytest.mark.parametrize("case", sorted(RESERVE_CASES))
def test_spool_reserve_refuses_mail(tmpfs_relay, case):
    reserve, steps = RESERVE_CASES[case]
    r = tmpfs_relay("2m", f"spool_reserve = {reserve}")
    assert 2000000 < free_bytes(r.spool) <= 2 * 1024 * 1024
    with r.connect() as c:
        assert c.cmd("EHLO c")[0] == 250
        for size, want in steps:
            cmd = "MAIL FROM:<a@example.com>" + (f" SIZE={size}" if size else "")
            code, text, _ = c.cmd(cmd)
            assert code == want, (cmd, code, text)
            if want == 452:
                assert text == "4.3.1 Insufficient system storage", text
            assert c.cmd("RSET")[0] == 250
    if any(want == 452 for _, want in steps):
        r.wait_log(r"reject: MAIL from localhost\[127\.0\.0\.1\]: 452 4\.3\.1 Insufficient system storage")
    assert r.queue() == {}


def test_disk_full_during_data(tmpfs_relay):
    """spool_reserve = 0 on a 2 MiB tmpfs: a 3 MB message fills the disk
    mid-DATA -> 451 4.3.0, the partial file removed, the daemon keeps
    running, keeps what it had queued, and accepts a small message after."""
    r = tmpfs_relay("2m", "spool_reserve = 0")
    small = MSG + b"small message\r\n" * 300  # ~5 KB
    with r.connect() as c:
        c.cmd("EHLO c")
        code, text, _ = send_message(c, small)
        assert code == 250, text
        first = text.split()[-1]
        assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
        assert c.cmd("RCPT TO:<b@example.net>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(MSG)
        line = b"0123456789abcdef" * 62 + b"\r\n"  # 994 octets
        for _ in range(3 * 1024 * 1024 // len(line)):
            c.send(line)
        c.send(b".\r\n")
        code, text, _ = c.reply()
        assert code == 451 and text.startswith("4.3.0"), (code, text)
        assert spool_dir(r, "tmp") == []
        assert spool_dir(r, "queue") == [first]
        assert r.proc.poll() is None
        # the space is back: the same session can send a small message
        code, text, _ = send_message(c, small)
        assert code == 250, text
        second = text.split()[-1]
    r.wait_log(r"queue file write error")
    with r.connect() as c:
        c.cmd("EHLO c")
        assert send_message(c, small)[0] == 250
    q = r.queue()
    assert first in q and second in q and len(q) == 3
    for m in q.values():
        assert m["data"].endswith(small)
    assert r.proc.poll() is None


def test_disk_full_partial_file_released_before_end_of_data(tmpfs_relay):
    """Once a write fails with ENOSPC the partial file is useless: it must go
    at once (smtp_session.c feed_data: "the partial file goes now"), not sit
    on the full disk until the client sends its final dot - meanwhile every
    other session would fail for want of space."""
    r = tmpfs_relay("2m", "spool_reserve = 0")
    small = MSG + b"small message\r\n" * 300
    a = r.connect()
    try:
        a.cmd("EHLO a")
        assert a.cmd("MAIL FROM:<a@example.com>")[0] == 250
        assert a.cmd("RCPT TO:<b@example.net>")[0] == 250
        assert a.cmd("DATA")[0] == 354
        line = b"0123456789abcdef" * 62 + b"\r\n"
        for _ in range(3 * 1024 * 1024 // len(line)):
            a.send(line)
        # the client is still in DATA (slow, or stalled); the disk filled up
        deadline = time.time() + 3
        while spool_dir(r, "tmp") and time.time() < deadline:
            time.sleep(0.05)
        left = [(n, os.path.getsize(os.path.join(r.spool, "tmp", n))) for n in spool_dir(r, "tmp")]
        assert left == [], f"partial file kept on the full spool while the client is in DATA: {left}"
        # so another client can still get a small message queued
        with r.connect() as b:
            b.cmd("EHLO b")
            code, text, _ = send_message(b, small)
            assert code == 250, (code, text)
        a.send(b".\r\n")
        code, text, _ = a.reply()
        assert code == 451 and text.startswith("4.3.0"), (code, text)
    finally:
        a.close()
    assert len(r.queue()) == 1


# --- signals -------------------------------------------------------------------

def rcpt_codes(c, n):
    return [c.cmd(f"RCPT TO:<r{i}@example.net>")[0] for i in range(n)]


def test_sighup_reload_applies_to_new_sessions(relay_factory):
    r = relay_factory(relay_section="max_recipients = 3")
    old = r.connect()
    try:
        assert old.cmd("EHLO old.test")[0] == 250
        assert old.cmd("MAIL FROM:<a@example.com>")[0] == 250
        r.write_config(relay_section="max_recipients = 5")
        r.signal(signal.SIGHUP)
        r.wait_log(r"reloaded " + re.escape(r.config))
        with r.connect() as new:
            new.cmd("EHLO new.test")
            new.cmd("MAIL FROM:<a@example.com>")
            assert rcpt_codes(new, 6) == [250] * 5 + [452]
            assert new.cmd("DATA")[0] == 354
            new.send(MSG + b".\r\n")
            assert new.reply()[0] == 250
        # the session that was open during the reload keeps working, with the
        # configuration it started with (daemon.c: "Sessions in progress keep
        # the configuration they started with")
        assert rcpt_codes(old, 4) == [250, 250, 250, 452]
        assert old.cmd("DATA")[0] == 354
        old.send(MSG + b".\r\n")
        assert old.reply()[0] == 250
        assert old.cmd("QUIT")[0] == 221
    finally:
        old.close()
    counts = sorted(len(m["rcpts"]) for m in r.queue().values())
    assert counts == [3, 5]


@pytest.fixture
def busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    yield s.getsockname()[1]
    s.close()


BAD_CONFIGS = {
    "unknown_key": lambda port: ("max_recipients = 50\nno_such_key = 1", ""),
    "bad_value": lambda port: ("max_recipients = lots", ""),
    "repeated_key": lambda port: ("max_recipients = 50\nmax_recipients = 60", ""),
    "port_in_use": lambda port: ("max_recipients = 50",
                                 f"[listen:second]\naddress = 127.0.0.1:{port}"),
}


@pytest.mark.parametrize("kind", sorted(BAD_CONFIGS))
def test_sighup_bad_config_keeps_running_config(relay_factory, busy_port, kind):
    r = relay_factory(relay_section="max_recipients = 3")
    relay_section, extra = BAD_CONFIGS[kind](busy_port)
    r.write_config(extra=extra, relay_section=relay_section)
    r.signal(signal.SIGHUP)
    r.wait_log(r"reload failed, keeping the running configuration: ")
    assert r.proc.poll() is None
    with r.connect() as c:
        c.cmd("EHLO c")
        c.cmd("MAIL FROM:<a@example.com>")
        assert rcpt_codes(c, 4) == [250, 250, 250, 452]
    # and a good file afterwards is taken
    r.write_config(relay_section="max_recipients = 5")
    r.signal(signal.SIGHUP)
    r.wait_log(r"reloaded " + re.escape(r.config))
    with r.connect() as c:
        c.cmd("EHLO c")
        c.cmd("MAIL FROM:<a@example.com>")
        assert rcpt_codes(c, 6) == [250] * 5 + [452]


def test_sigterm_graceful_stop(relay_factory):
    """SIGTERM: idle sessions get 421 4.3.2 at once, the listener closes, a
    session in DATA finishes and gets its 250 (then 421 4.3.2), exit 0."""
    r = relay_factory()
    busy = r.connect()
    idle = r.connect()
    try:
        busy.cmd("EHLO busy.test")
        assert busy.cmd("MAIL FROM:<a@example.com>")[0] == 250
        assert busy.cmd("RCPT TO:<b@example.net>")[0] == 250
        assert busy.cmd("DATA")[0] == 354
        busy.send(MSG)
        assert idle.cmd("EHLO idle.test")[0] == 250
        time.sleep(0.1)
        t0 = time.time()
        r.signal(signal.SIGTERM)
        code, text, _ = idle.reply()
        assert code == 421 and text.startswith("4.3.2"), (code, text)
        assert idle.closed()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(r.addr(), timeout=2).close()
        time.sleep(1)
        busy.send(b"finished during shutdown\r\n.\r\n")
        code, text, _ = busy.reply()
        assert code == 250 and text.startswith("2.0.0 Ok: queued as"), (code, text)
        qid = text.split()[-1]
        code, text, _ = busy.reply()
        assert code == 421 and text.startswith("4.3.2"), (code, text)
        assert busy.closed()
        rc = r.proc.wait(10)
        took = time.time() - t0
        assert rc == 0, r.read_log()[-2000:]
        assert took < 5.5, took
    finally:
        busy.close()
        idle.close()
    q = read_queue(r.spool)
    assert list(q) == [qid] and q[qid]["data"].endswith(MSG + b"finished during shutdown\r\n")
    r.wait_log(r"stopping \(signal 15\)")


def test_sigterm_grace_over_drops_unfinished_data(relay_factory):
    """A DATA session that does not finish within the grace period is closed;
    its message was never acknowledged, so nothing is queued; exit 0."""
    r = relay_factory()
    busy = r.connect()
    try:
        busy.cmd("EHLO c")
        assert busy.cmd("MAIL FROM:<a@example.com>")[0] == 250
        assert busy.cmd("RCPT TO:<b@example.net>")[0] == 250
        assert busy.cmd("DATA")[0] == 354
        busy.send(MSG)
        t0 = time.time()
        r.signal(signal.SIGTERM)
        rc = r.proc.wait(15)
        took = time.time() - t0
        assert rc == 0
        assert 3 < took < 10, took
        assert busy.closed()
    finally:
        busy.close()
    assert read_queue(r.spool) == {}
    assert os.listdir(os.path.join(r.spool, "tmp")) == []
    r.wait_log(r"grace period over")
