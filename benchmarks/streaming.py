"""Streaming job benchmark: the highest event rate the job keeps up with on this machine, and event-to-online-store
freshness at the reference's peak rate (100 events/s).

  python benchmarks/streaming.py [--quick] [--profile seed|small] [--master local[2]] [--state buckets|sessions] [--buckets N]

1. capacity: a backlog of replayed landing-zone lines is drained; rate = rows / time of the micro-batches after the
   first (warm-up) one. Micro-batches hold at most BATCH_ROWS entries (--max-rows).
2. sustained: lines are published at a fixed rate R for a while, with the job running as `propensity stream` runs it
   (micro-batches take all available entries unless --sustain-max-rows is given); the job keeps up at R if its lag does
   not grow over the second half of the window: the lag right after each commit (entries published by the commit's
   time - entries the committed batches read) is fitted with a least-squares line over the commits of the second half,
   and its slope must stay under LAG_SLOPE_MAX of the input rate (a job that falls behind by 2% or more of what
   arrives does not keep up). Rates are tried from below the capacity upwards (0.5x and 0.9x with --quick, then 1.4x steps while the job keeps up);
   the highest one that keeps up is reported. Each window publishes distinct lines of a world simulated long enough
   for SUSTAIN_DISTINCT_RATE events/s; a faster window would repeat lines (duplicates or late events, cheap to drop),
   so no rate above it is tried. The rate the publisher achieved is printed beside the one asked for.
   The world is the seed profile by default (the reference marketplace: 300k shoppers, 75k products, 68k sessions
   and about 950k landing lines a day). Publishing it at R events/s runs its event time about R / 11 times faster
   than real time: the state then holds the sessions of that marketplace that are open at a moment (printed as
   "sessions in state"), not those of a marketplace R / 100 times larger.
3. freshness: lines published at 100/s; per event, the time from entering the stream (the entry id's ms) to the end
   of the online-store write that includes it. p50 / p99 over the events of the window (warm-up batches excluded).

Prints each figure next to its target; the last line is `RESULT {json}`. Not a pass/fail test.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

from _proc import tree_cpu_seconds  # benchmarks/_proc.py (the script's folder is on sys.path)
from propensity.config import Settings
from propensity.livestream import publish
from propensity.onlinestore import EmbeddedValkey, redis_client
from propensity.streaming import StreamConfig, StreamPaths, Stopper, landing_lines, read_metrics, run_stream

TARGET_RATE = 10_000      # events/s sustained (100 x the reference's peak)
TARGET_P99_MS = 3_000     # freshness p99 at 100 events/s
REFERENCE_PEAK = 100
SUSTAIN_DISTINCT_RATE = 25_000  # sustained windows publish distinct lines up to this rate (no faster window is tried)
LINES_PER_DAY = {"small": 50_000, "seed": 900_000}  # landing-zone lines of a simulated day, a little under the real counts
BATCH_ROWS = 20_000       # entries per micro-batch at most in the backlog drain: with bucketed state, 20k drained ~2x faster
                          # than 5k on local[2] (with per-session state 5k had measured faster per event than 10k or 20k)
LAG_SLOPE_MAX = 0.02      # a sustained window keeps up if the lag after commits grows by less than 2% of the input rate


def pct(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(p * len(s) + 0.5)) - 1))] if s else None


def lines_of(world: Path, n: int) -> list[bytes]:
    out = [l for _, l in landing_lines(world, limit=n)]
    while len(out) < n:  # a longer run than the world: repeat it (duplicate event ids are dropped and counted)
        out += out[: n - len(out)]
    return out


class Job:
    "The streaming job in a thread of this process (one JVM for all runs)."
    def __init__(self, spark, settings, data_dir, cfg):
        self.stopper = Stopper()
        self.out = None
        self.t = threading.Thread(target=self._run, args=(spark, settings, data_dir, cfg), daemon=True)
        self.t.start()

    def _run(self, spark, settings, data_dir, cfg):
        self.out = run_stream(data_dir, settings, cfg, spark=spark, progress=False, stopper=self.stopper)

    def stop(self):
        self.stopper.requested = "benchmark"
        self.t.join(300)
        return self.out


def wait_batches(path: Path, n: int, timeout: float):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if len(read_metrics(path)) >= n: return True
        time.sleep(0.2)
    return False


def publisher(r, stream, lines, rate, seconds, stop, out=None, log=None):
    """Publish `rate` lines/s in 10 chunks a second for `seconds`; returns (and puts in `out`) (lines published, seconds).
    `log` gets (epoch seconds, lines published so far) after each chunk."""
    t0 = time.perf_counter(); i = 0; k = 0
    step = max(1, rate // 10)
    if log is not None: log.append((time.time(), 0))
    while not stop.is_set() and time.perf_counter() - t0 < seconds:
        due = t0 + k / 10
        if due > time.perf_counter(): time.sleep(due - time.perf_counter())
        chunk = [lines[(i + j) % len(lines)] for j in range(step)]
        publish(r, chunk, stream, batch=5000); i += step; k += 1
        if log is not None: log.append((time.time(), i))
    res = (i, time.perf_counter() - t0)
    if out is not None: out.append(res)
    return res


def published_at(log, t: float) -> float:
    "Lines published by epoch time `t` (linear between the publisher's chunk records)."
    import bisect
    j = bisect.bisect_right([x for x, _ in log], t)
    if j == 0: return 0.0
    if j == len(log): return float(log[-1][1])
    (t0, n0), (t1, n1) = log[j - 1], log[j]
    return n0 + (n1 - n0) * (t - t0) / (t1 - t0) if t1 > t0 else float(n1)


def commit_lags(metrics: list[dict], log) -> list[tuple[float, float]]:
    "(commit epoch seconds, lag in entries right after the commit) of each batch: published by then - read by the batches so far."
    from datetime import datetime
    out, read = [], 0
    for m in metrics:
        read += m["input_rows"]
        if not m.get("time"): continue
        done = datetime.fromisoformat(m["time"].replace("Z", "+00:00")).timestamp() + m["batch_ms"] / 1000
        out.append((done, published_at(log, done) - read))
    return out


def slope(points) -> float | None:
    "Least-squares slope of (x, y) points (None with fewer than 3)."
    if len(points) < 3: return None
    n = len(points); mx = sum(x for x, _ in points) / n; my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller backlog and shorter windows (a few minutes)")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--profile", choices=sorted(LINES_PER_DAY), default="seed",
                    help="the simulated world published (default seed: the reference marketplace)")
    ap.add_argument("--state", choices=["buckets", "sessions"], default="buckets",
                    help="the job's state layout (default buckets; sessions = one state value per session)")
    ap.add_argument("--max-rows", type=int, default=BATCH_ROWS, help=f"entries per micro-batch at most in the backlog drain (default {BATCH_ROWS:,})")
    ap.add_argument("--sustain-max-rows", type=int, default=None,
                    help="entries per micro-batch at most in the sustained windows (default: none, as `propensity stream`)")
    ap.add_argument("--buckets", type=int, default=StreamConfig().buckets, help="with --state buckets: number of buckets")
    args = ap.parse_args()
    quick = args.quick
    backlog = 60_000 if quick else 120_000  # quick: the 20k warm-up batch, then 2 measured ones
    sustain_s = 60 if quick else 120
    fresh_s = 40 if quick else 120

    tmp = Path(tempfile.mkdtemp(prefix="bench_stream_"))
    from propensity.simulate import simulate
    t = time.perf_counter()
    distinct = max(backlog, SUSTAIN_DISTINCT_RATE * sustain_s)
    days = -(-distinct // LINES_PER_DAY[args.profile])
    simulate(args.profile, days, 42, tmp / "world", progress=False)
    all_lines = lines_of(tmp / "world", distinct)
    lines = all_lines[:backlog]
    print(f"world: {args.profile} profile, {days} day(s), {len(all_lines):,} lines, in {time.perf_counter() - t:.1f}s", flush=True)

    server = None
    url = os.environ.get("REDIS_URL")
    if not url:
        server = EmbeddedValkey(tmp / "valkey").start(); url = server.url
    r = redis_client(url)
    from propensity.batch import spark_session
    base = Settings.from_env({"REDIS_URL": url, "SPARK_MASTER": args.master})
    spark = spark_session(base, "bench-stream", **{"spark.sql.shuffle.partitions": "2", "spark.ui.showConsoleProgress": "false"})
    result = dict(master=args.master, profile=args.profile, quick=quick, cores=os.cpu_count(), state=args.state, max_rows=args.max_rows,
                  sustain_max_rows=args.sustain_max_rows, lag_slope_max=LAG_SLOPE_MAX,
                  buckets=args.buckets if args.state == "buckets" else None)
    layout = dict(state=args.state, buckets=args.buckets)

    def settings(name):
        return Settings.from_env({"REDIS_URL": url, "SPARK_MASTER": args.master, "PROPENSITY_STREAM": f"bench:{name}",
                                  "PROPENSITY_FEAST_PROJECT": f"bench_{name}"})

    # 1. capacity: drain a backlog --------------------------------------------------------------------------
    s = settings("capacity"); d = tmp / "capacity"; d.mkdir()
    publish(r, lines, s.stream_key, batch=5000)
    cfg = StreamConfig(lateness_minutes=10, max_rows_per_batch=args.max_rows, **layout)
    t = time.perf_counter()
    cpu = []  # (input rows committed so far, CPU seconds of this process and its children: JVM, Python workers)
    def watch(done):
        while not done.is_set():
            n = sum(m["input_rows"] for m in read_metrics(StreamPaths.of(d).metrics))
            if not cpu or n != cpu[-1][0]: cpu.append((n, tree_cpu_seconds()))
            time.sleep(0.1)
    done = threading.Event(); w = threading.Thread(target=watch, args=(done,), daemon=True); w.start()
    run_stream(d, s, cfg, until_idle=True, spark=spark, progress=False)
    done.set(); w.join()
    ms = [m for m in read_metrics(StreamPaths.of(d).metrics) if m["input_rows"]]
    warm = ms[1:] or ms
    rows, secs = sum(m["input_rows"] for m in warm), sum(m["batch_ms"] for m in warm) / 1000
    capacity = rows / secs if secs else 0.0
    result["capacity_events_per_s"] = round(capacity)
    result["capacity_batches"] = len(ms)
    result["capacity_batch_ms_median"] = sorted(m["batch_ms"] for m in warm)[len(warm) // 2] if warm else None
    print(f"capacity (backlog of {len(lines):,} lines, {len(ms)} batches of <= {cfg.max_rows_per_batch:,}): "
          f"{capacity:,.0f} events/s after warm-up (wall {time.perf_counter() - t:.0f}s incl. start)", flush=True)
    # CPU per event after the warm-up batch (driver, JVM, Python workers and, unless REDIS_URL is set, the embedded Valkey
    # server): much less dependent on the other jobs on the machine than the rates
    first = next((c for c in cpu if c[0] >= (ms[0]["input_rows"] if ms else 1)), None)
    if first is not None and cpu[-1][0] > first[0] and cpu[-1][1] is not None:
        us = (cpu[-1][1] - first[1]) / (cpu[-1][0] - first[0]) * 1e6
        result["capacity_cpu_us_per_event"] = round(us)
        print(f"CPU after warm-up: {us:,.0f} us per event (all processes of the job); at that cost 2 free cores would "
              f"process {2e6 / us:,.0f} events/s (load average now {os.getloadavg()[0]:.1f})", flush=True)

    # 2. sustained: publish at fixed rates, check the lag does not grow ----------------------------------------
    tried = []
    rates = sorted({min(SUSTAIN_DISTINCT_RATE, max(100, int(capacity * f) // 100 * 100))
                    for f in ((0.5, 0.9) if quick else (0.5, 0.75, 1.0, 1.25))})
    best = 0
    while rates:  # the capacity figure is noisy on a shared machine: while the job keeps up, go on at 1.4x (up to 3 more)
        rate = rates.pop(0)
        s = settings(f"sustain{rate}"); d = tmp / f"sustain{rate}"; d.mkdir()
        job = Job(spark, s, d, StreamConfig(lateness_minutes=10, max_rows_per_batch=args.sustain_max_rows, **layout))
        wait_batches(StreamPaths.of(d).metrics, 1, 120)  # the query is up (a first empty batch ran)
        n0 = len(read_metrics(StreamPaths.of(d).metrics))
        stop = threading.Event(); sent = []; log = []
        publisher(r, s.stream_key, all_lines, rate, sustain_s, stop, sent, log)
        t_end = time.time()
        job.stop()
        ms = read_metrics(StreamPaths.of(d).metrics)[n0:]
        lags = commit_lags(ms, log)
        in_half = [log[0][0] + sustain_s / 2 <= t <= t_end for t, _ in lags]
        half = [x for x, h in zip(lags, in_half) if h]
        ms_half = [m for m, h in zip([m for m in ms if m.get("time")], in_half) if h]
        state_med = sorted(m.get("state_rows") or 0 for m in ms_half)[len(ms_half) // 2] if ms_half else None
        batch_med = sorted(m["batch_ms"] for m in ms_half)[len(ms_half) // 2] if ms_half else None
        k = slope(half)
        kept = k is not None and k < LAG_SLOPE_MAX * rate
        n_sent, secs = sent[0] if sent else (0, sustain_s)
        tried.append(dict(rate=rate, kept_up=kept, lag_slope_per_s=None if k is None else round(k),
                          lag_slope_share=None if k is None else round(k / rate, 4), commits_2nd_half=len(half),
                          lag_first=round(half[0][1]) if half else None, lag_last=round(half[-1][1]) if half else None,
                          state_sessions_median=state_med, batch_ms_median=batch_med,
                          published=n_sent, published_per_s=round(n_sent / secs), repeated_lines=n_sent > len(all_lines)))
        print(f"sustained {rate:,} events/s for {sustain_s}s (published {n_sent:,} lines, {n_sent / secs:,.0f}/s"
              f"{', some repeated' if n_sent > len(all_lines) else ', all distinct'}): over the 2nd half's {len(half)} commits "
              f"the lag went {round(half[0][1]) if half else '?'} -> {round(half[-1][1]) if half else '?'} entries, trend "
              f"{'?' if k is None else f'{k:+,.0f}/s = {k / rate:+.1%} of the input'} (limit {LAG_SLOPE_MAX:.0%}), "
              f"median batch {batch_med} ms, {state_med} sessions in state: {'kept up' if kept else 'fell behind'}", flush=True)
        if kept:
            best = max(best, rate)
            nxt = min(int(rate * 1.4) // 100 * 100, SUSTAIN_DISTINCT_RATE)  # no window with repeated lines
            if not rates and len(tried) < (4 if quick else 6) and nxt > rate: rates.append(nxt)
        else: break
    result["sustained_events_per_s"] = best
    result["sustained_tried"] = tried

    # 3. freshness at 100 events/s ---------------------------------------------------------------------------
    s = settings("fresh"); d = tmp / "fresh"; d.mkdir()
    job = Job(spark, s, d, StreamConfig(lateness_minutes=10, **layout))
    wait_batches(StreamPaths.of(d).metrics, 1, 120)
    n0 = len(read_metrics(StreamPaths.of(d).metrics))
    stop = threading.Event()
    publisher(r, s.stream_key, all_lines, REFERENCE_PEAK, fresh_s, stop)
    time.sleep(5)
    job.stop()
    ms = read_metrics(StreamPaths.of(d).metrics)[n0:]
    ms = [m for m in ms if m.get("freshness_sample_ms")]
    ms = ms[1:] if len(ms) > 3 else ms  # the first batch with data warms up the Python workers
    fresh = [x for m in ms for x in m["freshness_sample_ms"]]
    result["freshness_events"] = len(fresh)
    result["freshness_p50_ms"] = pct(fresh, 0.5)
    result["freshness_p99_ms"] = pct(fresh, 0.99)
    result["freshness_batch_ms_median"] = sorted(m["batch_ms"] for m in ms)[len(ms) // 2] if ms else None
    print(f"freshness at {REFERENCE_PEAK} events/s for {fresh_s}s: p50 {result['freshness_p50_ms']} ms, "
          f"p99 {result['freshness_p99_ms']} ms over {len(fresh):,} events "
          f"(median batch {result['freshness_batch_ms_median']} ms)", flush=True)

    print()
    print(f"{'figure':<40}{'measured':>16}{'target':>16}")
    print(f"{'sustained rate, events/s (local[2])':<40}{best:>16,}{'>= ' + format(TARGET_RATE, ','):>16}")
    print(f"{'capacity (backlog drain), events/s':<40}{result['capacity_events_per_s']:>16,}{'':>16}")
    print(f"{'CPU per event after warm-up, us':<40}{str(result.get('capacity_cpu_us_per_event')):>16}{'':>16}")
    print(f"{'freshness p50 @100 ev/s, ms':<40}{str(result['freshness_p50_ms']):>16}{'':>16}")
    print(f"{'freshness p99 @100 ev/s, ms':<40}{str(result['freshness_p99_ms']):>16}{'< ' + format(TARGET_P99_MS, ','):>16}")
    result["target_rate"] = TARGET_RATE; result["target_p99_ms"] = TARGET_P99_MS
    result["rate_target_met"] = best >= TARGET_RATE
    result["p99_target_met"] = result["freshness_p99_ms"] is not None and result["freshness_p99_ms"] < TARGET_P99_MS
    spark.stop(); r.close()
    if server: server.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
