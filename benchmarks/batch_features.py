"""Batch feature job throughput: raw landing-zone events to the training set on Spark local[2].

Simulates a world (not timed), then runs the batch job (`propensity features`) and prints the wall time and
events/s of every stage beside the target (100,000 events/s end to end for 7 days of the seed profile, about
7M events), and the CPU each stage used: the JVM's (Spark's parsing, shuffles, joins, writes) and Python's (the
driver and the Python workers that run the session fold), sampled from /proc every 0.1 s, and the JVM's CPU by
thread (Spark's task threads, the JIT compiler, GC, the rest). The CPU total is set
against the budget the target leaves: cores x (events / 100,000) core-seconds. Ends with one line `RESULT {json}`.

    python benchmarks/batch_features.py                 # 7 days of the seed profile (long: simulation + job)
    python benchmarks/batch_features.py --quick         # 2 days of the small profile (under a minute of job time)
    python benchmarks/batch_features.py --profile seed --days 1
    python benchmarks/batch_features.py --data DIR      # a world simulated before (its offline/ and training/ are rewritten)
    python benchmarks/batch_features.py --data DIR --conf spark.sql.codegen.hugeMethodLimit=8000   # a Spark setting to try
"""
import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from _proc import CpuLedger, JvmThreadLedger  # benchmarks/_proc.py (the script's folder is on sys.path)

from propensity.batch import run_batch, spark_session
from propensity.config import Settings
from propensity.simulate import simulate

TARGET_EVENTS_PER_S = 100_000


class CpuSampler(threading.Thread):
    "Samples (time, {jvm, python} CPU seconds of this process tree) every `every` seconds until stopped."
    def __init__(self, every: float = 0.1):
        super().__init__(daemon=True)
        self.every, self.samples, self.done, self.ledger = every, [], threading.Event(), CpuLedger()
        self.threads, self.by_thread = JvmThreadLedger(), None  # the JVM's threads: every 10th sample (hundreds of files)
    def run(self):
        n = 0
        while not self.done.is_set():
            c = self.ledger.read()
            if c is None: return
            if n % 10 == 0: self.by_thread = self.threads.read()
            self.samples.append((time.perf_counter(), c)); self.done.wait(self.every); n += 1
    def stop(self):
        self.done.set(); self.join()
        c = self.ledger.read()
        if c is not None: self.samples.append((time.perf_counter(), c)); self.by_thread = self.threads.read()
    def at(self, t: float) -> dict | None:
        "CPU seconds at time `t`, linear between the samples around it."
        s = self.samples
        if not s: return None
        if t <= s[0][0]: return dict(s[0][1])
        for (t0, c0), (t1, c1) in zip(s, s[1:]):
            if t <= t1:
                w = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
                return {k: c0[k] + w * (c1[k] - c0[k]) for k in c0}
        return dict(s[-1][1])


def stage_cpu(sampler: CpuSampler, start: float, stage_seconds: dict) -> dict:
    "CPU seconds (jvm, python) of each stage, the stages running back to back from `start` for their wall times."
    out, t = {}, start
    for name, sec in stage_seconds.items():
        a, b = sampler.at(t), sampler.at(t + sec)
        if a is None or b is None: return {}
        out[name] = {k: round(b[k] - a[k], 1) for k in a}
        t += sec
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 days of the small profile")
    ap.add_argument("--profile", default=None, choices=["small", "seed"])
    ap.add_argument("--days", type=int, default=None)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--data", help="a world simulated before (world.json and its landing zone); nothing is simulated")
    ap.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="a Spark setting (repeatable)")
    a = ap.parse_args()
    conf = dict(c.split("=", 1) for c in a.conf)
    with contextlib.ExitStack() as stack:
        if a.data:
            d = a.data
            w = json.loads((Path(d) / "world.json").read_text())
            profile, days = w["profile"], w["days"]
        else:
            profile = a.profile or ("small" if a.quick else "seed")
            days = a.days or (2 if a.quick else 7)
            d = stack.enter_context(tempfile.TemporaryDirectory())
            print(f"simulating {days} day(s) of the {profile} profile (not timed) ...", flush=True)
            w = simulate(profile, days, 42, d, progress=sys.stderr.isatty())
        settings = Settings.from_env({"SPARK_MASTER": a.master, "PROPENSITY_DATA": d})
        t = time.perf_counter()
        spark = spark_session(settings, "benchmark-batch", **conf)
        start_s = time.perf_counter() - t
        sampler = CpuSampler(); sampler.start()
        t_run = time.perf_counter()
        s = run_batch(d, settings, spark=spark, progress=True)
        sampler.stop()
        spark.stop()
    cpu = stage_cpu(sampler, t_run, s["stage_seconds"])
    cores = int(a.master[6:-1]) if a.master[6:-1].isdigit() else None  # local[N]
    rate = s["events"] / s["seconds"]
    print(f"\n{'stage':<55} {'seconds':>9} {'events/s':>12} {'JVM cpu-s':>10} {'Python cpu-s':>13}")
    print(f"{'Spark session start (not in the job total)':<55} {start_s:>9.1f}")
    for k, v in s["stage_seconds"].items():
        c = cpu.get(k, {})
        rate_k = f"{s['events'] / v:>12,.0f}" if v >= 0.05 else f"{'-':>12}"  # a stage of no measurable time has no rate
        print(f"{k:<55} {v:>9.1f} {rate_k} {c.get('jvm', float('nan')):>10.1f} "
              f"{c.get('python', float('nan')):>13.1f}")
    total_cpu = {k: round(sum(c[k] for c in cpu.values()), 1) for k in ("jvm", "python")} if cpu else {}
    print(f"{'end to end (raw landing zone -> training set)':<55} {s['seconds']:>9.1f} {rate:>12,.0f} "
          f"{total_cpu.get('jvm', float('nan')):>10.1f} {total_cpu.get('python', float('nan')):>13.1f}   target >= {TARGET_EVENTS_PER_S:,}")
    if total_cpu:
        used = total_cpu["jvm"] + total_cpu["python"]
        print(f"\nCPU: {used:,.0f} core-seconds = {used / s['events'] * 1e6:.1f} us per event"
              + (f"; the target leaves {cores} cores x {s['events'] / TARGET_EVENTS_PER_S:,.1f} s = "
                 f"{cores * s['events'] / TARGET_EVENTS_PER_S:,.0f} core-seconds = {cores / TARGET_EVENTS_PER_S * 1e6:.0f} us per event"
                 if cores else ""))
    jvm = {k: round(v, 1) for k, v in (sampler.by_thread or {}).items()}
    if jvm:  # from the session's start: the threads' CPU is not split by stage
        print("JVM CPU by thread, job and session start: " + ", ".join(f"{k} {v:,.1f}" for k, v in jvm.items())
              + " core-seconds")
    print(f"\n{w['landing_records']:,} landing records, {s['events']:,} events, {s['sessions']:,} sessions, "
          f"{s['training_rows']:,} training rows on {a.master}" + (f"; Spark settings {conf}" if conf else ""))
    met = rate >= TARGET_EVENTS_PER_S
    print(f"{'MET' if met else 'NOT MET'}: {rate:,.0f} events/s end to end (target {TARGET_EVENTS_PER_S:,})")
    print("RESULT " + json.dumps(dict(benchmark="batch_features", profile=profile, days=days, master=a.master, conf=conf,
                                      landing_records=w["landing_records"], events=s["events"], seconds=s["seconds"],
                                      events_per_s=round(rate), target_events_per_s=TARGET_EVENTS_PER_S,
                                      stage_seconds=s["stage_seconds"], stage_cpu_seconds=cpu, cpu_seconds=total_cpu, jvm_thread_cpu_seconds=jvm, training_rows=s["training_rows"], met=met)))


if __name__ == "__main__":
    main()
