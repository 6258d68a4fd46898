#!/usr/bin/python3
"""fake_ses_smtp - a local SMTP server that behaves like Amazon SES's SMTP
interface (email-smtp.REGION.amazonaws.com), for tests of the "smtp"
transport.  Built on Debian's python3-aiosmtpd: run it under /usr/bin/python3.

Like SES:
  * TLS is mandatory: mode "starttls" (MAIL before STARTTLS gets "530 Must
    issue a STARTTLS command first") or "implicit" (TLS from the first byte).
    Mode "none" (plain text) exists for the relay's smtp_tls = none.
  * AUTH PLAIN and LOGIN, and nothing without it ("530 5.7.0 Authentication
    required").  The one account accepted is the access key id with the SMTP
    password derived from its secret key for the fake's region (SES-NOTES.md:
    smtp_password(); the published vector is checked by self_check()), plus
    any extra user/password given.  Failures answer "535 Authentication
    Credentials Invalid".
  * EHLO advertises 8BITMIME, SIZE, STARTTLS, AUTH PLAIN LOGIN; PIPELINING
    only when asked for (SES does not offer it; the relay must cope with both).
  * At most 50 recipients per transaction: the 51st and later get
    "452 4.5.3 Too many recipients" (RFC 5321's answer for it; a client should
    send the rest in another transaction) and are recorded as violations,
    since the relay promises never to send more than 50.
  * A connection idle for idle_timeout seconds gets "451 4.4.2 Timeout
    waiting for data from client." and is closed (SES: about 10 s).
  * The end of data is answered "250 Ok <MessageId>".

What tests get (thread-safe; each accessor returns copies):
  .messages()      accepted messages: mail_from ("" for <>), rcpts, data
                   (bytes, dot-unstuffed, exactly as received), mail_options,
                   config_set (X-SES-CONFIGURATION-SET value or None),
                   message_id, conn (connection number), tls (version or None),
                   user (AUTH login)
  .connections()   one dict per connection: id, tls, auth (mechanism),
                   user, commands (verbs in order: EHLO, STARTTLS, AUTH, MAIL,
                   RCPT, DATA, RSET, QUIT ...), pipelined (commands that
                   arrived while earlier replies were unsent), messages, closed,
                   opened / closed_at (time.time())
  .transactions()  one dict per transaction (MAIL to its final reply), in
                   MAIL order: index (1, 2, ... over the fake's life), conn,
                   mail_from, rcpts (every RCPT TO address, in order), refused
                   ({address: reply} for the refused ones), data (the message
                   as received, also when the end of data was refused; None
                   before DATA), code / reply (the final reply: the refused
                   MAIL, DATA or end of data, "RSET" when the client gave up,
                   code 0 when the connection was lost first; None while in
                   flight), ok (the end of data was accepted), start, done
                   (time.time()), message_id
  .violations()    protocol mistakes the relay must never make
  .duplicates()    (sha256 of the data, recipient) accepted more than once
  .wait_until(f, timeout)  poll f() until truthy; returns its value

Fault injection (matched in order, each used up after n uses):
  .inject(kind, reply, n=1, match=None, close=False, when=None)
      kind: "MAIL", "RCPT", "DATA" (the DATA command) or "DOT" (the end of
      the message data); reply: the full reply line(s), e.g.
      "454 Throttling failure: Maximum sending rate exceeded.", or None: no
      reply at all, the connection is reset (RST) instead;
      n=None: every matching command until clear_faults();
      match(addr) narrows RCPT/MAIL faults to some addresses;
      when(txn) narrows any fault by the transaction so far (a copy of its
      .transactions() record: index, mail_from, rcpts, data ...);
      close=True (or a 421 reply) closes the connection after answering.
  .clear_faults()
  .dot_latency = seconds slept before answering the end of data
  .on_data(callback)  callback(txn) runs before the end of data is answered
  .down(mode="refuse") / .up()   "refuse": stop listening and reset every open
      connection (connection refused); "reset": accept connections and reset
      them at once.  up() listens again on the SAME port.

PKI for tests: make_pki(directory) writes a CA, a server certificate for
localhost / 127.0.0.1 / ::1 and one for a WRONG name (wrong.example.net),
all signed by the CA, with python3-cryptography; returns their paths.

Standalone: /usr/bin/python3 tests/lib/fake_ses_smtp.py --mode none --port 2525
prints "fake_ses_smtp: listening on 127.0.0.1:PORT" and serves until SIGINT.
"""
import argparse
import asyncio
import base64
import datetime
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import socket
import ssl
import struct
import sys
import threading
import time
import uuid
import warnings

from aiosmtpd.smtp import SMTP, AuthResult

DEFAULT_ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
DEFAULT_SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
MAX_RECIPIENTS = 50
MAX_SIZE = 40 * 1024 * 1024
NULL_SENDER = "null-sender@fake-ses.invalid"  # aiosmtpd refuses MAIL FROM:<>

logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd's chatter

THROTTLING = "454 Throttling failure: Maximum sending rate exceeded."
DAILY_QUOTA = "454 Throttling failure: Daily message quota exceeded."
ACCESS_DENIED = "554 Access denied: User is not authorized to perform ses:SendRawEmail"
MESSAGE_REJECTED = ("554 Message rejected: Email address is not verified. The following "
                    "identities failed the check in region US-EAST-1: a@example.com")
SERVICE_CLOSING = "421 Service unavailable: closing transmission channel"
TEMP_FAILURE = "451 Temporary service failure"


def smtp_password(secret, region):
    """The SES SMTP password for an IAM secret access key (SES-NOTES.md)."""
    def mac(key, msg):
        return hmac.new(key, msg.encode(), hashlib.sha256).digest()
    k = mac(("AWS4" + secret).encode(), "11111111")
    for part in (region, "ses", "aws4_request", "SendRawEmail"):
        k = mac(k, part)
    return base64.b64encode(b"\x04" + k).decode()


def self_check():
    """The published vector (aws-sdk-php tests) must come out."""
    got = smtp_password("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "us-east-2")
    assert got == "BMPPgbAHoFVbze1Ud0oA5uNdXRwUXUZ+qOwphGJbl/cS", got
    return got


# --- PKI ---------------------------------------------------------------------

def make_pki(directory):
    """CA + server certs (right and wrong host name) in directory; returns a
    dict of paths: ca, cert, key, wrong_cert, wrong_key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.utcnow() - datetime.timedelta(minutes=5)
    later = now + datetime.timedelta(days=2)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(path, key):
        with open(path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        os.chmod(path, 0o600)

    def write_cert(path, cert):
        with open(path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("fake-ses test CA"))
          .issuer_name(name("fake-ses test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(later)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    paths = {"ca": os.path.join(directory, "ca.pem")}
    write_cert(paths["ca"], ca)

    def leaf(tag, cn, sans):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(later)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        paths[tag + "cert"] = os.path.join(directory, tag + "cert.pem")
        paths[tag + "key"] = os.path.join(directory, tag + "key.pem")
        write_cert(paths[tag + "cert"], cert)
        write_key(paths[tag + "key"], key)

    leaf("", "localhost", [x509.DNSName("localhost"),
                           x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                           x509.IPAddress(ipaddress.ip_address("::1"))])
    leaf("wrong_", "wrong.example.net", [x509.DNSName("wrong.example.net")])
    return paths


def server_context(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


# --- the SMTP side -----------------------------------------------------------

class _Session(SMTP):
    """aiosmtpd's SMTP with SES's manners and the fake's bookkeeping."""

    def __init__(self, fake, **kw):
        self.fake = fake
        self.conn = None
        self.txn = None             # index of the open transaction, if any
        self.last_reply = None      # the last reply line(s) pushed
        self.was_reset = False      # reset_now() cut the connection
        super().__init__(_Handler(fake), **kw)

    def connection_made(self, transport):
        starttls_done = self._original_transport is not None and self.transport is not None
        if not starttls_done and self.fake._mode == "reset":
            self.transport = transport
            self.reset_now()
            return
        super().connection_made(transport)
        if starttls_done:
            obj = transport.get_extra_info("ssl_object")
            self.fake._update_conn(self.conn, tls=obj.version() if obj else "?")
            return
        obj = transport.get_extra_info("ssl_object")
        self.conn = self.fake._new_conn(transport.get_extra_info("peername"),
                                        obj.version() if obj else None)

    def connection_lost(self, error):
        if self.conn is not None:
            self.fake._update_conn(self.conn, closed=True, closed_at=time.time())
            self.fake._txn_end(self, 0, "connection lost")
        if self._handler_coroutine is None:         # reset before the session began
            self.transport = None
            return
        super().connection_lost(error)

    def reset_now(self):
        """Cut the connection with a TCP RST, no reply (an outage mid-command)."""
        raw = self._original_transport or self.transport
        if raw is None or self.was_reset:
            return
        self.was_reset = True
        sock = raw.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (OSError, AttributeError):
            pass
        raw.abort()

    async def push(self, status):
        self.last_reply = status if isinstance(status, str) else status.decode("utf-8", "replace")
        await super().push(status)

    def _timeout_cb(self):
        # SES says why before it hangs up on an idle client
        try:
            self._writer.write(b"451 4.4.2 Timeout waiting for data from client.\r\n")
        except Exception:
            pass
        self.fake._update_conn(self.conn, idle_closed=True)
        super()._timeout_cb()

    def _note(self, verb):
        # pipelining: the client wrote this command before reading earlier replies
        pipelined = len(self._reader._buffer) > 0  # noqa: SLF001 (aiosmtpd's own reader)
        self.fake._command(self.conn, verb, pipelined)

    async def smtp_EHLO(self, arg):
        self._note("EHLO")
        await super().smtp_EHLO(arg)

    async def smtp_HELO(self, arg):
        self._note("HELO")
        await super().smtp_HELO(arg)

    async def smtp_STARTTLS(self, arg):
        self._note("STARTTLS")
        await super().smtp_STARTTLS(arg)

    async def smtp_AUTH(self, arg):
        self._note("AUTH " + (arg or "").split(" ")[0].upper())
        await super().smtp_AUTH(arg)

    async def smtp_MAIL(self, arg):
        self._note("MAIL")
        if self.txn is not None:
            self.fake._violation(f"MAIL inside an open transaction (connection {self.conn})")
        else:
            m = re.match(r"(?i)^FROM:\s*<([^>]*)>", arg or "")
            self.txn = self.fake._txn_begin(self.conn, m.group(1) if m else None)
        if arg and re.match(r"(?i)^FROM:\s*<>", arg):
            arg = re.sub(r"(?i)^FROM:\s*<>", f"FROM:<{NULL_SENDER}>", arg)
        self.last_reply = None
        await super().smtp_MAIL(arg)
        if self.last_reply is not None and not self.last_reply.startswith("250"):
            self.fake._txn_end(self, _code(self.last_reply), self.last_reply)

    async def smtp_RCPT(self, arg):
        self._note("RCPT")
        await super().smtp_RCPT(arg)

    async def smtp_RSET(self, arg):
        self._note("RSET")
        self.fake._txn_end(self, None, "RSET")
        await super().smtp_RSET(arg)

    async def smtp_NOOP(self, arg):
        self._note("NOOP")
        await super().smtp_NOOP(arg)

    async def smtp_QUIT(self, arg):
        self._note("QUIT")
        self.fake._txn_end(self, None, "QUIT")
        await super().smtp_QUIT(arg)

    async def smtp_DATA(self, arg):
        self._note("DATA")
        reply = self.envelope.rcpt_tos and self.fake._fault_reply(self, "DATA", None)
        if reply:
            await self.push(reply)
            self.fake._txn_end(self, _code(reply), reply)
            return
        if reply is None and self.envelope.rcpt_tos and self.was_reset:
            return                  # reset instead of a reply
        self.last_reply = None
        await super().smtp_DATA(arg)
        if self.last_reply is not None:
            # the refused DATA command, or the answer to the end of data
            self.fake._txn_end(self, _code(self.last_reply), self.last_reply)

    def close_soon(self):
        # after the reply that aiosmtpd is about to push has gone out
        transport = self.transport
        if transport is not None:
            self.loop.call_later(0.05, transport.close)


class _Handler:
    def __init__(self, fake):
        self.fake = fake

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        out = ["250-email-smtp.amazonaws.com"] + [r for r in responses[1:-1]
                                                   if not r.startswith("250-HELP")]
        if self.fake.pipelining:
            out.append("250-PIPELINING")
        out.append("250 Ok")
        return out

    async def handle_MAIL(self, server, session, envelope, address, options):
        reply = self.fake._fault_reply(server, "MAIL", address)
        if reply:
            return reply
        if server.was_reset:
            return "421 reset"              # never seen: the connection is gone
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 Ok"

    async def handle_RCPT(self, server, session, envelope, address, options):
        reply = self.fake._fault_reply(server, "RCPT", address)
        if reply is None and server.was_reset:
            return "421 reset"              # never seen: the connection is gone
        if not reply and len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            self.fake._violation(f"more than {MAX_RECIPIENTS} recipients in one transaction "
                                 f"(connection {server.conn})")
            reply = "452 4.5.3 Too many recipients"
        self.fake._txn_rcpt(server, address, reply)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 Ok"

    async def handle_DATA(self, server, session, envelope):
        data = bytes(envelope.original_content)
        self.fake._txn_data(server, data)
        if self.fake.dot_latency:
            await asyncio.sleep(self.fake.dot_latency)
        reply = self.fake._fault_reply(server, "DOT", None)
        if reply:
            return reply
        if server.was_reset:
            return "421 reset"              # never seen: the connection is gone
        if re.search(rb"(?<!\r)\n|\r(?!\n)", data):
            self.fake._violation("bare CR or LF in the message data")
        mid = "0100%012x-%s-000000" % (int(time.time() * 1000), uuid.uuid4())
        login = session.auth_data.login.decode() if session.auth_data else None
        self.fake._record(dict(mail_from="" if envelope.mail_from == NULL_SENDER
                               else envelope.mail_from,
                               rcpts=list(envelope.rcpt_tos), data=data,
                               mail_options=list(envelope.mail_options),
                               config_set=_header(data, b"X-SES-CONFIGURATION-SET"),
                               message_id=mid, conn=server.conn, user=login,
                               tls=self.fake._conn_tls(server.conn), time=time.time()),
                          server)
        return f"250 Ok {mid}"


def _code(reply):
    m = re.match(r"(\d{3})", reply or "")
    return int(m.group(1)) if m else None


def _header(data, name):
    head = data.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        k, sep, v = line.partition(b":")
        if sep and k.strip().lower() == name.lower():
            return v.strip().decode("ascii", "replace")
    return None


class FakeSESSMTP:
    def __init__(self, mode="starttls", pki=None, cert=None, key=None, region="us-east-1",
                 access_key=DEFAULT_ACCESS_KEY, secret_key=DEFAULT_SECRET_KEY, users=None,
                 idle_timeout=10.0, size_limit=MAX_SIZE, pipelining=False,
                 auth_mechanisms=("PLAIN", "LOGIN"), host="127.0.0.1", port=0):
        assert mode in ("starttls", "implicit", "none"), mode
        self.mode = mode
        if mode != "none" and cert is None:
            cert, key = pki["cert"], pki["key"]
        self.cert, self.key = cert, key
        self.region = region
        self.accounts = {access_key: smtp_password(secret_key, region)}
        self.accounts.update(users or {})
        self.idle_timeout = idle_timeout
        self.size_limit = size_limit
        self.pipelining = pipelining
        self.auth_exclude = [m for m in ("PLAIN", "LOGIN") if m not in auth_mechanisms]
        self.host = host
        self.port = port
        self.dot_latency = 0.0
        self.allow_duplicates = False  # tests that provoke duplicates on purpose set it
        self._lock = threading.Lock()
        self._messages = []
        self._conns = []
        self._violations = []
        self._faults = []
        self._fault_log = []
        self._auth_failures = 0
        self._txns = []
        self._hooks = []
        self._mode = "up"
        self._sock = None
        self._loop = None
        self._thread = None
        self._server = None
        self._sessions = set()

    # --- life cycle ----------------------------------------------------------

    def _bind(self):
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        return sock

    def _create_server(self, sock):
        implicit = server_context(self.cert, self.key) if self.mode == "implicit" else None
        return self._loop.create_server(self._factory, sock=sock, ssl=implicit)

    def start(self):
        sock = self._bind()
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(self._create_server(sock))
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake_ses_smtp", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def _factory(self):
        tls = server_context(self.cert, self.key) if self.mode == "starttls" else None
        with warnings.catch_warnings():
            # implicit TLS and mode "none" require AUTH without STARTTLS on purpose
            warnings.simplefilter("ignore")
            s = _Session(self, tls_context=tls, require_starttls=self.mode == "starttls",
                         auth_required=True, auth_require_tls=self.mode == "starttls",
                         authenticator=self._authenticate,
                         hostname="email-smtp.amazonaws.com", ident="SimpleEmailService-fake",
                         timeout=self.idle_timeout, data_size_limit=self.size_limit,
                         auth_exclude_mechanism=self.auth_exclude, loop=self._loop)
        self._sessions.add(s)
        return s

    def stop(self):
        if self._loop is None:
            return
        loop, self._loop = self._loop, None

        def shutdown():
            if self._server is not None:
                self._server.close()
            for s in list(self._sessions):
                if s.transport is not None:
                    s.transport.close()
            loop.call_later(0.1, loop.stop)

        loop.call_soon_threadsafe(shutdown)
        self._thread.join(5)
        if not self._thread.is_alive():
            loop.close()

    def drop_connections(self):
        """Close every open connection now (as SES does when it recycles hosts)."""
        def drop():
            for s in list(self._sessions):
                if s.transport is not None:
                    s.transport.close()
        self._loop.call_soon_threadsafe(drop)

    def _in_loop(self, fn, timeout=10):
        """Run fn() in the server's loop (fn may return a coroutine); wait for it."""
        async def call():
            v = fn()
            if asyncio.iscoroutine(v):
                v = await v
            return v
        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout)

    def down(self, mode="refuse"):
        """Unreachable: "refuse" closes the listening socket (connection
        refused) and resets every open connection; "reset" keeps listening
        but resets every connection, new ones at once.  Transactions in
        progress are cut off, never accepted."""
        assert mode in ("refuse", "reset"), mode

        def go():
            self._mode = mode
            if mode == "refuse" and self._server is not None:
                self._server.close()
                self._server = None
            for s in list(self._sessions):
                if s.transport is not None:
                    s.reset_now()
        self._in_loop(go)

    def up(self):
        """Reachable again, on the same port."""
        def go():
            was, self._mode = self._mode, "up"
            if self._server is None:
                sock = None
                for _ in range(100):         # the port may linger for a moment
                    try:
                        sock = self._bind()
                        break
                    except OSError:
                        time.sleep(0.05)
                if sock is None:
                    sock = self._bind()

                async def serve():
                    self._server = await self._create_server(sock)
                    return was
                return serve()
            return was
        return self._in_loop(go)

    @property
    def is_up(self):
        return self._mode == "up"

    # --- AUTH ----------------------------------------------------------------

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        ok = login in self.accounts and hmac.compare_digest(self.accounts[login], password)
        self._update_conn(server.conn, auth=mechanism, user=login if ok else None)
        if not ok:
            with self._lock:
                self._auth_failures += 1
            return AuthResult(success=False, handled=False,
                              message="535 Authentication Credentials Invalid")
        return AuthResult(success=True, auth_data=auth_data)

    @property
    def auth_failures(self):
        with self._lock:
            return self._auth_failures

    # --- faults --------------------------------------------------------------

    def inject(self, kind, reply, n=1, match=None, close=False, when=None):
        assert kind in ("MAIL", "RCPT", "DATA", "DOT"), kind
        with self._lock:
            self._faults.append(dict(kind=kind, reply=reply, n=n, match=match, close=close,
                                     when=when))

    def on_data(self, callback):
        """callback(txn) runs (in the server's thread) once the message data is
        in, before the end of data is answered or any fault applies."""
        with self._lock:
            self._hooks.append(callback)

    def clear_faults(self):
        with self._lock:
            self._faults = []

    def _fault_reply(self, server, kind, address):
        """The injected reply for this command (closing the connection after
        it when asked to, or for a 421); None after resetting the connection
        for a fault without a reply; "" when no fault applies."""
        with self._lock:
            txn = dict(self._txns[server.txn - 1]) if server.txn else None
            for f in self._faults:
                if f["kind"] != kind or (f["n"] is not None and f["n"] <= 0):
                    continue
                if f["match"] is not None and not f["match"](address):
                    continue
                if f["when"] is not None and (txn is None or not f["when"](txn)):
                    continue
                if f["n"] is not None:
                    f["n"] -= 1
                reply, close = f["reply"], f["close"]
                break
            else:
                return ""
            self._fault_log.append((kind, address, reply))
        if reply is None:
            self._txn_end(server, 0, "connection reset")
            server.reset_now()
            return None
        if close or reply.startswith("421"):
            server.close_soon()
        return reply

    def faults_used(self):
        with self._lock:
            return list(self._fault_log)

    # --- records -------------------------------------------------------------

    def _new_conn(self, peer, tls):
        with self._lock:
            cid = len(self._conns) + 1
            self._conns.append(dict(id=cid, peer=peer, tls=tls, auth=None, user=None,
                                    commands=[], pipelined=[], messages=0, closed=False,
                                    idle_closed=False, opened=time.time(), closed_at=None))
            return cid

    def _update_conn(self, cid, **kw):
        if cid is None:
            return
        with self._lock:
            self._conns[cid - 1].update(kw)

    def _conn_tls(self, cid):
        with self._lock:
            return self._conns[cid - 1]["tls"] if cid else None

    def _command(self, cid, verb, pipelined):
        if cid is None:
            return
        with self._lock:
            c = self._conns[cid - 1]
            c["commands"].append(verb)
            if pipelined:
                c["pipelined"].append(verb)

    def _violation(self, what):
        with self._lock:
            self._violations.append(what)

    def _record(self, msg, server=None):
        with self._lock:
            self._messages.append(msg)
            if msg["conn"]:
                self._conns[msg["conn"] - 1]["messages"] += 1
            if server is not None and server.txn:
                self._txns[server.txn - 1]["message_id"] = msg["message_id"]

    # --- transactions ----------------------------------------------------------

    def _txn_begin(self, cid, mail_from):
        with self._lock:
            self._txns.append(dict(index=len(self._txns) + 1, conn=cid, mail_from=mail_from,
                                   rcpts=[], refused={}, data=None, code=None, reply=None,
                                   ok=False, start=time.time(), done=None, message_id=None))
            return len(self._txns)

    def _txn_rcpt(self, server, address, reply):
        with self._lock:
            if server.txn:
                t = self._txns[server.txn - 1]
                t["rcpts"].append(address)
                if reply:
                    t["refused"][address] = reply

    def _txn_data(self, server, data):
        with self._lock:
            if not server.txn:
                return
            t = self._txns[server.txn - 1]
            t["data"] = data
            hooks, txn = list(self._hooks), dict(t)
        for h in hooks:
            h(txn)

    def _txn_end(self, server, code, reply):
        """The open transaction of this session is over (no-op if none)."""
        with self._lock:
            if not server.txn:
                return
            t = self._txns[server.txn - 1]
            server.txn = None
            t.update(code=code, reply=reply, done=time.time(),
                     ok=code == 250 and t["data"] is not None)

    def transactions(self):
        with self._lock:
            return [dict(t, rcpts=list(t["rcpts"]), refused=dict(t["refused"]))
                    for t in self._txns]

    def messages(self):
        with self._lock:
            return [dict(m) for m in self._messages]

    def connections(self):
        with self._lock:
            return [dict(c, commands=list(c["commands"]), pipelined=list(c["pipelined"]))
                    for c in self._conns]

    def violations(self):
        with self._lock:
            return list(self._violations)

    def duplicates(self):
        seen, dups = set(), []
        for m in self.messages():
            h = hashlib.sha256(m["data"]).hexdigest()
            for r in m["rcpts"]:
                if (h, r) in seen:
                    dups.append((h, r))
                seen.add((h, r))
        return dups

    def rcpt_count(self):
        return sum(len(m["rcpts"]) for m in self.messages())

    def wait_until(self, f, timeout=15, interval=0.05):
        deadline = time.time() + timeout
        while True:
            v = f()
            if v:
                return v
            if time.time() > deadline:
                raise AssertionError(f"fake_ses_smtp: condition not met within {timeout}s; "
                                     f"{len(self.messages())} message(s), "
                                     f"{len(self.connections())} connection(s)")
            time.sleep(interval)


def main():
    ap = argparse.ArgumentParser(description="a local SES-like SMTP server for tests")
    ap.add_argument("--mode", choices=("starttls", "implicit", "none"), default="none")
    ap.add_argument("--port", type=int, default=2525)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--pipelining", action="store_true")
    a = ap.parse_args()
    self_check()
    f = FakeSESSMTP(mode=a.mode, cert=a.cert, key=a.key, region=a.region, port=a.port,
                    pipelining=a.pipelining).start()
    print(f"fake_ses_smtp: listening on {f.host}:{f.port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    f.stop()
    print(f"fake_ses_smtp: {len(f.messages())} message(s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
