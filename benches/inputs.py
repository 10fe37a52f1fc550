#!/usr/bin/env python3
"""Throughput on the inputs an archive holds: gzipped files and trees of many small ones.

1. One gzipped file (the mixed profile, `gzip -6` as CloudTrail's own objects): kmsguard reading
   the .gz itself, against `zcat | kmsguard` and `zcat > /dev/null` (decompression alone).
   MB/s are of *compressed* input.
2. A tree of --files gzipped CloudTrail log files (`{"Records":[...]}`, raw profile), as an S3
   mirror holds them: `kmsguard -c --split-records DIR` at -j 1 and -j 2, files/s and MB/s.

Every run checks its answer against the generator's match count. Commands alternate, --rounds
times; medians are printed.

    python3 benches/inputs.py                      # 256 MiB, 10,000 files
    python3 benches/inputs.py --size 64M --files 2000 --rounds 3
"""
import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench-data"
KMSGUARD = ROOT / "target" / "release" / "kmsguard"
CORPUS = ROOT / "target" / "release" / "kmsguard-corpus"


def size_bytes(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def generate(profile, size):
    done = subprocess.run([CORPUS, profile, str(size)], capture_output=True, check=True)
    fields = dict(kv.split("=") for kv in done.stderr.decode().split())
    return done.stdout, int(fields["matches"])


def timed(cmd):
    start = time.perf_counter()
    done = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, done.stdout


def table(title, commands, rounds, check, unit_bytes, unit_files=None):
    times = {name: [] for name in commands}
    for _ in range(rounds):
        for name, cmd in commands.items():
            elapsed, out = timed(cmd)
            check(name, out)
            times[name].append(elapsed)
    base = statistics.median(next(iter(times.values())))
    print(f"\n## {title}, median of {rounds} alternating rounds\n")
    extra = " | files/s" if unit_files else ""
    print(f"| command | median ms | MB/s (compressed){extra} | time / first |")
    print("|---|---:|---:|" + ("---:|" if unit_files else "") + "---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        files = f" | {unit_files / med:,.0f}" if unit_files else ""
        label = name.replace("|", "\\|")
        print(f"| {label} | {med * 1e3:.1f} | {unit_bytes / med / 1e6:.0f}{files} | {med / base:.2f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="256M")
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "kmsguard", "-p", "kmsguard-corpus"],
                   cwd=ROOT, check=True)
    DATA.mkdir(exist_ok=True)
    print(f"# kmsguard on compressed input, {date.today()}, {os.cpu_count()} cores")

    # 1. One gzipped file.
    size = size_bytes(args.size)
    text, matches = generate("mixed", size)
    gz = DATA / f"mixed-{size}.ndjson.gz"
    if not gz.exists():
        gz.write_bytes(gzip.compress(text, compresslevel=6))
    k = KMSGUARD

    def count_lines(name, out):
        if name.endswith("> /dev/null"):
            return
        got = out.count(b"\n")
        if got != matches:
            sys.exit(f"{name}: {got} matches, the generator wrote {matches}")

    print(f"\n{len(text) / 2**20:.0f} MiB of NDJSON, {gz.stat().st_size / 2**20:.1f} MiB gzipped, "
          f"{matches} matches")
    table("one gzipped file", {
        "kmsguard file.gz": f"{k} {gz}",
        "zcat file.gz | kmsguard": f"zcat {gz} | {k}",
        "zcat file.gz > /dev/null": f"zcat {gz} > /dev/null",
    }, args.rounds, count_lines, gz.stat().st_size)

    # 2. A tree of many small gzipped log files.
    raw, _ = generate("raw", max(size // 4, 1 << 20))
    lines = raw.splitlines()
    tree = DATA / f"tree-{args.files}"
    per_file = max(len(lines) // args.files, 1)
    if not tree.exists():
        for n in range(args.files):
            chunk = lines[n * per_file:(n + 1) * per_file]
            if not chunk:
                break
            records = b"[" + b",".join(chunk) + b"]"
            day = tree / f"AWSLogs/123456789012/CloudTrail/us-east-1/2024/{n % 12 + 1:02}/{n % 28 + 1:02}"
            day.mkdir(parents=True, exist_ok=True)
            (day / f"123456789012_CloudTrail_us-east-1_{n:06}.json.gz").write_bytes(
                gzip.compress(b'{"Records":' + records + b"}\n", compresslevel=6))
    used = lines[: per_file * args.files]
    want = subprocess.run([k, "-c"], input=b"\n".join(used) + b"\n", capture_output=True,
                          check=True).stdout
    want = int(want.strip())
    files = sum(1 for _ in tree.rglob("*.json.gz"))
    tree_bytes = sum(p.stat().st_size for p in tree.rglob("*.json.gz"))

    def count_records(name, out):
        got = sum(int(l.rsplit(b":", 1)[1]) for l in out.splitlines())
        if got != want:
            sys.exit(f"{name}: {got} matching records, expected {want}")

    print(f"\n{files} files, {per_file} records each, {tree_bytes / 2**20:.1f} MiB gzipped, "
          f"{want} matching records")
    table("a tree of gzipped log files", {
        "kmsguard -c --split-records -j 1 DIR": f"{k} -c --split-records -j 1 {tree}",
        "kmsguard -c --split-records -j 2 DIR": f"{k} -c --split-records -j 2 {tree}",
        "find DIR -name '*.gz' | xargs zcat | kmsguard -c --split-records":
            f"find {tree} -name '*.gz' -print0 | xargs -0 zcat | {k} -c --split-records "
            f"| sed 's/^/all:/'",
    }, args.rounds, count_records, tree_bytes, files)


if __name__ == "__main__":
    main()
