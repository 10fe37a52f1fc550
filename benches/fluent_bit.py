#!/usr/bin/env python3
"""Records per second through a real Fluent Bit 5.1.1, kmsguard's ways in against Fluent Bit's own.

Every configuration reads the same generated corpus with `tail` (or kmsguard with `exec`), and
writes to the `null` output, so that the numbers are the filtering's cost:

- fluent-bit alone: tail -> null (the floor)
- wasm identity: the wasm filter with kmsguard.wasm's `identity` (the cost of the mechanism)
- wasm kms_filter / kms_tag: kmsguard inside Fluent Bit
- grep (4 regexes): Fluent Bit's own filter doing the rule's four clauses with record accessors
- exec: kmsguard --mode tag in front, as examples/shippers/fluent-bit/exec.yaml (oneshot)
- two instances: producer | kmsguard --mode tag | consumer (stdin -> null)
- kmsguard alone: the binary on the file, for scale

Fluent Bit's start and its shutdown grace cost a second or two whatever the input; each command
is therefore also run on a one-record file, and the rate is (N - 1) / (T(N) - T(1)). Rounds
alternate between commands; medians are printed.

    python3 benches/fluent_bit.py                 # 64 MiB, 3 rounds
    python3 benches/fluent_bit.py --size 256M --rounds 5
"""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench-data" / "fluent-bit"
KMSGUARD = ROOT / "target" / "release" / "kmsguard"
CORPUS = ROOT / "target" / "release" / "kmsguard-corpus"
WASM = ROOT / "target" / "wasm" / "wasm32-wasip1" / "release" / "kmsguard_wasm.wasm"
RULE_ID = "6951f15e-533c-4a60-8014-a3c3ab851a1b"


def fluent_bit():
    sums = subprocess.run(["sha256sum", str(ROOT.parent / "shared/tools/fluent-bit/fluent-bit-src.tar.xz")],
                          capture_output=True, text=True, check=True).stdout[:16]
    cache = Path(os.environ.get("KMSGUARD_CACHE", Path.home() / ".cache" / "kmsguard"))
    fb = cache / f"fluent-bit-{sums}" / "build" / "bin" / "fluent-bit"
    if not fb.exists():
        sys.exit(f"no Fluent Bit at {fb}: run the Fluent Bit tests once (cargo test --test "
                 "integration fluentbit), which build it")
    return fb


HEAD = """service:
  flush: 1
  grace: 1
  log_level: error
parsers:
  - name: j
    format: json
pipeline:
  inputs:
    - name: tail
      tag: ct
      path: {input}
      parser: j
      read_from_head: true
      exit_on_eof: true
      buffer_max_size: 8M
"""
TAIL = """  outputs:
    - name: null
      match: '*'
"""
WASM_FILTER = """  filters:
    - name: wasm
      match: ct
      wasm_path: {wasm}
      function_name: {function}
      event_format: json
      accessible_paths: .
      wasm_stack_size: 1M
"""
GREP_FILTER = """  filters:
    - name: grep
      match: ct
      logical_op: and
      regex:
        - "$event['dataset'] ^aws\\\\.cloudtrail$"
        - "$event['provider'] ^kms\\\\.amazonaws\\\\.com$"
        - "$event['action'] ^(DisableKey|ScheduleKeyDeletion)$"
        - "$event['outcome'] ^success$"
"""
EXEC = """service:
  flush: 1
  grace: 1
  log_level: error
parsers:
  - name: j
    format: json
pipeline:
  inputs:
    - name: exec
      tag: ct
      command: {kmsguard} --mode tag {input}
      parser: j
      buf_size: 8M
      oneshot: true
      exit_after_oneshot: true
      threaded: true
  outputs:
    - name: null
      match: '*'
"""
PRODUCER = """service:
  flush: 1
  grace: 1
  log_level: error
parsers:
  - name: j
    format: json
pipeline:
  inputs:
    - name: tail
      tag: ct
      path: {input}
      parser: j
      read_from_head: true
      exit_on_eof: true
      buffer_max_size: 8M
  outputs:
    - name: stdout
      match: ct
      format: json_lines
      json_date_key: false
"""
CONSUMER = """service:
  flush: 1
  grace: 1
  log_level: error
pipeline:
  inputs:
    - name: stdin
      tag: tagged
      buffer_size: 8M
  outputs:
    - name: null
      match: '*'
"""


def configs(fb, input_path, tag):
    """The commands to time for one input file: name -> shell command."""
    cfg = DATA / f"cfg-{tag}"
    cfg.mkdir(parents=True, exist_ok=True)

    def write(name, text):
        path = cfg / name
        path.write_text(text)
        return path

    head = HEAD.format(input=input_path)
    cmds = {"fluent-bit alone (tail -> null)": f"{fb} -c {write('alone.yaml', head + TAIL)}"}
    for function in ["identity", "kms_filter", "kms_tag"]:
        text = head + WASM_FILTER.format(wasm=WASM, function=function) + TAIL
        cmds[f"wasm {function}"] = f"{fb} -c {write(function + '.yaml', text)}"
    cmds["grep, 4 regexes"] = f"{fb} -c {write('grep.yaml', head + GREP_FILTER + TAIL)}"
    cmds["exec: kmsguard --mode tag in front"] = (
        f"{fb} -c {write('exec.yaml', EXEC.format(kmsguard=KMSGUARD, input=input_path))}")
    producer = write("producer.yaml", PRODUCER.format(input=input_path))
    consumer = write("consumer.yaml", CONSUMER)
    cmds["two instances: producer | kmsguard --mode tag | consumer"] = (
        f"{fb} -c {producer} | {KMSGUARD} --mode tag | {fb} -c {consumer}")
    cmds["kmsguard alone (filter, the file)"] = f"{KMSGUARD} {input_path}"
    return cmds


def timed(cmd):
    """(wall seconds, CPU seconds of all the processes the command ran)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="64M")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="", help="only the pipelines whose name holds this text "
                    "(wasm identity is always run, as the reference)")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "kmsguard", "-p", "kmsguard-corpus"],
                   cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "-q", "--target", "wasm32-wasip1", "-p",
                    "kmsguard-wasm", "--target-dir", str(ROOT / "target" / "wasm")], cwd=ROOT, check=True)
    fb = fluent_bit()
    DATA.mkdir(parents=True, exist_ok=True)
    big = DATA / f"mixed-{args.size}.ndjson"
    if not big.exists():
        with open(big, "wb") as out:
            subprocess.run([CORPUS, "mixed", args.size], stdout=out, stderr=subprocess.DEVNULL, check=True)
    one = DATA / "one.ndjson"
    one.write_bytes(big.read_bytes().split(b"\n", 1)[0] + b"\n")
    records = big.read_bytes().count(b"\n")
    full, empty = configs(fb, big, "full"), configs(fb, one, "one")
    keep = [n for n in full if args.only in n or n == "wasm identity"]
    full = {n: full[n] for n in keep}
    times = {name: ([], []) for name in full}
    for _ in range(args.rounds):
        for name in full:
            times[name][0].append(timed(full[name]))
            times[name][1].append(timed(empty[name]))
    print(f"# kmsguard and Fluent Bit 5.1.1, {date.today()}, {os.cpu_count()} cores, "
          f"{big.stat().st_size / 2**20:.0f} MiB, {records} records, median of {args.rounds} rounds\n")
    print("Wall time is quantized by Fluent Bit's one-second engine ticks (flush, shutdown);")
    print("CPU time (all processes of the pipeline) is not, and is the cost that compares.\n")
    print("| pipeline | wall s (N) | records/s by wall | CPU s (N) | CPU s (1) | records per CPU s "
          "| CPU / wasm identity |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rate_cpu = {}
    rows = []
    for name, (t_full, t_one) in times.items():
        wall_n = statistics.median(w for w, _ in t_full)
        wall_1 = statistics.median(w for w, _ in t_one)
        cpu_n = statistics.median(c for _, c in t_full)
        cpu_1 = statistics.median(c for _, c in t_one)
        rate_wall = (records - 1) / max(wall_n - wall_1, 1e-6)
        rate_cpu[name] = (records - 1) / max(cpu_n - cpu_1, 1e-6)
        rows.append((name, wall_n, rate_wall, cpu_n, cpu_1))
    base = rate_cpu["wasm identity"]
    for name, wall_n, rate_wall, cpu_n, cpu_1 in rows:
        label = name.replace("|", "\\|")
        print(f"| {label} | {wall_n:.2f} | {rate_wall:,.0f} | {cpu_n:.2f} | {cpu_1:.2f} | "
              f"{rate_cpu[name]:,.0f} | {base / rate_cpu[name]:.2f} |")


if __name__ == "__main__":
    main()
