#!/usr/bin/env python3
"""Runs a command under strace and counts, from outside the process, the byte ranges it
reads from files under SRC (read/pread64 on descriptors strace's -y names, positions
tracked through openat and lseek). With --kill-at N, SIGKILLs the traced process once the
bytes read (together with --earlier's ranges) reach N. Writes the ranges read as JSON.

usage: strace_reads.py --src SRC --out RANGES.json [--earlier A.json ...] [--kill-at BYTES] -- CMD...
Prints one line: read=<bytes> again=<bytes read that --earlier had read> killed=<0|1>.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile


def add(ranges, start, end):
    if start >= end:
        return
    ranges.append((start, end))
    ranges.sort()
    merged = []
    for s, e in ranges:
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    ranges[:] = merged


def total(reads):
    return sum(e - s for r in reads.values() for s, e in r)


def overlap(a, b):
    n = 0
    for f, ra in a.items():
        for s, e in ra:
            for os_, oe in b.get(f, []):
                lo, hi = max(s, os_), min(e, oe)
                if lo < hi:
                    n += hi - lo
    return n


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--src", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--earlier", action="append", default=[])
    p.add_argument("--kill-at", type=int)
    p.add_argument("cmd", nargs="+")
    a = p.parse_args()
    src = os.path.realpath(a.src).rstrip("/") + "/"
    earlier = {}
    for path in a.earlier:
        for f, rs in json.load(open(path)).items():
            for s, e in rs:
                add(earlier.setdefault(f, []), s, e)
    earlier_total = total(earlier)

    d = tempfile.mkdtemp()
    fifo = os.path.join(d, "trace")
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        ["strace", "-f", "-qq", "-y", "-s", "0", "--seccomp-bpf",
         "-e", "trace=openat,read,pread64,readv,preadv,lseek", "-o", fifo] + a.cmd,
        stdout=subprocess.DEVNULL)
    reads, pending, pos = {}, {}, {}
    new_bytes = 0  # bytes read here that earlier runs had not read (approximate, for the kill)
    killed, sent = False, False
    with open(fifo, errors="replace") as trace:
        for line in trace:
            line = line.rstrip("\n")
            pid, _, rest = line.partition(" ")
            rest = rest.lstrip()
            if rest.startswith("+++ killed by SIGKILL"):
                killed = True
            if rest.endswith("<unfinished ...>"):
                pending[pid] = rest[: -len("<unfinished ...>")]
                continue
            if rest.startswith("<... "):
                head = pending.pop(pid, None)
                if head is None or "resumed>" not in rest:
                    continue
                rest = head + rest.split("resumed>", 1)[1]
            name, paren, args = rest.partition("(")
            if not paren or " = " not in args:
                continue
            args, _, result = args.rpartition(" = ")
            args = args.rstrip()
            if not args.endswith(")"):
                continue
            args = args[:-1]
            result = result.split()[0] if result.split() else ""
            if name == "openat":
                fd, lt, path = result.partition("<")
                if lt and path.startswith(src):
                    pos[fd] = 0
                continue
            first, _, more = args.partition(", ")
            fd, lt, path = first.partition("<")
            path = path.rstrip(">")
            if not lt or not path.startswith(src):
                continue
            try:
                n = int(result)
            except ValueError:
                continue
            if n < 0:
                continue
            f = path[len(src):]
            if name == "read":
                start = pos.get(fd, 0)
                add(reads.setdefault(f, []), start, start + n)
                pos[fd] = start + n
                new_bytes += n
            elif name == "pread64":
                off = int(more.rsplit(", ", 1)[1])
                add(reads.setdefault(f, []), off, off + n)
                new_bytes += n
            elif name == "lseek":
                pos[fd] = n
            elif name in ("readv", "preadv"):
                sys.exit(f"the reader uses {name}: teach this script")
            if a.kill_at is not None and not sent and name in ("read", "pread64"):
                # Cheap test first; the exact union only near the threshold.
                if earlier_total + new_bytes >= a.kill_at:
                    union = dict((k, list(v)) for k, v in earlier.items())
                    for k, v in reads.items():
                        for s, e in v:
                            add(union.setdefault(k, []), s, e)
                    if total(union) >= a.kill_at:
                        children = open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()
                        os.kill(int(children[0]), signal.SIGKILL)
                        sent = True
    proc.wait()
    os.unlink(fifo)
    os.rmdir(d)
    if not killed and proc.returncode != 0:
        sys.exit(f"the traced command failed: exit {proc.returncode}")
    json.dump(reads, open(a.out, "w"))
    print(f"read={total(reads)} again={overlap(reads, earlier)} killed={int(killed)}")


if __name__ == "__main__":
    main()
