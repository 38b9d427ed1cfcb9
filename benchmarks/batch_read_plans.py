"""Plans for the batch job's first steps, side by side: raw JSON lines -> validated events -> shuffled and sorted by
session (what the session fold reads). No Python fold runs here: the figures are the JVM's.

  cached (the job's plan until 2026-11-28): parse and validate every line into a cached frame (the rejected lines are
         found from it), then shuffle the cached valid events by session and sort them.
  job    (the job's plan now, `pass_input`): parse, certify and shuffle every line in one pass, nothing cached; the
         lines the JVM cannot certify travel with their session (raw line and file) and the fold's pass settles them.
  filter (a first form of the fused plan): like `job`, but keeps only the certified lines with a filter on the
         certification. Its generated code is larger than HotSpot compiles by default, so it runs with
         -XX:-DontCompileHugeMethods too, for comparison (`job` projects the certification as a column and does not
         need the flag).

No plan runs the contract's Python validator on the lines the fast path cannot certify (0.1% of a simulated landing
zone; the job does): what is compared is the JVM's parsing, validation, caching and shuffling of the events.

Each plan runs in its own Spark session (local[2] by default) and writes to Spark's no-op sink; wall time and the JVM's CPU
(from /proc) are printed. Ends with one line `RESULT {json}`.

    python benchmarks/batch_read_plans.py --data DIR      # the landing zone of a world (e.g. propensity simulate --profile seed)
    python benchmarks/batch_read_plans.py --quick         # simulates 2 days of the small profile first
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from _proc import CpuLedger  # benchmarks/_proc.py (the script's folder is on sys.path)

HUGE = "-XX:-DontCompileHugeMethods"
PLANS = (("cached", ""), ("job", ""), ("filter", ""), ("filter", HUGE))


def run_plan(data: str, plan: str, java_opts: str, master: str) -> dict:
    "Run one plan in this process (call it in a fresh process: the JVM options apply at start)."
    from pyspark.sql import functions as F
    from pathlib import Path
    from propensity.batch import _PASS_INPUT, landing_arrival_bound, pass_input, spark_session
    from propensity.config import Settings
    from propensity.contracts import EVENT, spark_fast_path
    conf = {"spark.driver.extraJavaOptions": java_opts} if java_opts else {}
    spark = spark_session(Settings.from_env({"SPARK_MASTER": master}), "read-plans", **conf)
    ledger = CpuLedger()
    raw = (spark.read.text(os.path.join(data, "events"), recursiveFileLookup=True, pathGlobFilter="*.jsonl")
           .withColumn("source", F.input_file_name()))
    lines = raw.count()  # lists the files and warms the JVM up; not timed
    cols = list(_PASS_INPUT)
    def shuffle(df, extra=()):
        (df.select(*cols, *extra).repartition(8, "session_id").sortWithinPartitions("session_id", "event_time", "event_id")
           .write.format("noop").mode("overwrite").save())
    c0, t0 = ledger.read(), time.perf_counter()
    rejected_candidates = None  # the fold's pass finds them (job), or nothing does (filter)
    if plan == "job":
        arrival = landing_arrival_bound((Path(data) / "events").rglob("*.jsonl"))  # as run_batch passes it
        shuffle(pass_input(spark, Path(data), cols, arrival)[0], ("_ok", "_line", "_source"))
    else:
        fast, slow, parsed = spark_fast_path(EVENT, raw, keep=cols, slow_only=["source"], persist=plan == "cached")
        if plan == "cached": rejected_candidates = slow.count()  # the old read stage: builds the cache
        shuffle(fast)
    wall, c1 = time.perf_counter() - t0, ledger.read()
    spark.stop()
    return dict(plan=plan, java_opts=java_opts, lines=lines, seconds=round(wall, 1), jvm_cpu_seconds=round(c1["jvm"] - c0["jvm"], 1),
                slow_lines=rejected_candidates)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="a data folder with a landing zone (events/**/*.jsonl)")
    ap.add_argument("--quick", action="store_true", help="simulate 2 days of the small profile (when --data is not given)")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--plan", help=argparse.SUPPRESS)       # internal: run one plan in this process ...
    ap.add_argument("--java-opts", help=argparse.SUPPRESS)  # ... with these JVM options
    a = ap.parse_args()
    if a.plan:
        print("PLAN " + json.dumps(run_plan(a.data, a.plan, a.java_opts or "", a.master)), flush=True); return
    with tempfile.TemporaryDirectory() as tmp:
        data = a.data
        if data is None:
            from propensity.simulate import simulate
            data = tmp
            profile, days = ("small", 2) if a.quick else ("seed", 7)
            print(f"simulating {days} day(s) of the {profile} profile (not timed) ...", flush=True)
            simulate(profile, days, 42, data, progress=False)
        results = []
        for plan, opts in PLANS:
            print(f"plan {plan} {opts or '(default JVM options)'} ...", flush=True)
            out = subprocess.run([sys.executable, __file__, "--data", data, "--master", a.master, "--plan", plan, f"--java-opts={opts}"],
                                 capture_output=True, text=True)
            line = next((x for x in out.stdout.splitlines() if x.startswith("PLAN ")), None)
            if line is None: sys.exit(f"plan {plan} failed:\n{out.stderr[-3000:]}")
            results.append(json.loads(line[5:]))
    base = results[0]
    print(f"\n{'plan':<42} {'seconds':>9} {'lines/s':>11} {'JVM cpu-s':>10} {'vs cached':>10}")
    for r in results:
        name = f"{r['plan']} {r['java_opts'] or '(default JVM options)'}"
        print(f"{name:<42} {r['seconds']:>9.1f} {r['lines'] / r['seconds']:>11,.0f} {r['jvm_cpu_seconds']:>10.1f} "
              f"{r['seconds'] / base['seconds']:>9.2f}x")
    print(f"\n{base['lines']:,} landing lines on {a.master}; cached = the batch job's plan before (baseline), job = its plan now")
    print("RESULT " + json.dumps(dict(benchmark="batch_read_plans", master=a.master, lines=base["lines"], plans=results)))


if __name__ == "__main__":
    main()
