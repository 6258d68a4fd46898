"""sesrelay sendmail (SPEC 2): sendmail(8)-compatible submission from stdin,
through the real binary against a running daemon, the way cron, PHP mail(),
git send-email and shell scripts call /usr/sbin/sendmail.  Every check reads
what the daemon put in its spool, so "exit 0" is tested to mean "queued"."""
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading

import pytest

from relayharness import BIN, free_port

pytestmark = pytest.mark.timeout(120)

EX_USAGE, EX_DATAERR, EX_NOUSER, EX_UNAVAILABLE = 64, 65, 67, 69
EX_TEMPFAIL, EX_PROTOCOL, EX_CONFIG = 75, 76, 78
ME = pwd.getpwuid(os.getuid()).pw_name


def run(args, data=b"", argv0=None, timeout=30, user=None, config=None, relay=None):
    """Run `sesrelay -c CONFIG sendmail ARGS` (or a different argv) with data on stdin."""
    if argv0 is None:
        cmd = [BIN] + (["-c", config or relay.config] if (config or relay) else []) + \
              ["sendmail"] + args
    else:
        cmd = [argv0] + args
    if user:
        cmd = ["runuser", "-u", user, "--"] + cmd
    if isinstance(data, str):
        data = data.encode()
    r = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout)
    err = r.stderr.decode("utf-8", "replace")
    assert "Sanitizer" not in err and "runtime error:" not in err, err
    assert r.stdout == b"", r.stdout  # sendmail never talks on stdout
    return r.returncode, err


def only(relay):
    q = relay.queue()
    assert len(q) == 1, q
    return next(iter(q.values()))


def headers(data):
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    return re.sub(r"\r\n[ \t]", " ", head).split("\r\n")


def header(data, name):
    return [h.split(":", 1)[1].strip() for h in headers(data)
            if h.split(":", 1)[0].lower() == name.lower()]


def body(data):
    return data.split(b"\r\n\r\n", 1)[1]


# ---- what cron, scripts and PHP do -------------------------------------------

def test_cron_pipe_with_t(relay):
    """cron: `... | sendmail -t` with To/Cc/Bcc; Bcc (folded) removed, headers added."""
    script = ("printf 'To: Ops <ops@example.com>, admin\\nCc: \"Doe, Jane\" <jane@example.com>\\n"
              "Bcc: audit@example.com,\\n  hidden@example.org\\nSubject: cron <root@host> job\\n"
              "\\nbackup done\\n' | "
              f"'{BIN}' -c '{relay.config}' sendmail -t")
    r = subprocess.run(["bash", "-c", script], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"" and r.stderr == b""
    m = only(relay)
    assert m["sender"] == f"{ME}@relay.test"
    assert m["rcpts"] == ["ops@example.com", "admin@relay.test", "jane@example.com",
                          "audit@example.com", "hidden@example.org"]
    d = m["data"]
    assert b"Bcc" not in d and b"audit@" not in d and b"hidden@" not in d
    assert header(d, "To") == ["Ops <ops@example.com>, admin"]
    assert header(d, "Subject") == ["cron <root@host> job"]
    assert header(d, "From") == [f"{ME}@relay.test"]
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}", header(d, "Date")[0])
    assert re.fullmatch(r"<\d{14}\.[0-9a-f]{16}@relay\.test>", header(d, "Message-ID")[0])
    assert body(d) == b"backup done\r\n"
    assert b"\n" not in d.replace(b"\r\n", b"")


def test_argument_recipients(relay):
    rc, err = run(["a@example.com", "bob", "Carol <carol@example.net>, d@example.org",
                   "A@EXAMPLE.COM"], b"Subject: args\n\nhi\n", relay=relay)
    assert rc == 0, err
    m = only(relay)
    assert m["rcpts"] == ["a@example.com", "bob@relay.test", "carol@example.net",
                          "d@example.org"]
    assert header(m["data"], "Subject") == ["args"]
    assert header(m["data"], "To") == []  # not invented


def test_t_adds_argument_recipients_and_prefers_resent(relay):
    msg = (b"To: old@example.com\nResent-To: new@example.com\nResent-Bcc: rb@example.com\n"
           b"Subject: fwd\n\nx\n")
    rc, err = run(["-t", "extra@example.com"], msg, relay=relay)
    assert rc == 0, err
    m = only(relay)
    assert m["rcpts"] == ["extra@example.com", "new@example.com", "rb@example.com"]
    assert b"Resent-Bcc" not in m["data"] and header(m["data"], "To") == ["old@example.com"]


@pytest.mark.parametrize("args,sender", [
    (["-f", "app@example.com"], "app@example.com"),
    (["-fapp@example.com"], "app@example.com"),
    (["-r", "App <app@example.com>"], "app@example.com"),
    (["-f", "daemon"], "daemon@relay.test"),
    (["-f", "<>"], ""),
    (["-f", ""], ""),
])
def test_envelope_sender(relay, args, sender):
    rc, err = run(args + ["to@example.com"], b"Subject: s\n\nx\n", relay=relay)
    assert rc == 0, err
    m = only(relay)
    assert m["sender"] == sender
    # the added From: names the sender (the login name for the null sender)
    assert header(m["data"], "From") == [sender or f"{ME}@relay.test"]


def test_full_name(relay):
    rc, err = run(["-F", "Cron Daemon", "-f", "cron@example.com", "to@example.com"],
                  b"Subject: s\n\nx\n", relay=relay)
    assert rc == 0, err
    assert header(only(relay)["data"], "From") == ["Cron Daemon <cron@example.com>"]


def test_full_name_quoted_and_encoded(relay):
    rc, err = run(["-F", "Doe, J\u00e9r\u00f4me", "-f", "j@example.com", "to@example.com"],
                  b"\nx\n", relay=relay)
    assert rc == 0, err
    assert header(only(relay)["data"], "From") == ["=?UTF-8?B?RG9lLCBKw6lyw7RtZQ==?= <j@example.com>"]


def test_long_full_name_is_folded(relay):
    rc, err = run(["-F", "N" * 1500, "-f", "a@example.com", "to@example.com"], b"\nx\n",
                  relay=relay)
    assert rc == 0, err
    d = only(relay)["data"]
    assert all(len(l) <= 998 for l in d.split(b"\r\n"))
    assert header(d, "From") == ["N" * 992 + " " + "N" * 508 + " <a@example.com>"]


def test_too_many_recipients(relay):
    to = ", ".join(f"r{i}@example.com" for i in range(10001))
    rc, err = run(["-t"], f"To: {to}\n\nx\n", relay=relay)
    assert rc == EX_DATAERR and "more than 10000 recipients" in err
    assert relay.queue() == {}


def test_full_name_does_not_replace_from(relay):
    rc, err = run(["-F", "Ignored", "to@example.com"],
                  b"From: Real <real@example.com>\nSubject: s\n\nx\n", relay=relay)
    assert rc == 0, err
    assert header(only(relay)["data"], "From") == ["Real <real@example.com>"]


def test_existing_date_and_message_id_kept(relay):
    msg = (b"Date: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <keep@example.com>\n"
           b"From: a@example.com\n\nx\n")
    rc, err = run(["to@example.com"], msg, relay=relay)
    assert rc == 0, err
    d = only(relay)["data"]
    assert header(d, "Date") == ["Mon, 1 Jan 2024 00:00:00 +0000"]
    assert header(d, "Message-ID") == ["<keep@example.com>"]
    assert header(d, "From") == ["a@example.com"]


def test_php_mail(relay):
    """PHP mail(): sendmail -t -i, To and Subject headers, then its own."""
    msg = (b"To: customer@example.com\nSubject: Your order\n"
           b"X-PHP-Originating-Script: 33:shop.php\nFrom: shop@example.com\n"
           b"MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\n\n"
           b"Thanks!\n.\nbye\n")
    rc, err = run(["-t", "-i"], msg, relay=relay)
    assert rc == 0, err
    m = only(relay)
    assert m["rcpts"] == ["customer@example.com"]
    assert header(m["data"], "Subject") == ["Your order"]
    assert header(m["data"], "From") == ["shop@example.com"]
    assert body(m["data"]) == b"Thanks!\r\n.\r\nbye\r\n"


# ---- line ends, dots, long lines ------------------------------------------------

def test_bare_lf_and_cr_become_crlf(relay):
    msg = b"Subject: ends\nX-A: 1\r\n\nlf\ncrlf\r\ncr\rmixed\n\r\n\nno newline at end"
    rc, err = run(["to@example.com"], msg, relay=relay)
    assert rc == 0, err
    d = only(relay)["data"]
    assert d.startswith(b"Received: ")
    assert b"Subject: ends\r\nX-A: 1\r\n" in d
    assert body(d) == b"lf\r\ncrlf\r\ncr\r\nmixed\r\n\r\n\r\nno newline at end\r\n"
    assert d.count(b"\n") == d.count(b"\r\n") and d.count(b"\r") == d.count(b"\r\n")


def test_dot_line_ends_input_without_i(relay):
    msg = b"Subject: dots\n\n.leading dot\n..two\nbefore\n.\nafter the dot\n"
    rc, err = run(["to@example.com"], msg, relay=relay)
    assert rc == 0, err
    assert body(only(relay)["data"]) == b".leading dot\r\n..two\r\nbefore\r\n"


@pytest.mark.parametrize("flag", [["-i"], ["-oi"], ["-ti"]])
def test_dot_line_is_data_with_i(relay, flag):
    msg = b"To: to@example.com\nSubject: dots\n\n.leading dot\n..two\n.\nafter the dot\n."
    rc, err = run(flag + ["to@example.com"], msg, relay=relay)
    assert rc == 0, err
    assert body(only(relay)["data"]) == b".leading dot\r\n..two\r\n.\r\nafter the dot\r\n.\r\n"


def test_dot_ends_input_in_header_section(relay):
    rc, err = run(["to@example.com"], b"Subject: only headers\n.\nignored\n", relay=relay)
    assert rc == 0, err
    d = only(relay)["data"]
    assert header(d, "Subject") == ["only headers"] and body(d) == b""


def test_body_without_blank_line_and_mbox_from(relay):
    """A leading mbox "From " line is dropped; text that is no header starts the body."""
    msg = b"From someone@example.com Mon Jan  1 00:00:00 2024\nSubject: s\nthis is body\nmore\n"
    rc, err = run(["to@example.com"], msg, relay=relay)
    assert rc == 0, err
    d = only(relay)["data"]
    assert b"someone@" not in d
    assert header(d, "Subject") == ["s"]
    assert body(d) == b"this is body\r\nmore\r\n"


def test_long_lines_are_broken(relay):
    long_body = b"x" * 2500
    long_dot = b"." + b"y" * 1200
    rc, err = run(["to@example.com"], b"Subject: long\n\n" + long_body + b"\n" + long_dot + b"\n",
                  relay=relay)
    assert rc == 0, err
    d = only(relay)["data"]
    lines = body(d).split(b"\r\n")
    assert all(len(l) <= 998 for l in lines), [len(l) for l in lines]
    assert b"".join(l.lstrip(b" ") for l in lines[:3]) == long_body
    assert lines[3].startswith(b".y") and lines[4].startswith(b" y")


def test_nul_is_refused(relay):
    rc, err = run(["to@example.com"], b"Subject: s\n\nbin\0ary\n", relay=relay)
    assert rc == EX_DATAERR and "NUL" in err and err.count("\n") == 1
    assert relay.queue() == {}


def test_eight_bit_body(relay):
    msg = "Subject: caf\u00e9\nContent-Type: text/plain; charset=UTF-8\n\nd\u00e9j\u00e0 vu\n"
    rc, err = run(["to@example.com"], msg, relay=relay)
    assert rc == 0, err
    assert body(only(relay)["data"]) == "d\u00e9j\u00e0 vu\r\n".encode()


# ---- flags callers pass ---------------------------------------------------------

@pytest.mark.parametrize("flags", [
    ["-oi", "-t"],                                               # cron (many), logwatch
    ["-odi", "-oem", "-t", "-i"],                                # older cron
    ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "-oi", "-t"],   # Debian cron
    ["-B8BITMIME", "-t"],
    ["-B", "7BIT", "-t"],
    ["-v", "-t"],
    ["-odb", "-oXfoo", "-t"],
    ["-N", "never", "-R", "hdrs", "-V", "envid", "-t"],
    ["-X", "/dev/null", "-L", "tag", "-t"],
    ["-bm", "-t"],
    ["-t", "-i", "--"],
    ["-G", "-U", "-m", "-n", "-t"],
])
def test_flags_accepted(relay, flags):
    rc, err = run(flags, b"To: to@example.com\nSubject: flags\n\nx\n", relay=relay)
    assert rc == 0, err
    assert only(relay)["rcpts"] == ["to@example.com"]


def test_git_send_email_style(relay):
    """git send-email: sendmail -i RCPT... with the full message on stdin."""
    msg = (b"From: Dev <dev@example.com>\nTo: list@example.org\nCc: rev@example.net\n"
           b"Subject: [PATCH] fix\n\n---\n diff\n")
    rc, err = run(["-i", "-f", "dev@example.com", "list@example.org", "rev@example.net"], msg,
                  relay=relay)
    assert rc == 0, err
    m = only(relay)
    assert (m["sender"], m["rcpts"]) == ("dev@example.com", ["list@example.org", "rev@example.net"])


def test_options_after_recipients_and_double_dash(relay):
    rc, err = run(["to@example.com", "-f", "a@example.com", "--", "-odd@example.com"],
                  b"\nx\n", relay=relay)
    assert rc == 0, err
    m = only(relay)
    assert (m["sender"], m["rcpts"]) == ("a@example.com", ["to@example.com", "-odd@example.com"])


@pytest.mark.parametrize("args,why", [
    (["-bp"], "sesrelay queue list"),
    (["-q"], "sesrelay queue flush"),
    (["-q30m"], "sesrelay queue flush"),
    (["-bs"], "not supported"),
    (["-bi"], "not supported"),
    (["-bv", "a@example.com"], "not supported"),
    (["-k", "a@example.com"], "unknown option -k"),
    (["--frobnicate", "a@example.com"], "unknown option"),
    (["a@example.com", "-f"], "-f needs an argument"),
    (["John Doe"], "bad recipient address"),
    (["-f", "a@x, b@y", "c@example.com"], "bad sender address"),
    ([], "no recipients"),
])
def test_usage_errors(relay, args, why):
    rc, err = run(args, b"Subject: s\n\nx\n", relay=relay)
    assert rc == EX_USAGE, err
    assert why in err and err.count("\n") == 1 and err.startswith("sesrelay sendmail: ")
    assert relay.queue() == {}


def test_help(relay):
    r = subprocess.run([BIN, "-c", relay.config, "sendmail", "--help"], capture_output=True,
                       timeout=30)
    assert r.returncode == 0 and b"usage: sendmail" in r.stdout


def test_no_recipients_in_headers(relay):
    rc, err = run(["-t"], b"Subject: nobody\n\nx\n", relay=relay)
    assert rc == EX_USAGE and "no recipients" in err
    rc, err = run(["-t"], b"To: undisclosed-recipients:;\n\nx\n", relay=relay)
    assert rc == EX_USAGE and "no recipients" in err
    assert relay.queue() == {}


def test_unreadable_to_header(relay):
    rc, err = run(["-t"], b"To: \"unterminated <a@example.com>\n\nx\n", relay=relay)
    assert rc == EX_DATAERR and "To:" in err and "unterminated quoted string" in err
    assert relay.queue() == {}


# ---- how it is installed and run -----------------------------------------------

def test_invoked_as_sendmail_with_C(relay, tmp_path):
    link = tmp_path / "bin" / "sendmail"
    link.parent.mkdir()
    os.symlink(os.path.abspath(BIN), link)
    rc, err = run(["-C", relay.config, "-oi", "-t"], b"To: to@example.com\nSubject: link\n\nx\n",
                  argv0=str(link))
    assert rc == 0, err
    assert only(relay)["rcpts"] == ["to@example.com"]
    # -C overrides SESRELAY_CONFIG and the default path
    env = dict(os.environ, SESRELAY_CONFIG="/nonexistent/relay.ini")
    r = subprocess.run([str(link), "-C", relay.config, "to@example.com"], input=b"\nx\n",
                       capture_output=True, timeout=30, env=env)
    assert r.returncode == 0, r.stderr
    # and SESRELAY_CONFIG is used without -C
    env = dict(os.environ, SESRELAY_CONFIG=relay.config)
    r = subprocess.run([str(link), "to@example.com"], input=b"\nx\n", capture_output=True,
                       timeout=30, env=env)
    assert r.returncode == 0, r.stderr
    assert len(relay.queue()) == 3


def test_c_after_command_word(relay):
    r = subprocess.run([BIN, "sendmail", "-c", relay.config, "-t"],
                       input=b"To: to@example.com\n\nx\n", capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert only(relay)["rcpts"] == ["to@example.com"]


@pytest.mark.skipif(os.getuid() != 0 or not shutil.which("runuser"),
                    reason="needs root to run as nobody")
def test_unprivileged_user(relay):
    d = tempfile.mkdtemp(prefix="sesrelay-sendmail-")
    try:
        os.chmod(d, 0o755)
        conf = os.path.join(d, "relay.ini")
        shutil.copy(relay.config, conf)
        os.chmod(conf, 0o644)
        rc, err = run(["-t"], b"To: to@example.com\nSubject: from nobody\n\nx\n", user="nobody",
                      config=conf)
        assert rc == 0, err
        m = only(relay)
        assert m["sender"] == "nobody@relay.test"
        assert header(m["data"], "From") == ["nobody@relay.test"]
        # an unreadable config: 78 with a hint, never a crash
        os.chmod(conf, 0o600)
        rc, err = run(["to@example.com"], b"x\n", user="nobody", config=conf)
        assert rc == EX_CONFIG and "Permission denied" in err and "calling user" in err
    finally:
        shutil.rmtree(d)


# ---- failures ---------------------------------------------------------------------

def test_relay_not_running(relay_factory):
    r = relay_factory(start=False)
    rc, err = run(["-t"], b"To: to@example.com\n\nx\n", relay=r)
    assert rc == EX_TEMPFAIL
    assert err == (f"sesrelay sendmail: cannot reach the relay at 127.0.0.1:{r.port} "
                   "(connection refused): is sesrelay running?\n")


def test_relay_stopped_after_start(relay):
    relay.stop()
    rc, err = run(["to@example.com"], b"x\n", relay=relay)
    assert rc == EX_TEMPFAIL and "is sesrelay running?" in err and err.count("\n") == 1


def test_message_too_large(relay_factory):
    r = relay_factory(relay_section="max_message_size = 2K")
    rc, err = run(["to@example.com"], b"Subject: big\n\n" + b"x" * 100 + b"\n" * 3000, relay=r)
    assert rc == EX_DATAERR and "message too large" in err and err.count("\n") == 1
    assert r.queue() == {}
    # a big header section counts too
    rc, err = run(["to@example.com"], b"X-Big: " + b"y" * 5000 + b"\n\nx\n", relay=r)
    assert rc == EX_DATAERR and "message too large" in err
    # small enough: fine
    rc, err = run(["to@example.com"], b"Subject: small\n\nx\n", relay=r)
    assert rc == 0, err


def test_message_larger_than_relay_size(relay_factory, tmp_path):
    """The client's config allows more than the daemon's SIZE: the SIZE wins."""
    r = relay_factory(relay_section="max_message_size = 2K")
    conf = tmp_path / "client.ini"
    conf.write_text(open(r.config).read().replace("max_message_size = 2K",
                                                  "max_message_size = 1M"))
    rc, err = run(["to@example.com"], b"Subject: big\n\n" + b"x\n" * 3000, config=str(conf))
    assert rc == EX_DATAERR and "the relay accepts at most 2048" in err
    assert r.queue() == {}


def test_temporary_failure_from_relay(relay_factory):
    """452 at MAIL (spool below its reserve): 75 and the relay's reply."""
    r = relay_factory(relay_section="spool_reserve = 100000G")
    rc, err = run(["to@example.com"], b"\nx\n", relay=r)
    assert rc == EX_TEMPFAIL
    assert err.startswith("sesrelay sendmail: temporary failure (MAIL FROM): 452 4.3.1")
    assert err.count("\n") == 1
    assert r.queue() == {}


def test_recipient_refused(relay):
    rc, err = run(["ok@example.com", "h\u00e9@example.com"], b"\nx\n", relay=relay)
    assert rc == EX_NOUSER and "553 5.6.7" in err and err.count("\n") == 1
    assert relay.queue() == {}  # all or nothing


def test_more_recipients_than_max_recipients(relay_factory):
    r = relay_factory(relay_section="max_recipients = 2")
    rcpts = [f"r{i}@example.com" for i in range(5)]
    rc, err = run(rcpts, b"Subject: many\n\nx\n", relay=r)
    assert rc == 0, err
    q = r.queue().values()
    assert sorted(sum((m["rcpts"] for m in q), [])) == rcpts
    assert sorted(len(m["rcpts"]) for m in q) == [1, 2, 2]
    assert len({m["data"].split(b"\r\nSubject:", 1)[1] for m in q}) == 1  # one message


@pytest.mark.parametrize("listener,why", [
    ({"address": "127.0.0.1:{port}", "relay_networks": "10.0.0.0/8"}, "relay_networks"),
    ({"address": "127.0.0.1:{port}", "proxy_protocol": "yes"}, "tls = none"),
])
def test_no_usable_listener(relay_factory, listener, why):
    port = free_port()
    r = relay_factory(listeners={"x": {k: v.format(port=port) for k, v in listener.items()}},
                      start=False)
    rc, err = run(["to@example.com"], b"x\n", relay=r)
    assert rc == EX_CONFIG and why in err and r.config in err


def test_wildcard_listener_dials_loopback(relay_factory):
    """address = 0.0.0.0:PORT: sendmail connects to 127.0.0.1:PORT."""
    r = relay_factory(listeners={"lan": {"address": f"0.0.0.0:{free_port()}"}})
    rc, err = run(["to@example.com"], b"\nx\n", relay=r)
    assert rc == 0, err
    assert only(r)["client"].endswith("[127.0.0.1]")


def test_config_error(tmp_path):
    bad = tmp_path / "bad.ini"
    bad.write_text("[relay]\nhostnme = x\n")
    rc, err = run(["to@example.com"], b"x\n", config=str(bad))
    assert rc == EX_CONFIG and f"{bad}:2" in err
    rc, err = run(["to@example.com"], b"x\n", config=str(tmp_path / "missing.ini"))
    assert rc == EX_CONFIG and "cannot open" in err


# ---- the SMTP conversation itself, against a scripted server -------------------

class FakeRelay(threading.Thread):
    """Listens where the relay would and answers from a script; a reply of
    None closes the connection at that point.  Records what it received."""

    DEFAULT = {"banner": "220 fake ESMTP", "EHLO": "250-fake\r\n250-SIZE 1000000\r\n250 8BITMIME",
               "MAIL": "250 2.1.0 Ok", "RCPT": "250 2.1.5 Ok", "DATA": "354 End data with <CR><LF>.<CR><LF>",
               "DOT": "250 2.0.0 Ok: queued as FAKE", "QUIT": "221 2.0.0 Bye"}

    def __init__(self, port, **replies):
        super().__init__(daemon=True)
        self.replies = dict(self.DEFAULT, **replies)
        self.commands, self.data = [], b""
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(1)
        self.sock.settimeout(30)
        self.start()

    def say(self, conn, key):
        text = self.replies[key]
        if text is None:
            return False
        conn.sendall(text.encode() + b"\r\n")
        return True

    def run(self):
        conn, _ = self.sock.accept()
        conn.settimeout(30)
        f = conn.makefile("rb")
        try:
            if not self.say(conn, "banner"):
                return
            while True:
                line = f.readline()
                if not line:
                    return
                cmd = line.rstrip(b"\r\n").decode()
                self.commands.append(cmd)
                verb = cmd.split(" ")[0].split(":")[0].upper()
                if verb == "DATA":
                    if not self.say(conn, "DATA"):
                        return
                    while not self.data.endswith(b"\r\n.\r\n"):
                        chunk = f.readline()
                        if not chunk:
                            return
                        self.data += chunk
                    if not self.say(conn, "DOT"):
                        return
                elif not self.say(conn, verb if verb in self.replies else "MAIL") or verb == "QUIT":
                    return
        finally:
            f.close()
            conn.close()
            self.sock.close()


def fake(relay_factory, **replies):
    r = relay_factory(start=False)
    return r, FakeRelay(r.port, **replies)


def test_wire_format(relay_factory):
    """Dot-stuffing, CRLF, SIZE= and BODY=8BITMIME as they go over the wire."""
    r, srv = fake(relay_factory)
    msg = "Subject: w\n\n.leading\n..two\ncaf\u00e9\n"
    rc, err = run(["-i", "-f", "a@example.com", "b@example.com"], msg, relay=r)
    assert rc == 0, err
    srv.join(10)
    assert srv.commands[0] == "EHLO localhost"
    assert srv.commands[1] == f"MAIL FROM:<a@example.com> SIZE={len(srv.data) - 3} BODY=8BITMIME"
    assert srv.commands[2:] == ["RCPT TO:<b@example.com>", "DATA", "QUIT"]
    assert srv.data.endswith("\r\n\r\n..leading\r\n...two\r\ncaf\u00e9\r\n.\r\n".encode())
    assert srv.data.startswith(b"Subject: w\r\nFrom: a@example.com\r\nDate: ")


def test_no_size_no_8bitmime_offered(relay_factory):
    r, srv = fake(relay_factory, EHLO="250 fake")
    rc, err = run(["b@example.com"], "\ncaf\u00e9\n", relay=r)
    assert rc == 0, err
    srv.join(10)
    assert srv.commands[1] == f"MAIL FROM:<{ME}@relay.test>"


@pytest.mark.parametrize("replies,code,why", [
    ({"banner": None}, EX_TEMPFAIL, "closed the connection (greeting)"),
    ({"banner": "hello there"}, EX_PROTOCOL, "garbled reply (greeting): hello there"),
    ({"banner": "554 5.7.1 go away"}, EX_UNAVAILABLE, "554 5.7.1 go away"),
    ({"banner": "421 4.7.0 busy"}, EX_TEMPFAIL, "temporary failure (greeting): 421 4.7.0 busy"),
    ({"EHLO": "250-a\r\n251 b"}, EX_PROTOCOL, "mixed reply codes"),
    ({"EHLO": "250-fake\r\n250 SIZE 10"}, EX_DATAERR, "the relay accepts at most 10"),
    ({"MAIL": "553 5.7.1 not yours"}, EX_UNAVAILABLE, "refused the message (MAIL FROM): 553"),
    ({"RCPT": "550 5.1.1 no such user"}, EX_NOUSER,
     "recipient refused (RCPT TO:<b@example.com>): 550 5.1.1 no such user"),
    ({"RCPT": "450 4.2.0 try later"}, EX_TEMPFAIL, "temporary failure (RCPT TO:<b@example.com>)"),
    ({"DATA": None}, EX_TEMPFAIL, "closed the connection (DATA)"),
    ({"DOT": "554 5.6.0 bad data"}, EX_UNAVAILABLE, "refused the message (end of data): 554"),
    ({"DOT": "451 4.3.0 disk error"}, EX_TEMPFAIL, "temporary failure (end of data): 451"),
    ({"DOT": None}, EX_TEMPFAIL, "closed the connection (end of data)"),
    ({"DOT": "250-" + "x" * 2000}, EX_PROTOCOL, "reply line over 1024 octets"),
])
def test_relay_replies(relay_factory, replies, code, why):
    r, srv = fake(relay_factory, **replies)
    rc, err = run(["b@example.com"], b"Subject: s\n\nx\n", relay=r)
    assert rc == code, err
    assert why in err and err.count("\n") == 1, err
    srv.join(10)


def test_quit_trouble_after_250_is_ignored(relay_factory):
    """Once the message is queued, a relay that drops QUIT does not matter."""
    r, srv = fake(relay_factory, QUIT=None)
    rc, err = run(["b@example.com"], b"\nx\n", relay=r)
    assert (rc, err) == (0, "")
