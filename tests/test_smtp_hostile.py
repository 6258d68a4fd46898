"""Hostile input through the real binary (SPEC section 4, issue "The daemon
accepts mail and never loses it"): SMTP smuggling variants, over-long lines,
NUL bytes, pipelined garbage, empty and huge messages, size limits, clients
that vanish mid-DATA, unknown commands and dot-stuffing.

Every test talks to a daemon on 127.0.0.1 only and checks, besides the reply,
what ended up in the spool: nothing at all for a refused message, the exact
bytes for an accepted one.
"""
import email
import hashlib
import os
import random
import re
import smtplib
import socket
import struct
import subprocess
import threading
import time

import pytest


MSG = b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: hostile\r\n\r\nhello\r\n"
REFUSED_550 = "5.6.0"


# --- helpers ---------------------------------------------------------------

def start_data(c, sender="alice@example.com", rcpts=("bob@example.net",)):
    """MAIL, RCPT..., DATA; returns after the 354."""
    assert c.cmd(f"MAIL FROM:<{sender}>")[0] == 250
    for r in rcpts:
        assert c.cmd(f"RCPT TO:<{r}>")[0] == 250
    code, text, _ = c.cmd("DATA")
    assert code == 354, text


def send_message(c, body=MSG, sender="alice@example.com", rcpts=("bob@example.net",)):
    """A complete transaction with already dot-stuffed body; returns the final reply."""
    start_data(c, sender, rcpts)
    c.send(body + b".\r\n")
    return c.reply()


def normal_transaction_ok(c, marker=b"after"):
    """The session is still usable: a clean message is accepted.  Returns its id."""
    body = MSG.replace(b"hello", b"clean message " + marker)
    code, text, _ = send_message(c, body)
    assert code == 250 and text.startswith("2.0.0 Ok: queued as "), (code, text)
    return text.split()[-1]


def spool_dir(relay, sub):
    p = os.path.join(relay.spool, sub)
    return sorted(os.listdir(p)) if os.path.isdir(p) else []


def wait_tmp_empty(relay, timeout=5):
    deadline = time.time() + timeout
    while spool_dir(relay, "tmp") and time.time() < deadline:
        time.sleep(0.05)
    return spool_dir(relay, "tmp")


def received_header_re(qid, rcpt=rb"[^>]+"):
    return (rb"Received: from [^ ]+ \(localhost\[127\.0\.0\.1\]\)\r\n"
            rb"\tby relay\.test \(sesrelay\) with E?SMTP id " + qid.encode() +
            rb"(\r\n\tfor <" + rcpt + rb">)?; [^\r\n]+\r\n")


def strip_received(data, qid):
    m = re.match(received_header_re(qid), data)
    assert m, data[:300]
    return data[m.end():]


def assert_daemon_alive(relay):
    assert relay.proc.poll() is None, "sesrelay died:\n" + relay.read_log()[-3000:]
    with relay.connect() as c:
        assert c.banner[0] == 220
        assert c.cmd("EHLO alive.test")[0] == 250
        normal_transaction_ok(c, b"alive")
        c.cmd("QUIT")


# --- SMTP smuggling ----------------------------------------------------------

# Fake end-of-data sequences (CVE-2023-51764 family, SEC Consult's list and
# more).  Each is placed right after "hello"; what follows it looks like a
# second transaction.  Only <CRLF>.<CRLF> may end the data: every one of these
# must leave the message in one piece and refused.
SMUGGLE = {
    "lf_dot_lf": b"\n.\n",
    "cr_dot_cr": b"\r.\r",
    "lf_dot_crlf": b"\n.\r\n",
    "cr_dot_crlf": b"\r.\r\n",
    "crlf_dot_lf": b"\r\n.\n",
    "crlf_dot_cr": b"\r\n.\r",
    "lf_dot_cr": b"\n.\r",
    "cr_dot_lf": b"\r.\n",
    "crlf_dot_cr_cr_lf": b"\r\n.\r\r\n",
    "crlf_nul_dot_crlf": b"\r\n\x00.\r\n",
    "crlf_dot_nul_crlf": b"\r\n.\x00\r\n",
    "space_dot_then_lf_dot_lf": b"\r\n .\r\n\n.\n",
}

SMUGGLED_TXN = (b"MAIL FROM:<evil@attacker.example>\r\n"
                b"RCPT TO:<victim@example.net>\r\n"
                b"DATA\r\n"
                b"From: ceo@example.com\r\nTo: victim@example.net\r\nSubject: smuggled\r\n\r\n"
                b"smuggled body\r\n")


def send_slowly(c, data, pause=0.002):
    """Byte by byte, each in its own segment, so every state of the DATA
    parser meets a read boundary."""
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(data)):
        c.sock.sendall(data[i:i + 1])
        time.sleep(pause)


@pytest.mark.parametrize("delivery", ["one_write", "byte_by_byte"])
@pytest.mark.parametrize("variant", sorted(SMUGGLE))
def test_smuggling_is_refused_not_split(relay, variant, delivery):
    fake = SMUGGLE[variant]
    body = b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: s\r\n\r\nhello" + \
        fake + SMUGGLED_TXN + b".\r\n"
    with relay.connect() as c:
        assert c.cmd("EHLO client.test")[0] == 250
        start_data(c)
        if delivery == "one_write":
            c.send(body)
        else:
            send_slowly(c, body)
        # exactly one reply, at the real CRLF.CRLF, and it is the refusal
        code, text, _ = c.reply()
        assert code == 550 and text.startswith(REFUSED_550 + " "), (code, text)
        # the smuggled MAIL/RCPT/DATA were message text: no reply of theirs
        # is pending, the next reply is NOOP's own
        assert c.cmd("NOOP") == (250, "2.0.0 Ok", ["250 2.0.0 Ok"])
        assert c.buf == b""
        assert spool_dir(relay, "queue") == []
        assert wait_tmp_empty(relay) == []
        # the session goes on: a clean message right after is accepted
        qid = normal_transaction_ok(c)
        c.cmd("QUIT")
    q = relay.queue()
    assert list(q) == [qid], "the smuggling attempt queued something"
    assert b"smuggled" not in q[qid]["data"]
    assert q[qid]["sender"] == "alice@example.com" and q[qid]["rcpts"] == ["bob@example.net"]
    log = relay.read_log()
    assert "evil@attacker.example" not in log and "victim@example.net" not in log
    assert re.search(r"reject: DATA from localhost\[127\.0\.0\.1\]: 550 5\.6\.0", log), log[-2000:]


def test_smuggling_in_pipelined_stream(relay):
    """Commands, data with a fake terminator and the smuggled commands all in
    one write, as an attacker's MTA would pipeline them."""
    with relay.connect() as c:
        c.cmd("EHLO client.test")
        c.send(b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n"
               b"Subject: p\r\n\r\nhello\n.\n" + SMUGGLED_TXN + b".\r\nNOOP\r\n")
        replies = [c.reply() for _ in range(5)]
        assert [r[0] for r in replies] == [250, 250, 354, 550, 250], replies
        assert replies[3][1].startswith("5.6.0")
        assert replies[4][1] == "2.0.0 Ok"
        assert not c.closed(timeout=0.3) and c.buf == b""
    assert relay.queue() == {}


def test_dot_lf_alone_does_not_end_data(relay):
    """".<LF>" at the very start of the data and a final "<CRLF>.<LF>" do not
    end it: the server keeps waiting for <CRLF>.<CRLF>."""
    with relay.connect() as c:
        c.cmd("EHLO c")
        start_data(c)
        c.send(b".\nMAIL FROM:<evil@attacker.example>\r\nbody\r\n.\n")
        assert c.closed(timeout=0.5) is False and c.buf == b"", "data ended early"
        c.send(b"\r\n.\r\n")
        code, text, _ = c.reply()
        assert code == 550 and text.startswith("5.6.0")
        normal_transaction_ok(c)
    assert len(relay.queue()) == 1


# --- text line length (1000 octets with CRLF) ---------------------------------

@pytest.mark.parametrize("octets,accepted", [(999, True), (1000, True), (1001, False),
                                             (1002, False), (5000, False)])
@pytest.mark.parametrize("where", ["header", "body", "last"])
def test_text_line_limit(relay, octets, accepted, where):
    long_line = b"x" * (octets - 2) + b"\r\n"
    if where == "header":
        body = b"X-Long: " + long_line[8:] + MSG
    elif where == "body":
        body = MSG + long_line + b"tail\r\n"
    else:
        body = MSG + long_line
    assert len(long_line) == octets
    with relay.connect() as c:
        c.cmd("EHLO c")
        code, text, _ = send_message(c, body)
        if accepted:
            assert code == 250, (code, text)
            qid = text.split()[-1]
            assert strip_received(relay.queue()[qid]["data"], qid) == body
        else:
            assert code == 550 and text.startswith("5.6.0") and "1000" in text, (code, text)
            assert relay.queue() == {}
            assert wait_tmp_empty(relay) == []
            normal_transaction_ok(c)


def test_dot_stuffed_line_counts_on_the_wire(relay):
    """A 1000-octet line on the wire that starts with a stuffed dot is within
    the limit; it is stored with the dot removed (999 octets)."""
    wire = b"." + b"y" * 997 + b"\r\n"
    assert len(wire) == 1000
    with relay.connect() as c:
        c.cmd("EHLO c")
        code, text, _ = send_message(c, MSG + wire)
        assert code == 250, text
        qid = text.split()[-1]
    assert strip_received(relay.queue()[qid]["data"], qid) == MSG + wire[1:]


def test_100k_data_line_without_lf(relay):
    with relay.connect() as c:
        c.cmd("EHLO c")
        start_data(c)
        c.send(MSG + b"z" * 100 * 1024 + b"\r\n.\r\n")
        code, text, _ = c.reply()
        assert code == 550 and text.startswith("5.6.0"), text
        assert wait_tmp_empty(relay) == []
        normal_transaction_ok(c)
    assert len(relay.queue()) == 1


# --- command line length (512 octets with CRLF) -------------------------------

@pytest.mark.parametrize("octets,verb,expect", [
    (511, "NOOP", 250),
    (512, "NOOP", 250),         # at the limit: an ordinary command
    (512, "XBOGUS", 502),       # at the limit: an ordinary unknown command
    (513, "NOOP", 500),
    (514, "XBOGUS", 500),
    (2000, "NOOP", 500),
])
def test_command_line_limit(relay, octets, verb, expect):
    line = (verb + " " + "a" * octets).encode()[:octets - 2] + b"\r\n"
    assert len(line) == octets
    with relay.connect() as c:
        c.send(line)
        code, text, _ = c.reply()
        assert code == expect, (code, text)
        if expect == 500:
            assert text.startswith("5.5.2 ") and "too long" in text
        else:
            assert "too long" not in text
        # exactly one reply, and the session goes on
        assert c.cmd("NOOP") == (250, "2.0.0 Ok", ["250 2.0.0 Ok"])
        assert c.cmd("EHLO c")[0] == 250
        normal_transaction_ok(c)


def test_100k_command_line_without_lf(relay):
    """A 100 KB line with no LF gets one 500 5.5.2; the rest of the line is
    discarded as it arrives and the session resumes at the next line."""
    with relay.connect() as c:
        c.cmd("EHLO c")
        for _ in range(10):
            c.send(b"MAIL FROM:<" + b"q" * 10 * 1024)
        c.send(b"> SIZE=1\r\nNOOP\r\n")
        code, text, _ = c.reply()
        assert code == 500 and text.startswith("5.5.2"), text
        assert c.reply() == (250, "2.0.0 Ok", ["250 2.0.0 Ok"])
        assert c.cmd("RSET")[0] == 250
        normal_transaction_ok(c)
    relay.wait_log(r"command line too long from localhost\[127\.0\.0\.1\]")


def test_long_line_never_executes_its_tail(relay):
    """Text past the limit on an over-long line is discarded with the line,
    never taken for a command, whether the line ends in the same read or not."""
    with relay.connect() as c:
        c.cmd("EHLO c")
        c.send(b"X" * 600 + b"QUIT\r\nNOOP\r\n")
        assert c.reply()[0] == 500
        assert c.reply() == (250, "2.0.0 Ok", ["250 2.0.0 Ok"])
        c.send(b"Y" * 1000)
        time.sleep(0.2)
        c.send(b"QUIT\r\nNOOP\r\n")
        assert c.reply()[0] == 500
        assert c.reply() == (250, "2.0.0 Ok", ["250 2.0.0 Ok"])
        assert c.closed(timeout=0.3) is False and c.buf == b""


# --- NUL bytes ---------------------------------------------------------------

@pytest.mark.parametrize("line", [
    b"NOOP\x00",
    b"NOOP\x00garbage",
    b"\x00NOOP",
    b"EHLO c\x00.attacker.example",
    b"RSET\x00\x00\x00",
], ids=["noop_nul", "noop_nul_garbage", "leading_nul", "ehlo_nul", "rset_nuls"])
def test_nul_in_command_is_refused(relay, line):
    """A NUL in a command line is a control character: 500 5.5.2, the command
    is not executed in a truncated form, and the session goes on."""
    with relay.connect() as c:
        c.send(line + b"\r\n")
        code, text, _ = c.reply()
        assert code == 500 and text.startswith("5.5.2"), (line, code, text)
        assert c.cmd("NOOP")[0] == 250


def test_nul_in_envelope_command_not_truncated(relay):
    """MAIL/RCPT with a NUL must not be accepted as the part before the NUL."""
    with relay.connect() as c:
        c.cmd("EHLO c")
        code, text, _ = c.cmd("MAIL FROM:<alice@example.com>\x00<evil@attacker.example>")
        assert code == 500 and text.startswith("5.5.2"), (code, text)
        assert c.cmd("MAIL FROM:<alice@example.com>")[0] == 250
        code, text, _ = c.cmd("RCPT TO:<bob@example.net>\x00,victim@example.org")
        assert code == 500 and text.startswith("5.5.2"), (code, text)
        assert c.cmd("RCPT TO:<bob@example.net>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(MSG + b".\r\n")
        assert c.reply()[0] == 250
    (m,) = relay.queue().values()
    assert m["rcpts"] == ["bob@example.net"]


def test_bare_cr_in_command_is_refused(relay):
    with relay.connect() as c:
        code, text, _ = c.cmd("NOOP\rQUIT")
        assert code == 500 and text.startswith("5.5.2"), text
        assert c.cmd("NOOP")[0] == 250


@pytest.mark.parametrize("body", [
    MSG.replace(b"hello", b"hel\x00lo"),
    b"\x00" + MSG,
    MSG + b"\x00\r\n",
    MSG.replace(b"Subject", b"Sub\x00ject"),
], ids=["nul_in_body", "nul_first_byte", "nul_line", "nul_in_header"])
def test_nul_in_data_is_refused(relay, body):
    with relay.connect() as c:
        c.cmd("EHLO c")
        code, text, _ = send_message(c, body)
        assert code == 550 and text.startswith("5.6.0") and "NUL" in text, text
        assert wait_tmp_empty(relay) == []
        normal_transaction_ok(c)
    assert len(relay.queue()) == 1


@pytest.mark.parametrize("body", [
    MSG.replace(b"hello\r\n", b"hello\nworld\r\n"),
    MSG.replace(b"hello\r\n", b"hello\rworld\r\n"),
    MSG.replace(b"\r\n\r\n", b"\n\n"),
    MSG + b"bad\r\r\n",
    MSG + b"bad\n\r\n",
    b"\n" + MSG,
    b"\r" + MSG,
], ids=["bare_lf", "bare_cr", "lf_headers", "cr_before_crlf", "lf_before_crlf", "leading_lf",
        "leading_cr"])
def test_bare_cr_lf_in_data_is_refused(relay, body):
    with relay.connect() as c:
        c.cmd("EHLO c")
        code, text, _ = send_message(c, body)
        assert code == 550 and text.startswith("5.6.0") and "bare CR or LF" in text, text
        assert wait_tmp_empty(relay) == []
        normal_transaction_ok(c)
    assert len(relay.queue()) == 1


# --- pipelined garbage, unknown commands ---------------------------------------

def _noise(kind):
    rnd = random.Random(f"sesrelay-{kind}")
    if kind == "random_bytes":
        return rnd.randbytes(64 * 1024)
    if kind == "random_no_lf":
        return bytes(rnd.choice(range(11, 256)) for _ in range(64 * 1024))
    if kind == "tls_client_hello":
        hello = bytes.fromhex("16030100c4010000c00303") + bytes(rnd.getrandbits(8) for _ in range(190))
        return hello * 40
    if kind == "nul_lines":
        return b"\x00" * 100 + b"\r\n" + b"\x00\r\n" * 50
    if kind == "crlf_flood":
        return b"\r\n" * 20000
    if kind == "command_soup":
        verbs = [b"MAIL FROM:<", b"RCPT TO:", b"DATA", b"BDAT", b"\x00", b"\r", b".", b"AUTH",
                 b"STARTTLS", b"EHLO", b"\xff\xfe", b" "]
        return b"".join(rnd.choice(verbs) + bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(40)))
                        + rnd.choice([b"\r\n", b"\n", b""]) for _ in range(3000))
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["random_bytes", "random_no_lf", "tls_client_hello",
                                  "nul_lines", "crlf_flood", "command_soup"])
def test_pipelined_garbage(relay, kind):
    """Binary noise: the daemon answers or hangs up, never crashes, never
    queues anything, and serves the next client at once."""
    noise = _noise(kind)
    c = relay.connect()
    try:
        try:
            c.sock.settimeout(10)
            c.sock.sendall(noise)
        except (BrokenPipeError, ConnectionResetError):
            pass  # hung up on us mid-flood: fine
        # whatever replies came are well formed
        try:
            c.sock.settimeout(2)
            while True:
                chunk = c.sock.recv(65536)
                if not chunk:
                    break
                c.buf += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        for l in c.buf.split(b"\r\n"):
            if l:
                assert re.match(rb"\d{3}[ -]\d\.\d{1,3}\.\d{1,3} ", l), l
    finally:
        c.close()
    assert relay.queue() == {}
    assert_daemon_alive(relay)


UNKNOWN = [
    (b"", 502), (b"   ", 502), (b"NOOPX", 502), (b"X" * 200, 502), (b"\x1b[31mRED\x1b[0m", 500),
    (b"\xff\xfe\xfd", 502), (b"MAIL\tFROM:<a@example.com>", 502), (b"QUITE", 502),
    (b"EHLO", 501), (b"DATA now", 501), (b"RCPT TO:<b@example.net>", 503),
    (b"XCLIENT ADDR=1.2.3.4", 502), (b"XFORWARD ADDR=1.2.3.4", 502), (b"ETRN example.com", 502),
    (b"TURN", 502), (b"ATRN", 502), (b"SEND FROM:<a@example.com>", 502), (b"SOML FROM:<a@example.com>", 502),
]


@pytest.mark.parametrize("line,code", UNKNOWN, ids=[repr(l[:20]) for l, _ in UNKNOWN])
def test_unknown_and_malformed_commands(relay, line, code):
    with relay.connect() as c:
        assert c.cmd("EHLO c")[0] == 250
        if line.startswith(b"DATA"):
            assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
            assert c.cmd("RCPT TO:<b@example.net>")[0] == 250
        c.send(line + b"\r\n")
        got, text, _ = c.reply()
        assert got == code and re.match(r"5\.5\.\d ", text), (line, got, text)
        assert c.cmd("RSET")[0] == 250
        normal_transaction_ok(c)
    assert len(relay.queue()) == 1


@pytest.mark.parametrize("first", ["EHLO client.test", "HELO client.test"])
@pytest.mark.parametrize("bad", ["EHLO", "HELO", "EHLO a b", "HELO a b"])
def test_bad_repeated_greeting_gets_exactly_one_reply(relay, first, bad):
    """After a good EHLO/HELO, a second greeting with a bad argument gets its
    501 5.5.4 and nothing else: one command, one reply, or every later reply
    is off by one (the client takes the stray 250 for its next command)."""
    with relay.connect() as c:
        assert c.cmd(first)[0] == 250
        c.send(bad + "\r\nNOOP\r\n")
        code, text, _ = c.reply()
        assert code == 501 and text.startswith("5.5.4"), (code, text)
        nxt = c.reply()
        assert nxt == (250, "2.0.0 Ok", ["250 2.0.0 Ok"]), f"second reply to {bad!r}: {nxt}"
        assert c.closed(timeout=0.3) is False and c.buf == b""


def test_pipelined_noop_flood_is_answered_in_order(relay):
    """50000 pipelined commands from a client that reads slowly: every one
    answered, in order, none lost, while output backpressure pauses input."""
    n = 50000  # about 550 KB in, 700 KB of replies out: both buffers fill
    with relay.connect(timeout=30) as c:
        c.cmd("EHLO c")
        payload = b"".join(b"NOOP %d\r\n" % i for i in range(n)) + b"QUIT\r\n"
        err = []

        def writer():
            try:
                c.sock.sendall(payload)
            except OSError as e:
                err.append(e)

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        time.sleep(0.5)  # let the server's output fill while we do not read
        codes = [c.reply()[0] for _ in range(n)]
        assert codes == [250] * n
        assert c.reply()[0] == 221
        t.join(30)
        assert not err, err
    assert_daemon_alive(relay)


# --- message sizes -------------------------------------------------------------

def test_zero_byte_message(relay):
    """DATA then "." at once: queued, with only our Received: header."""
    with relay.connect() as c:
        c.cmd("EHLO client.test")
        start_data(c)
        c.send(b".\r\n")
        code, text, _ = c.reply()
        assert code == 250, text
        qid = text.split()[-1]
    (m,) = relay.queue().values()
    assert re.fullmatch(received_header_re(qid, rb"bob@example\.net"), m["data"]), m["data"]


def _big_message(size):
    """A deterministic message of exactly `size` bytes with CRLF lines, some
    of them starting with dots (smtplib stuffs them, the relay unstuffs)."""
    head = b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: big\r\n\r\n"
    text = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ\xc3\xa4\r\n"
    lines = [head]
    total = len(head)
    i = 0
    while size - total > 200:
        if i % 1000 == 0:
            line = b".%09d dot line\r\n" % i
        elif i % 1777 == 0:
            line = b".\r\n" if i % 2 else b"..\r\n"
        else:
            line = b"%09d " % i + text
        lines.append(line)
        total += len(line)
        i += 1
    lines.append(b"p" * (size - total - 2) + b"\r\n")
    msg = b"".join(lines)
    assert len(msg) == size
    return msg


def queue_file_digest(path, qid):
    """Stream a queue file: (sha256 of the message minus Received:, length)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        assert f.readline() == b"SESRELAY-QUEUE 1\n"
        while f.readline() != b"data\n":
            assert f.tell() < 1 << 20
        datapos = f.tell()
        f.seek(size - 64)
        tail = f.read()
        m = re.search(rb"\nend (\d+)\n\Z", tail)
        assert m, tail
        n = int(m.group(1))
        assert datapos + n + len(b"end %d\n" % n) == size
        f.seek(datapos)
        first = f.read(4096)
        rx = re.match(received_header_re(qid), first)
        assert rx, first[:300]
        h = hashlib.sha256()
        f.seek(datapos + rx.end())
        left = n - rx.end()
        length = left
        while left:
            chunk = f.read(min(left, 1 << 20))
            assert chunk
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest(), length


def test_30mb_message_via_smtplib(relay):
    size = 30 * 1024 * 1024
    msg = _big_message(size)
    want = hashlib.sha256(msg).hexdigest()
    host, port = relay.addr()
    t0 = time.time()
    with smtplib.SMTP(host, port, timeout=60) as s:
        s.ehlo("bigclient.test")
        assert s.has_extn("size")
        refused = s.sendmail("alice@example.com", ["bob@example.net"], msg)
        assert refused == {}
    del msg
    elapsed = time.time() - t0
    print(f"30 MB through smtplib in {elapsed:.2f}s")
    (qid,) = os.listdir(os.path.join(relay.spool, "queue"))
    digest, length = queue_file_digest(os.path.join(relay.spool, "queue", qid), qid)
    assert length == size and digest == want
    relay.wait_log(qid + r": from=<alice@example.com>, size=\d+, nrcpt=1")


@pytest.fixture
def small_relay(relay_factory):
    return relay_factory(relay_section="max_message_size = 1M")


def test_declared_size_over_limit(small_relay):
    with small_relay.connect() as c:
        code, _, lines = c.cmd("EHLO c")
        assert "250-SIZE 1048576" in lines
        code, text, _ = c.cmd("MAIL FROM:<a@example.com> SIZE=1048577")
        assert code == 552 and text.startswith("5.3.4"), text
        assert c.cmd("MAIL FROM:<a@example.com> SIZE=1000")[0] == 250


@pytest.mark.parametrize("declared", [None, 1000])
def test_data_over_max_message_size(small_relay, declared):
    """Data that grows past max_message_size: 552 5.3.4 at the end, the
    partial file gone, nothing queued, the session goes on."""
    relay = small_relay
    chunk = b"0123456789" * 99 + b"\r\n"  # 992-octet lines
    with relay.connect() as c:
        c.cmd("EHLO c")
        mail = "MAIL FROM:<alice@example.com>" + (f" SIZE={declared}" if declared else "")
        assert c.cmd(mail)[0] == 250
        assert c.cmd("RCPT TO:<bob@example.net>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(MSG)
        for _ in range(3 * 1024 * 1024 // len(chunk)):
            c.send(chunk)
        # while the oversized data streams in, the temp file does not grow
        # past the limit (plus the envelope and one write buffer)
        for name in spool_dir(relay, "tmp"):
            try:
                assert os.path.getsize(os.path.join(relay.spool, "tmp", name)) < 1024 * 1024 + 256 * 1024
            except FileNotFoundError:
                pass
        c.send(b".\r\n")
        code, text, _ = c.reply()
        assert code == 552 and text.startswith("5.3.4"), text
        assert spool_dir(relay, "tmp") == []
        assert spool_dir(relay, "queue") == []
        normal_transaction_ok(c)
    assert len(relay.queue()) == 1


def filler(room):
    """CRLF lines of at most 1000 octets, `room` octets in all (room >= 2)."""
    sizes = [1000] * (room // 1000)
    rem = room % 1000
    if rem == 1:
        sizes[-1] = 999
        rem = 2
    if rem:
        sizes.append(rem)
    out = b"".join(b"f" * (n - 2) + b"\r\n" for n in sizes)
    assert len(out) == room
    return out


def test_message_exactly_at_limit(small_relay):
    """The limit counts the message as we will hand it on, Received: included
    (its length is fixed for a given client, helo and recipient): a message
    that reaches the limit exactly is accepted, one octet more is refused."""
    relay = small_relay
    with relay.connect() as c:
        c.cmd("EHLO c")
        code, text, _ = send_message(c)
        qid = text.split()[-1]
        recv_len = len(relay.queue()[qid]["data"]) - len(MSG)
    limit = 1024 * 1024
    for extra, want in ((-1, 250), (0, 250), (1, 552)):
        body = MSG + filler(limit - recv_len - len(MSG) + extra)
        with relay.connect() as c:
            c.cmd("EHLO c")
            code, text, _ = send_message(c, body)
            assert code == want, (extra, len(body), code, text)
            if want == 250:
                qid = text.split()[-1]
                assert len(relay.queue()[qid]["data"]) == limit + extra
            else:
                assert text.startswith("5.3.4")


# --- clients that vanish ---------------------------------------------------------

@pytest.mark.parametrize("tail", [b"", b"partial line", b"\r\n.", b"\r\n.\r", b"\r\n"],
                         ids=["after_line", "mid_line", "after_dot", "after_dot_cr", "after_crlf"])
@pytest.mark.parametrize("how", ["fin", "rst"])
def test_disconnect_mid_data(relay, tail, how):
    c = relay.connect()
    c.cmd("EHLO c")
    start_data(c)
    c.send(MSG + b"x" * 200000 + b"\r\n" + b"more text" + tail)
    time.sleep(0.2)
    if how == "rst":
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    relay.wait_log(r"lost connection after DATA \(\d+ bytes\) from localhost\[127\.0\.0\.1\]")
    relay.wait_log(r"removed \(client disconnected before end of data\)")
    assert wait_tmp_empty(relay) == []
    assert relay.queue() == {}
    assert_daemon_alive(relay)


def test_disconnect_right_after_data_command(relay):
    c = relay.connect()
    c.cmd("EHLO c")
    start_data(c)
    c.close()
    relay.wait_log(r"lost connection after DATA \(\d+ bytes\) from localhost\[127\.0\.0\.1\]")
    assert wait_tmp_empty(relay) == []
    assert relay.queue() == {}


# --- dot-stuffing ----------------------------------------------------------------

DOTTY = (b"From: alice@example.com\r\nSubject: dots\r\n\r\n"
         b".\r\n..\r\n...\r\n.leading\r\n..two\r\n. space\r\n.\ttab\r\n"
         b"middle . dot\r\nend.\r\n.\r\n")


def stuff(data):
    return re.sub(rb"(?m)^\.", b"..", data)


def test_dot_stuffing_round_trip_raw(relay):
    with relay.connect() as c:
        c.cmd("EHLO c")
        code, text, _ = send_message(c, stuff(DOTTY))
        assert code == 250, text
        qid = text.split()[-1]
    assert strip_received(relay.queue()[qid]["data"], qid) == DOTTY


def test_dot_stuffing_round_trip_smtplib(relay):
    host, port = relay.addr()
    with smtplib.SMTP(host, port, timeout=30) as s:
        assert s.sendmail("alice@example.com", ["bob@example.net"], DOTTY) == {}
    (qid, m), = relay.queue().items()
    assert strip_received(m["data"], qid) == DOTTY


def test_unstuffed_leading_dot_is_removed(relay):
    """RFC 5321 4.5.2: a line starting with a single dot followed by text
    loses that dot (the client forgot to stuff); it does not end the data."""
    with relay.connect() as c:
        c.cmd("EHLO c")
        code, text, _ = send_message(c, MSG + b".notstuffed\r\n")
        assert code == 250
        qid = text.split()[-1]
    assert strip_received(relay.queue()[qid]["data"], qid) == MSG + b"notstuffed\r\n"


# --- a real client as the attacker --------------------------------------------------

def test_swaks_smuggling_attempt(relay, tmp_path):
    """swaks sending a raw DATA section (no fix-ups) with a <LF>.<LF>
    smuggling attempt, pipelined: refused with 550 5.6.0, nothing queued."""
    raw = tmp_path / "smuggle.eml"
    raw.write_bytes(b"From: alice@example.com\r\nSubject: swaks smuggle\r\n\r\nhello\n.\n" +
                    SMUGGLED_TXN + b".\r\n")
    host, port = relay.addr()
    p = subprocess.run(["swaks", "--server", f"{host}:{port}", "--pipeline", "--from",
                        "alice@example.com", "--to", "bob@example.net", "--no-data-fixup",
                        "--data", f"@{raw}"], capture_output=True, text=True, timeout=60)
    assert "<** 550 5.6.0" in p.stdout, p.stdout + p.stderr
    assert p.returncode != 0
    assert relay.queue() == {}
    assert "evil@attacker.example" not in relay.read_log()


def test_swaks_pipelined_attachment(relay, tmp_path):
    att = tmp_path / "blob.bin"
    att.write_bytes(random.Random(7).randbytes(1024 * 1024))
    host, port = relay.addr()
    p = subprocess.run(["swaks", "--server", f"{host}:{port}", "--pipeline", "--from",
                        "alice@example.com", "--to", "bob@example.net,carol@example.org",
                        "--header", "Subject: swaks attachment", "--attach", f"@{att}"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    (m,) = relay.queue().values()
    assert m["rcpts"] == ["bob@example.net", "carol@example.org"]
    msg = email.message_from_bytes(m["data"])  # compat32: fast on big parts
    parts = [p for p in msg.walk() if p.get_filename() == "blob.bin"]
    assert len(parts) == 1 and parts[0].get_payload(decode=True) == att.read_bytes()
