"""The [http] listener (SPEC 7): /metrics parsed by the Prometheus client
library's own text parser, counters matching what was sent; /healthz;
/queue as JSON."""
import json
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from relayharness import free_port
from fake_ses import MESSAGE_REJECTED, UNAVAILABLE_503
from test_delivery import fake, ses_relay, submit, wait_delivered  # noqa: F401  (fixtures)


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items()))
            out[key] = s.value
    return out


def wait_for(pred, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_metrics_count_what_was_sent(ses_relay, fake):
    hport = free_port()
    r = ses_relay(relay_section="", start=False)
    with open(r.config, "a") as f:
        f.write(f"[http]\naddress = 127.0.0.1:{hport}\n")
    r.start(env={"AWS_EC2_METADATA_DISABLED": "true",
                 "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
                 "AWS_CONFIG_FILE": "/nonexistent/config"})
    m = scrape(hport)
    assert m["sesrelay_messages_received_total"] == 0 and m["sesrelay_queue_messages"] == 0
    # 3 delivered (one after a 503), 1 rejected -> bounced (+ its DSN delivered)
    fake.fail_next(UNAVAILABLE_503)
    for i in range(3):
        submit(r, "alice@example.com", [f"r{i}@example.net"])
    wait_delivered(r, fake, 3, timeout=20)
    fake.fail_next(MESSAGE_REJECTED)
    submit(r, "alice@example.com", ["nobody@example.net"])
    m = wait_for(lambda: (lambda x: x if x["sesrelay_messages_bounced_total"] == 1
                          and x["sesrelay_queue_messages"] == 0 else None)(scrape(hport)))
    assert m["sesrelay_messages_received_total"] == 4   # from clients; the bounce is counted below
    assert m["sesrelay_messages_sent_total"] == 4       # 3 + the bounce to alice
    assert m["sesrelay_messages_deferred_total"] == 1
    assert m["sesrelay_bounces_queued_total"] == 1
    assert m["sesrelay_ses_requests_total{outcome=sent}"] == 4
    assert m["sesrelay_ses_requests_total{outcome=deferred}"] == 1
    assert m["sesrelay_ses_requests_total{outcome=bounced}"] == 1
    assert m["sesrelay_delivery_duration_seconds_count"] == 4
    assert m["sesrelay_delivery_duration_seconds_bucket{le=+Inf}"] == 4
    assert m["sesrelay_smtp_connections"] == 0
    assert m["sesrelay_smtp_connections_total"] >= 4
    # the fake saw exactly what the counters say
    assert len(fake.send_requests()) == 6


def test_healthz_and_queue(ses_relay, fake):
    hport = free_port()
    fake.down("refuse")
    r = ses_relay(start=False, retry_initial="1h", retry_max="1h", lifetime="2h")
    with open(r.config, "a") as f:
        f.write(f"[http]\naddress = 127.0.0.1:{hport}\n")
    r.start(env={"AWS_EC2_METADATA_DISABLED": "true"})
    with urllib.request.urlopen(f"http://127.0.0.1:{hport}/healthz", timeout=5) as resp:
        assert resp.status == 200 and resp.read() == b"ok\n"
    qid = submit(r, "alice@example.com", ["bob@example.net", "carol@example.net"])
    r.wait_log(qid + r": to=<bob@example\.net>.*status=deferred")
    with urllib.request.urlopen(f"http://127.0.0.1:{hport}/queue", timeout=5) as resp:
        q = json.loads(resp.read())
    (e,) = q
    assert e["id"] == qid and e["recipients"] == 2 and e["recipients_left"] == 2
    assert e["state"] == "deferred" and e["attempts"] == 1 and "no answer" in e["last_error"]
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{hport}/nope", timeout=5)
    assert err.value.code == 404
    req = urllib.request.Request(f"http://127.0.0.1:{hport}/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code in (405, 413)  # no POST, and no body accepted either
    fake.up()
