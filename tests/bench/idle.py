#!/usr/bin/python3
"""idle.py - open N idle SMTP connections as fast as possible, time the banners.

    idle.py --port PORT [--count 5000] [--limit SECONDS] [--hold SECONDS]
            [--pid PID] [--tree]

Connects COUNT sockets to 127.0.0.1:PORT from one process (non-blocking,
epoll), reading banners while it is still connecting, and records the time
from the first connect() until every connection has received a complete
"220 ..." line.  It gives up after LIMIT seconds and then reports how many
were greeted.  With every connection still open (idle, after HOLD seconds)
it measures the server's memory: --pid PID is the server process; with
--tree the memory of PID and all of its descendants is summed (Postfix).

Prints one JSON object on stdout.  Only loopback is used.
"""
import argparse
import errno
import json
import os
import resource
import select
import socket
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import procmem  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--limit", type=float, default=10.0)
    ap.add_argument("--hold", type=float, default=1.0)
    ap.add_argument("--pid", type=int)
    ap.add_argument("--tree", action="store_true")
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.count + 256
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            print(json.dumps({"error": f"open-files limit {hard} < {want}"}))
            return 1

    ep = select.epoll()
    socks = {}      # fd -> socket
    bufs = {}       # fd -> bytes received so far
    greeted = set()
    refused = 0     # closed by the server or a non-220 reply
    errors = {}
    first_greet = last_greet = None

    def on_event(fd, ev):
        nonlocal refused, first_greet, last_greet
        s = socks.get(fd)
        if s is None or fd in greeted:
            return
        if ev & (select.EPOLLERR | select.EPOLLHUP) and not ev & select.EPOLLIN:
            e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            errors[errno.errorcode.get(e, str(e))] = errors.get(errno.errorcode.get(e, str(e)), 0) + 1
            ep.unregister(fd)
            refused += 1
            bufs[fd] = None
            return
        if ev & select.EPOLLIN:
            try:
                data = s.recv(512)
            except BlockingIOError:
                return
            except OSError as e:
                errors[errno.errorcode.get(e.errno, str(e.errno))] = errors.get(errno.errorcode.get(e.errno, str(e.errno)), 0) + 1
                ep.unregister(fd)
                refused += 1
                return
            if not data:
                ep.unregister(fd)
                refused += 1
                return
            bufs[fd] += data
            if b"\n" in bufs[fd]:
                ep.unregister(fd)
                if bufs[fd].startswith(b"220 "):
                    greeted.add(fd)
                    now = time.monotonic()
                    first_greet = first_greet or now
                    last_greet = now
                else:
                    refused += 1

    def poll(timeout):
        for fd, ev in ep.poll(timeout, 1024):
            on_event(fd, ev)

    t0 = time.monotonic()
    deadline = t0 + a.limit
    connect_errors = 0
    for i in range(a.count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect((a.host, a.port))
        except BlockingIOError:
            pass
        except OSError as e:
            connect_errors += 1
            errors[errno.errorcode.get(e.errno, str(e.errno))] = errors.get(errno.errorcode.get(e.errno, str(e.errno)), 0) + 1
            s.close()
            continue
        fd = s.fileno()
        socks[fd] = s
        bufs[fd] = b""
        ep.register(fd, select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP)
        if i % 64 == 63:
            poll(0)
        if time.monotonic() > deadline:
            break
    t_connected = time.monotonic()
    while len(greeted) + refused < len(socks):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        poll(min(left, 0.1))
    t_end = time.monotonic()
    all_greeted = len(greeted) == a.count
    res = {
        "count": a.count,
        "opened": len(socks),
        "greeted": len(greeted),
        "refused_or_closed": refused,
        "connect_errors": connect_errors,
        "errors": errors,
        "connect_loop_s": round(t_connected - t0, 3),
        "all_greeted_s": round(last_greet - t0, 3) if all_greeted else None,
        "last_greet_s": round(last_greet - t0, 3) if last_greet else None,
        "gave_up_after_s": None if all_greeted else round(t_end - t0, 3),
        "limit_s": a.limit,
    }
    if a.pid:
        time.sleep(a.hold)
        # still greeted and open? a server that dropped idle clients would show here
        if a.tree:
            res["server"] = procmem.tree_mem(a.pid)
        else:
            res["server"] = procmem.proc_mem(a.pid)
    for s in socks.values():
        s.close()
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
