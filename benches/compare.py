#!/usr/bin/env python3
"""Side-by-side comparison of kmsguard with ripgrep, cat and jq on generated CloudTrail corpora.

For each profile it generates (once, into bench-data/) a file of --size bytes with the project's
own generator, checks that kmsguard finds exactly the matches the generator wrote, then runs the
commands below in alternation, --rounds times, and prints the median wall time, GiB/s and the
ratio of each command's time to kmsguard filter mode's.

    python3 benches/compare.py                      # every profile, 256 MiB each
    python3 benches/compare.py --profiles mixed --size 64M --rounds 5
    python3 benches/compare.py --rules ../shared/data/detection-rules/aws   # also a rule pack
    python3 benches/compare.py --against /tmp/kmsguard-old   # a change: another build, side by side

It installs ripgrep and jq from Debian when they are missing (as root).
"""
import argparse
import os
import shutil
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
JQ_FILTER = (
    'select(.event.dataset=="aws.cloudtrail" and .event.provider=="kms.amazonaws.com" '
    'and (.event.action=="DisableKey" or .event.action=="ScheduleKeyDeletion") '
    'and .event.outcome=="success")'
)


def size_bytes(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def ensure_tools():
    missing = [pkg for tool, pkg in (("rg", "ripgrep"), ("jq", "jq")) if not shutil.which(tool)]
    if missing:
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "kmsguard", "-p", "kmsguard-corpus"],
                   cwd=ROOT, check=True)


def corpus(profile, size):
    """The profile's file and its expected match count, generated when missing."""
    DATA.mkdir(exist_ok=True)
    path = DATA / f"{profile}-{size}.ndjson"
    expected = path.with_suffix(".expected")
    if not path.exists() or not expected.exists():
        with open(path, "wb") as out:
            done = subprocess.run([CORPUS, profile, str(size)], stdout=out, stderr=subprocess.PIPE,
                                  check=True, text=False)
        fields = dict(kv.split("=") for kv in done.stderr.decode().split())
        expected.write_text(fields["matches"])
    return path, int(expected.read_text())


def slice_of(path, size):
    """The first `size` bytes of `path`, cut at a line end (for jq, which is slow)."""
    out = path.with_name(path.stem + f".head{size}.ndjson")
    if not out.exists():
        with open(path, "rb") as f:
            data = f.read(size)
        out.write_bytes(data[: data.rfind(b"\n") + 1])
    return out


def run(cmd, stdin_path):
    with open(stdin_path, "rb") as stdin:
        start = time.perf_counter()
        subprocess.run(cmd, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       shell=isinstance(cmd, str), check=False)
        return time.perf_counter() - start


def check_matches(path, expected):
    out = subprocess.run([KMSGUARD], stdin=open(path, "rb"),
                         stdout=subprocess.PIPE, check=True).stdout
    got = out.count(b"\n")
    if got != expected:
        sys.exit(f"{path.name}: kmsguard found {got} matches, the generator wrote {expected}")
    tagged = subprocess.run([KMSGUARD, "--mode", "tag"], stdin=open(path, "rb"),
                            stdout=subprocess.PIPE, check=True).stdout
    if tagged.count(b"\n") != path.read_bytes().count(b"\n"):
        sys.exit(f"{path.name}: tag mode lost lines")


def peak_rss_mib(cmd, stdin_path):
    if not Path("/usr/bin/time").exists():
        return None
    with open(stdin_path, "rb") as stdin:
        done = subprocess.run(["/usr/bin/time", "-v", *cmd], stdin=stdin, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, check=False)
    for line in done.stderr.splitlines():
        if "Maximum resident set size" in line:
            return int(line.split()[-1]) / 1024
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", default="mixed,no-kms,kms-heavy,all-candidates,raw,envelope")
    ap.add_argument("--size", default="256M")
    ap.add_argument("--jq-size", default="16M")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--rules", help="a rule directory for --rules (Elastic's AWS rules): adds the "
                    "pack's filter and tag runs")
    ap.add_argument("--no-jq", action="store_true", help="leave jq out (it takes most of the time)")
    ap.add_argument("--against", help="another kmsguard binary (a baseline build) to run beside "
                    "this one, in the same alternating rounds")
    args = ap.parse_args()
    ensure_tools()
    size = size_bytes(args.size)
    print(f"# kmsguard comparison, {date.today()}, {os.cpu_count()} cores, "
          f"{subprocess.run(['uname', '-srm'], capture_output=True, text=True).stdout.strip()}")
    for profile in args.profiles.split(","):
        path, expected = corpus(profile, size)
        check_matches(path, expected)
        jq_path = slice_of(path, size_bytes(args.jq_size))
        k = str(KMSGUARD)
        commands = {
            "kmsguard filter": ([k], path),
            "kmsguard tag": ([k, "--mode", "tag"], path),
            "kmsguard filter --threads 2": ([k, "--threads", "2"], path),
            "kmsguard tag --threads 2": ([k, "--mode", "tag", "--threads", "2"], path),
            "kmsguard filter --no-mmap": ([k, "--no-mmap"], path),
            "cat file | kmsguard filter": (f"cat {path} | {k}", "/dev/null"),
            # rg never maps stdin (it reads it), while kmsguard maps a redirected file: the
            # FILE row gives rg the path, so that it maps the file too (its fastest way).
            "rg -F -c kms.amazonaws.com": (["rg", "-F", "-c", "kms.amazonaws.com"], path),
            "rg -F -c kms.amazonaws.com FILE": (
                ["rg", "-F", "-c", "kms.amazonaws.com", str(path)], "/dev/null"),
            "cat": (["cat"], path),
            f"jq select (first {args.jq_size})": (["jq", "-c", JQ_FILTER], jq_path),
        }
        if args.no_jq:
            del commands[f"jq select (first {args.jq_size})"]
        if args.rules:
            pack = [k, "--rules", args.rules, "--no-warn", "refused"]
            commands["kmsguard --rules (pack) filter"] = (pack, path)
            commands["kmsguard --rules (pack) tag"] = (pack + ["--mode", "tag"], path)
            commands["kmsguard --rules (pack) filter --threads 2"] = (pack + ["--threads", "2"], path)
        if args.against:
            commands["baseline filter"] = ([args.against], path)
            if args.rules:
                commands["baseline --rules (pack) filter"] = (
                    [args.against, "--rules", args.rules, "--no-warn", "refused"], path)
        times = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, (cmd, stdin) in commands.items():
                times[name].append(run(cmd, stdin))
        base = statistics.median(times["kmsguard filter"])
        print(f"\n## {profile}: {path.stat().st_size / 2**20:.0f} MiB, {expected} matches "
              f"(checked), median of {args.rounds} alternating rounds\n")
        print("| command | median ms | GiB/s | time / kmsguard filter |")
        print("|---|---:|---:|---:|")
        for name, ts in times.items():
            med = statistics.median(ts)
            nbytes = (jq_path if name.startswith("jq") else path).stat().st_size
            label = name.replace("|", "\\|")
            print(f"| {label} | {med * 1e3:.1f} | {nbytes / med / 2**30:.2f} | {med / base:.2f} |")
        rss = peak_rss_mib([k], path)
        rss_pipe = peak_rss_mib([k, "--no-mmap"], path)
        if rss is not None:
            print(f"\npeak RSS: kmsguard filter {rss:.1f} MiB (mmap), {rss_pipe:.1f} MiB (read)")


if __name__ == "__main__":
    main()
