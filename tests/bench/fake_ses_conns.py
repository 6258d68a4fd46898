#!/usr/bin/python3
"""fake_ses_conns.py - tests/lib/fake_ses.py, standalone, plus connection data.

Same command line and behaviour as fake_ses.py (run with /usr/bin/python3).
Adds one unsigned control path, used by tests/bench/delivery.py once a run
is over (it walks every request, so it is not meant to be polled):

  GET /_fake/conns   {"connections": distinct client ip:port seen,
                      "send_connections": the same for send requests,
                      "sends_per_connection": {"min", "max", "mean"},
                      "first_send": arrival of the first send (time.time()),
                      "last_done": when the last send was answered,
                      "gap_ms": {"p50", "p90", "p99", "mean", "n"},
                      "loop_lag_ms": {"p50", "p90", "p99", "max", "n"}}

gap_ms: on each keep-alive connection, the time from the fake's answer to
one send until the headers of the next send arrive on that connection: the
client's own per-request cost (finishing the call, updating its queue,
signing and starting the next) plus the loopback transfer.  With a latency
of L seconds a connection can carry at most 1 / (L + gap) sends a second.
The gap also holds any delay of the fake's own (single) asyncio loop in
reading the next request: loop_lag_ms is how late a 5 ms sleep on that loop
wakes up, sampled over the fake's whole life (with --engine asyncio only).
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import fake_ses  # noqa: E402


def _pct(sorted_vals, p):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * (len(sorted_vals) - 1)))))
    return sorted_vals[i]


def conn_stats(fake):
    with fake._lock:
        reqs = list(fake.requests)
    sends = [r for r in reqs if r.op == "send"]
    per = {}
    for r in sends:
        per.setdefault(r.conn, []).append(r)
    gaps = []
    for rs in per.values():
        rs.sort(key=lambda r: r.time)
        for a, b in zip(rs, rs[1:]):
            if a.done is not None:
                gaps.append((b.time - a.done) * 1000.0)
    gaps.sort()
    counts = [len(v) for v in per.values()]
    return {
        "connections": len({r.conn for r in reqs}),
        "send_connections": len(per),
        "sends_per_connection": {
            "min": min(counts) if counts else 0, "max": max(counts) if counts else 0,
            "mean": (sum(counts) / len(counts)) if counts else 0},
        "first_send": min((r.time for r in sends), default=None),
        "last_done": max((r.done for r in sends if r.done is not None), default=None),
        "gap_ms": {"p50": _pct(gaps, 50), "p90": _pct(gaps, 90), "p99": _pct(gaps, 99),
                   "mean": (sum(gaps) / len(gaps)) if gaps else None, "n": len(gaps)},
        "loop_lag_ms": _lag_stats(),
    }


def _lag_stats():
    lag = sorted(_LAG)
    return {"p50": _pct(lag, 50), "p90": _pct(lag, 90), "p99": _pct(lag, 99),
            "max": lag[-1] if lag else None, "n": len(lag)}


_orig_control = fake_ses.FakeSES._control
_orig_serve = fake_ses.serve_asyncio
_LAG = []            # ms late, of a 5 ms sleep on the fake's loop
_LAG_MAX = 200000


async def _lag_monitor():
    import asyncio
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(0.005)
        if len(_LAG) < _LAG_MAX:
            _LAG.append((loop.time() - t - 0.005) * 1000.0)


async def _serve(fake, ready=None, stop=None):
    import asyncio
    mon = asyncio.ensure_future(_lag_monitor())
    try:
        return await _orig_serve(fake, ready, stop)
    finally:
        mon.cancel()


def _control(self, method, path):
    if path.startswith("/_fake/conns"):
        return 200, json.dumps(conn_stats(self)).encode(), [("Content-Type", "application/json")]
    return _orig_control(self, method, path)


fake_ses.FakeSES._control = _control
fake_ses.serve_asyncio = _serve

if __name__ == "__main__":
    sys.exit(fake_ses.main())
