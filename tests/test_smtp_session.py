"""The SMTP conversation (SPEC section 4) through the real binary: scripted
sessions first, then real clients (swaks, smtplib)."""
import os
import smtplib
import subprocess

import pytest

from relayharness import read_queue


MSG = b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nhello\r\n"


def send(c, sender, rcpts, body=MSG):
    assert c.cmd(f"MAIL FROM:<{sender}>")[0] == 250
    for r in rcpts:
        assert c.cmd(f"RCPT TO:<{r}>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    c.send(body + b".\r\n")
    return c.reply()


# Each script: list of (command, expected code[, text fragment]).
SCRIPTS = {
    "banner_and_ehlo": [
        ("EHLO client.test", 250, "ENHANCEDSTATUSCODES"),
        ("NOOP", 250, "2.0.0"),
        ("QUIT", 221, "2.0.0"),
    ],
    "helo_is_enough": [("HELO client.test", 250), ("MAIL FROM:<a@example.com>", 250)],
    "mail_before_ehlo": [("MAIL FROM:<a@example.com>", 503, "5.5.1")],
    "rcpt_before_mail": [("EHLO c", 250), ("RCPT TO:<b@example.net>", 503, "5.5.1")],
    "data_before_rcpt": [("EHLO c", 250), ("MAIL FROM:<a@example.com>", 250),
                         ("DATA", 554, "5.5.1")],
    "nested_mail": [("EHLO c", 250), ("MAIL FROM:<a@example.com>", 250),
                    ("MAIL FROM:<a@example.com>", 503, "5.5.1")],
    "rset_clears_transaction": [("EHLO c", 250), ("MAIL FROM:<a@example.com>", 250),
                                ("RSET", 250, "2.0.0"), ("RCPT TO:<b@example.net>", 503)],
    "null_sender": [("EHLO c", 250), ("MAIL FROM:<>", 250), ("RCPT TO:<b@example.net>", 250)],
    "null_recipient_refused": [("EHLO c", 250), ("MAIL FROM:<a@example.com>", 250),
                               ("RCPT TO:<>", 501, "5.1.3")],
    "bad_sender_syntax": [("EHLO c", 250), ("MAIL FROM:<a b@example.com>", 501, "5.1.7")],
    "mail_without_colon": [("EHLO c", 250), ("MAIL alice@example.com", 501, "5.5.4")],
    "size_too_big": [("EHLO c", 250), ("MAIL FROM:<a@example.com> SIZE=999999999999", 552, "5.3.4")],
    "size_ok": [("EHLO c", 250), ("MAIL FROM:<a@example.com> SIZE=1000 BODY=8BITMIME", 250)],
    "unknown_parameter": [("EHLO c", 250), ("MAIL FROM:<a@example.com> FOO=1", 555, "5.5.4")],
    "smtputf8_refused": [("EHLO c", 250), ("MAIL FROM:<a@example.com> SMTPUTF8", 555, "5.6.7")],
    "non_ascii_address": [("EHLO c", 250), ("MAIL FROM:<h\u00e9@example.com>", 553, "5.6.7")],
    "vrfy": [("VRFY bob", 252, "2.0.0")],
    "expn": [("EXPN list", 502, "5.5.1")],
    "help": [("HELP", 214, "2.0.0")],
    "unknown_command": [("FOO bar", 502, "5.5.2")],
    "lowercase_commands": [("ehlo c", 250), ("mail from:<a@example.com>", 250),
                           ("rcpt to:<b@example.net>", 250)],
    "space_after_colon": [("EHLO c", 250), ("MAIL FROM: <a@example.com>", 250)],
    "source_route_stripped": [("EHLO c", 250), ("MAIL FROM:<a@example.com>", 250),
                              ("RCPT TO:<@hop.example:b@example.net>", 250)],
    "bdat_refused": [("EHLO c", 250), ("BDAT 10 LAST", 502, "5.5.1")],
    "starttls_not_offered": [("EHLO c", 250), ("STARTTLS", 502, "5.5.1")],
    "auth_not_offered": [("EHLO c", 250), ("AUTH PLAIN AGFAAGI=", 503, "5.5.1")],
    "helo_needs_argument": [("EHLO", 501, "5.5.4")],
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script(relay, name):
    with relay.connect() as c:
        assert c.banner[0] == 220 and c.banner[1] == "relay.test ESMTP sesrelay"
        for step in SCRIPTS[name]:
            cmd, code = step[0], step[1]
            got = c.cmd(cmd)
            assert got[0] == code, f"{cmd!r}: {got}"
            if len(step) > 2:
                assert step[2] in "\n".join(got[2]), f"{cmd!r}: {got}"


def test_ehlo_advertises_exactly(relay):
    with relay.connect() as c:
        code, _, lines = c.cmd("EHLO client.test")
        assert code == 250
        kw = [l[4:] for l in lines[1:]]
        assert kw == ["PIPELINING", "SIZE 41943040", "8BITMIME", "ENHANCEDSTATUSCODES"]
        assert not any("SMTPUTF8" in k or "STARTTLS" in k or "AUTH" in k for k in kw)


def test_every_reply_has_enhanced_code(relay):
    import re
    with relay.connect() as c:
        for cmd in ["MAIL FROM:<a@x.org>", "EHLO c", "VRFY x", "HELP", "FOO", "MAIL FROM:<a@x.org>",
                    "RCPT TO:<b@y.org>", "RSET", "NOOP", "QUIT"]:
            code, text, lines = c.cmd(cmd)
            for l in lines[1:] if cmd.startswith("EHLO") else lines:
                if cmd.startswith("EHLO"):
                    continue
                assert re.match(r"\d{3}[ -][245]\.\d{1,3}\.\d{1,3} ", l), l


def test_queued_message_is_exact(relay):
    with relay.connect() as c:
        c.cmd("EHLO client.test")
        code, text, _ = send(c, "alice@example.com", ["bob@example.net", "carol@example.org"],
                             MSG + b"..leading dot\r\n")
        assert code == 250 and text.startswith("2.0.0 Ok: queued as ")
        qid = text.split()[-1]
    q = relay.queue()
    assert list(q) == [qid]
    m = q[qid]
    assert m["sender"] == "alice@example.com"
    assert m["rcpts"] == ["bob@example.net", "carol@example.org"]
    assert m["client"] == "localhost[127.0.0.1]" and m["helo"] == "client.test"
    # Received: prepended, then the message byte for byte with dots unstuffed
    assert m["data"].startswith(b"Received: from client.test (localhost[127.0.0.1])\r\n\tby relay.test (sesrelay) with ESMTP id " + qid.encode())
    assert m["data"].endswith(MSG + b".leading dot\r\n")
    relay.wait_log(qid + r": from=<alice@example.com>, size=\d+, nrcpt=2")


def test_duplicate_recipient_queued_once(relay):
    with relay.connect() as c:
        c.cmd("EHLO c")
        assert send(c, "a@example.com", ["b@example.net", "B@example.net"])[0] == 250
    (m,) = relay.queue().values()
    assert m["rcpts"] == ["b@example.net"]


def test_several_messages_one_session(relay):
    with relay.connect() as c:
        c.cmd("EHLO c")
        ids = {send(c, "a@example.com", [f"r{i}@example.net"])[1].split()[-1] for i in range(5)}
    assert set(relay.queue()) == ids and len(ids) == 5


def test_pipelined_transaction(relay):
    with relay.connect() as c:
        c.cmd("EHLO c")
        c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n")
        assert [c.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
        c.send(MSG + b".\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<d@example.net>\r\nDATA\r\n")
        assert c.reply()[0] == 250
        assert [c.reply()[0] for _ in range(3)] == [250, 250, 354]
        c.send(MSG + b".\r\nQUIT\r\n")
        assert c.reply()[0] == 250 and c.reply()[0] == 221
    assert len(relay.queue()) == 2


def test_relay_denied_outside_networks(relay_factory):
    r = relay_factory(listeners=None)
    r.listeners["local"]["relay_networks"] = "192.0.2.0/24"
    r.write_config()
    r.stop()
    r.start()
    with r.connect() as c:
        c.cmd("EHLO c")
        assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
        code, text, _ = c.cmd("RCPT TO:<victim@example.net>")
        assert code == 554 and text.startswith("5.7.1 <victim@example.net>: Relay access denied")
        assert c.cmd("DATA")[0] == 554
    assert r.queue() == {}
    r.wait_log(r"NOQUEUE: reject: RCPT from localhost\[127.0.0.1\]: 554 5.7.1 Relay access denied; from=<a@example.com> to=<victim@example.net>")


def test_auth_required_listener_refuses_mail(relay_factory):
    r = relay_factory(listeners=None, start=False)
    users = r.dir + "/users"
    open(users, "w").close()
    os.chmod(users, 0o600)
    r.listeners["local"]["auth"] = "required"
    r.write_config(extra=f"[users]\nfile = {users}\n")
    r.start()
    with r.connect() as c:
        c.cmd("EHLO c")
        code, text, _ = c.cmd("MAIL FROM:<a@example.com>")
        assert code == 530 and text.startswith("5.7.0 Authentication required")


def test_max_recipients(relay_factory):
    r = relay_factory(relay_section="max_recipients = 3")
    with r.connect() as c:
        c.cmd("EHLO c")
        c.cmd("MAIL FROM:<a@example.com>")
        codes = [c.cmd(f"RCPT TO:<r{i}@example.net>")[0] for i in range(5)]
        assert codes == [250, 250, 250, 452, 452]
        assert c.cmd("DATA")[0] == 354
        c.send(MSG + b".\r\n")
        assert c.reply()[0] == 250
    (m,) = r.queue().values()
    assert len(m["rcpts"]) == 3


def test_too_many_errors_disconnects(relay):
    with relay.connect() as c:
        codes = [c.cmd("BOGUS")[0] for _ in range(20)]
        assert set(codes) == {502}
        # the 20th error is answered, then the session is cut off
        code, text, _ = c.reply()
        assert code == 421 and "too many errors" in text
        assert c.closed()


def test_http_request_is_cut_off(relay):
    with relay.connect() as c:
        code, text, _ = c.cmd("GET / HTTP/1.1")
        assert code == 221 and text.startswith("2.7.0")
        assert c.closed()
    relay.wait_log(r"non-SMTP command from localhost\[127.0.0.1\]: GET")


def test_disconnect_line(relay):
    with relay.connect() as c:
        c.cmd("EHLO c")
        c.cmd("FOO")
        send(c, "a@example.com", ["b@example.net"])
        c.cmd("QUIT")
    relay.wait_log(r"disconnect from localhost\[127.0.0.1\] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5")


def test_swaks(relay):
    host, port = relay.addr()
    r = subprocess.run(["swaks", "--server", f"{host}:{port}", "--from", "alice@example.com",
                        "--to", "bob@example.net,carol@example.net", "--header", "Subject: swaks test",
                        "--body", "body from swaks"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "250 2.0.0 Ok: queued as" in r.stdout
    (m,) = relay.queue().values()
    assert m["rcpts"] == ["bob@example.net", "carol@example.net"]
    assert b"Subject: swaks test\r\n" in m["data"] and b"body from swaks" in m["data"]


def test_smtplib(relay):
    host, port = relay.addr()
    with smtplib.SMTP(host, port, timeout=30) as s:
        s.ehlo("pyclient.test")
        assert s.has_extn("pipelining") and s.has_extn("8bitmime")
        refused = s.sendmail("alice@example.com", ["bob@example.net"],
                             "From: alice@example.com\r\nSubject: py\r\n\r\n.dot line\r\nend\r\n")
        assert refused == {}
    (m,) = relay.queue().values()
    assert m["data"].endswith(b"\r\n\r\n.dot line\r\nend\r\n")


def test_smtplib_8bit_body(relay):
    host, port = relay.addr()
    body = "From: alice@example.com\r\nSubject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n안녕하세요\r\n".encode()
    with smtplib.SMTP(host, port, timeout=30) as s:
        s.sendmail("alice@example.com", ["bob@example.net"], body, mail_options=["BODY=8BITMIME"])
    (m,) = relay.queue().values()
    assert m["data"].endswith(body)
