"""Simulator throughput and memory: one core, the seed profile (the reference marketplace).

Prints events generated per second (everything included: generation, delivery, the JSON-lines
landing zone, Parquet tables and truth) and the process's peak memory, side by side with the
targets (100,000 events/s on one core, under 4 GiB) and with a baseline for the landing-zone
writer (pandas `DataFrame.to_json`, the obvious alternative to the polars writer used here).
Ends with one line `RESULT {json}`.

    python benchmarks/simulate.py            # 3 days of the seed profile
    python benchmarks/simulate.py --quick    # 1 day (well under a minute)
"""
import argparse
import json
import os
import resource
import sys
import tempfile
import time

# one core: pin the process before any threaded library starts its pools
os.environ.setdefault("POLARS_MAX_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

import pyarrow as pa  # noqa: E402

pa.set_cpu_count(1); pa.set_io_thread_count(1)

from propensity.simulate import World, simulate, simulate_day, PROFILES  # noqa: E402

TARGET_EVENTS_PER_S = 100_000
TARGET_PEAK_GIB = 4.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one day instead of three")
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    days = 1 if a.quick else 3
    with tempfile.TemporaryDirectory() as d:
        print(f"simulating {days} day(s) of the seed profile on one core ...", flush=True)
        s = simulate("seed", days, a.seed, d, progress=sys.stderr.isatty())
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        landing_mb = sum(f.stat().st_size for f in __import__("pathlib").Path(d, "events").rglob("*.jsonl")) / 1e6
    rate = s["events"] / s["seconds"]
    # baseline for the landing writer: pandas to_json on the same day's events (the whole day: a slice flatters it)
    sample = simulate_day(World.build(PROFILES["seed"], 1, a.seed), 0).events
    t = time.perf_counter(); sample.to_json(orient="records", lines=True); pandas_s = time.perf_counter() - t
    ours_landing_rate = s["landing_records"] / max(s["stage_seconds"]["landing_jsonl"], 1e-9)
    pandas_rate = len(sample) / pandas_s
    rows = [
        ("events generated", f"{s['events']:,}", ""),
        ("events per second, end to end (1 core)", f"{rate:,.0f}", f"target >= {TARGET_EVENTS_PER_S:,}"),
        ("peak memory (GiB)", f"{peak_gib:.2f}", f"target < {TARGET_PEAK_GIB}"),
        ("landing JSON lines written per second", f"{ours_landing_rate:,.0f}", f"baseline pandas to_json {pandas_rate:,.0f}"),
        ("reference marketplace's real-time rate", f"{s['events_per_day'] / 86400:,.1f} events/s",
         f"simulator is {rate / (s['events_per_day'] / 86400):,.0f}x faster"),
        ("landing zone size (MB)", f"{landing_mb:,.0f}", ""),
    ] + [(f"  stage: {k}", f"{v:.2f} s", f"{v / s['seconds']:.0%}") for k, v in s["stage_seconds"].items()]
    w = max(len(r[0]) for r in rows)
    print(f"\n{'figure':<{w}}  {'measured':>18}  baseline / target")
    for name, val, base in rows:
        print(f"{name:<{w}}  {val:>18}  {base}")
    met = rate >= TARGET_EVENTS_PER_S and peak_gib < TARGET_PEAK_GIB
    print(f"\n{'MET' if met else 'NOT MET'}: {rate:,.0f} events/s (target {TARGET_EVENTS_PER_S:,}), "
          f"peak {peak_gib:.2f} GiB (target < {TARGET_PEAK_GIB})")
    result = dict(benchmark="simulate", profile="seed", days=days, events=s["events"], seconds=s["seconds"],
                  events_per_s=round(rate), peak_gib=round(peak_gib, 3), target_events_per_s=TARGET_EVENTS_PER_S,
                  target_peak_gib=TARGET_PEAK_GIB, landing_lines_per_s=round(ours_landing_rate),
                  baseline_pandas_to_json_lines_per_s=round(pandas_rate), stage_seconds=s["stage_seconds"], met=met)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
