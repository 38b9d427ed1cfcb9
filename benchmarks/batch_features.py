"""Batch feature job throughput: raw landing-zone events to the training set on Spark local[2].

Simulates a world (not timed), then runs the batch job (`propensity features`) and prints the wall time and
events/s of every stage beside the target (100,000 events/s end to end for 7 days of the seed profile, about
7M events). Ends with one line `RESULT {json}`.

    python benchmarks/batch_features.py                 # 7 days of the seed profile (long: simulation + job)
    python benchmarks/batch_features.py --quick         # 2 days of the small profile (under a minute of job time)
    python benchmarks/batch_features.py --profile seed --days 1
"""
import argparse
import json
import sys
import tempfile
import time

from propensity.batch import run_batch, spark_session
from propensity.config import Settings
from propensity.simulate import simulate

TARGET_EVENTS_PER_S = 100_000


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 days of the small profile")
    ap.add_argument("--profile", default=None, choices=["small", "seed"])
    ap.add_argument("--days", type=int, default=None)
    ap.add_argument("--master", default="local[2]")
    a = ap.parse_args()
    profile = a.profile or ("small" if a.quick else "seed")
    days = a.days or (2 if a.quick else 7)
    with tempfile.TemporaryDirectory() as d:
        print(f"simulating {days} day(s) of the {profile} profile (not timed) ...", flush=True)
        w = simulate(profile, days, 42, d, progress=sys.stderr.isatty())
        settings = Settings.from_env({"SPARK_MASTER": a.master, "PROPENSITY_DATA": d})
        t = time.perf_counter()
        spark = spark_session(settings, "benchmark-batch")
        start_s = time.perf_counter() - t
        s = run_batch(d, settings, spark=spark, progress=True)
        spark.stop()
    rate = s["events"] / s["seconds"]
    print(f"\n{'stage':<55} {'seconds':>9} {'events/s':>12}")
    print(f"{'Spark session start (not in the job total)':<55} {start_s:>9.1f}")
    for k, v in s["stage_seconds"].items():
        print(f"{k:<55} {v:>9.1f} {s['events'] / v if v else float('inf'):>12,.0f}")
    print(f"{'end to end (raw landing zone -> training set)':<55} {s['seconds']:>9.1f} {rate:>12,.0f}   target >= {TARGET_EVENTS_PER_S:,}")
    print(f"\n{w['landing_records']:,} landing records, {s['events']:,} events, {s['sessions']:,} sessions, "
          f"{s['training_rows']:,} training rows on {a.master}")
    met = rate >= TARGET_EVENTS_PER_S
    print(f"{'MET' if met else 'NOT MET'}: {rate:,.0f} events/s end to end (target {TARGET_EVENTS_PER_S:,})")
    print("RESULT " + json.dumps(dict(benchmark="batch_features", profile=profile, days=days, master=a.master,
                                      landing_records=w["landing_records"], events=s["events"], seconds=s["seconds"],
                                      events_per_s=round(rate), target_events_per_s=TARGET_EVENTS_PER_S,
                                      stage_seconds=s["stage_seconds"], training_rows=s["training_rows"], met=met)))


if __name__ == "__main__":
    main()
