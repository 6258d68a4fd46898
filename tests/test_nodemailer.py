"""A real Node.js client: nodemailer (tests/node/send.js) over plain SMTP to
the relay's loopback listener.  Checks what a Bcc turns into (an envelope
recipient, never a header), that a UTF-8 subject and an attachment arrive
intact, and that nodemailer's own view of the result matches the queue.

The npm dependencies are installed by CI (`npm ci` in tests/node); a missing
node_modules is a failure, not a skip.
"""
import email
import email.policy
import json
import os
import shutil
import subprocess


NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")
ATTACHMENT = bytes(i % 256 for i in range(3000))


def run_send(relay):
    node = shutil.which("node")
    assert node, "node is not installed (CI installs nodejs)"
    assert os.path.isdir(os.path.join(NODE_DIR, "node_modules", "nodemailer")), \
        "tests/node/node_modules/nodemailer missing: run `npm ci` in tests/node"
    host, port = relay.addr()
    p = subprocess.run([node, os.path.join(NODE_DIR, "send.js"), str(port), host],
                       capture_output=True, text=True, timeout=60, cwd=NODE_DIR)
    assert p.returncode == 0, f"send.js failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_nodemailer_to_cc_bcc_utf8_attachment(relay):
    info = run_send(relay)
    assert info["response"].startswith("250 2.0.0 Ok: queued as "), info
    qid = info["response"].split()[-1]
    assert sorted(info["accepted"]) == ["bob@example.net", "carol@example.org",
                                        "secret-dave@example.com"]
    assert info["rejected"] == []

    q = relay.queue()
    assert list(q) == [qid]
    m = q[qid]
    # the envelope carries every recipient, Bcc included
    assert m["sender"] == "alice@example.com"
    assert sorted(m["rcpts"]) == ["bob@example.net", "carol@example.org",
                                  "secret-dave@example.com"]
    assert m["helo"] == "nodemailer.test"

    data = m["data"]
    assert data.startswith(b"Received: from nodemailer.test (localhost[127.0.0.1])")
    header_block = data.split(b"\r\n\r\n", 1)[0]
    # ... and the headers never reveal the Bcc recipient
    assert not any(l.lower().startswith(b"bcc:") for l in header_block.split(b"\r\n"))
    assert b"secret-dave" not in data
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF only

    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg["Subject"] == "Grüße aus Köln – ☃ test"
    assert msg["To"] == "bob@example.net"
    assert msg["Cc"] == "carol@example.org"
    assert msg["Bcc"] is None
    assert msg["From"].addresses[0].addr_spec == "alice@example.com"
    assert msg["From"].addresses[0].display_name == "Alice Ä"
    assert msg["Message-ID"] == info["messageId"]

    text = msg.get_body(preferencelist=("plain",))
    assert text.get_content().replace("\r\n", "\n") == \
        "Hello from nodemailer.\n.a line starting with a dot\n"
    atts = list(msg.iter_attachments())
    assert len(atts) == 1
    att = atts[0]
    assert att.get_filename() == "report.bin"
    assert att.get_content_type() == "application/octet-stream"
    assert att.get_content() == ATTACHMENT
    relay.wait_log(qid + r": from=<alice@example.com>, size=\d+, nrcpt=3")
