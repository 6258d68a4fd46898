"""procmem.py - memory and CPU of a process or a process tree, from /proc.

Sizes are in kB.  PSS (proportional set size) charges each shared page to
the processes sharing it in equal parts, so summing PSS over Postfix's
processes counts shared libraries and text once, not once per process.
"""
import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "Threads"):
                    out[k] = int(v.split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return out


def _pss(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def _stat(pid):
    """(ppid, utime+stime, cutime+cstime) in seconds, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = s[s.rindex(")") + 2:].split()
    # rest[0] = state (field 3); field N is rest[N-3]
    ppid = int(rest[1])
    own = (int(rest[11]) + int(rest[12])) / CLK_TCK
    children = (int(rest[13]) + int(rest[14])) / CLK_TCK
    return ppid, own, children


def descendants(root):
    """root and every process below it."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        st = _stat(int(d))
        if st:
            kids.setdefault(st[0], []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def proc_mem(pid):
    st = _status(pid) or {}
    return {"pid": pid, "rss_kb": st.get("VmRSS"), "hwm_kb": st.get("VmHWM"),
            "pss_kb": _pss(pid), "threads": st.get("Threads")}


def tree_mem(root):
    pss = rss = n = 0
    for p in descendants(root):
        v = _pss(p)
        st = _status(p)
        if v is None or st is None:
            continue
        pss += v
        rss += st.get("VmRSS", 0)
        n += 1
    return {"pid": root, "processes": n, "pss_kb": pss, "rss_sum_kb": rss}


def proc_cpu(pid):
    st = _stat(pid)
    return st[1] if st else 0.0


def tree_cpu(root):
    """CPU seconds used so far by root, its live descendants and every child
    root has already reaped (Postfix's master reaps its daemons)."""
    total = 0.0
    for p in descendants(root):
        st = _stat(p)
        if st:
            total += st[1] + st[2]
    return total


def system_cpu():
    """(busy, iowait, total) jiffies summed over all CPUs."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, iowait, busy + idle + iowait


def disk_stats(path):
    """(writes completed, flushes completed) of the block device holding path,
    or None if it cannot be found (e.g. tmpfs, overlay, device-mapper)."""
    dev = os.stat(path).st_dev
    major, minor = os.major(dev), os.minor(dev)
    try:
        with open("/proc/diskstats") as f:
            for line in f:
                p = line.split()
                if int(p[0]) == major and int(p[1]) == minor:
                    writes = int(p[7])
                    flushes = int(p[18]) if len(p) > 18 else None
                    return writes, flushes
    except FileNotFoundError:
        pass
    return None
