"""Training throughput: HPO trials + final fit + calibration on a 4-week training set, on 2 cores.

Builds the training set (simulate + the batch job; not timed) unless `--data` points at a data folder that has
one, then runs the training pipeline (`propensity train`) and prints wall time per stage and the peak memory
beside the target (seed profile, 4 weeks, about 2M rows and 40+ features: 20 trials + final fit + calibration
in under 20 minutes). Ends with one line `RESULT {json}`.

    python benchmarks/training.py --data data/seed4w      # an existing 4-week seed world with features
    python benchmarks/training.py                          # builds 4 weeks of the seed profile first (long)
    python benchmarks/training.py --quick                  # 16 days of the small profile, 4 trials
    python benchmarks/training.py --data data/seed16 --val-days 3 --test-days 3   # ~2M rows from 16 seed days (10/3/3)

The seed profile yields about 130K scoring points a day, so 4 weeks hold ~3.6M rows; 16 days split 10/3/3 give the
target's ~2M rows with most of them in the training split. The search's trials see at most `hpo_max_rows` training
rows (whole sessions, 600K by default) and `hpo_max_val_rows` validation rows; the final fit sees every row.
"""
import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd

from propensity.batch import run_batch
from propensity.quality import check_tables
from propensity.simulate import simulate
from propensity.train import TrainConfig, train_pipeline

TARGET_S = 20 * 60


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="data folder with training/training_set (skips building one)")
    ap.add_argument("--quick", action="store_true", help="16 days of the small profile and 4 trials")
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--val-days", type=int, default=None, help="validation days (default 7; 3 with --quick)")
    ap.add_argument("--test-days", type=int, default=None, help="test days (default 7; 3 with --quick)")
    a = ap.parse_args()
    trials = a.trials or (4 if a.quick else 20)
    tmp = None
    if a.data:
        d = Path(a.data)
    else:
        tmp = tempfile.TemporaryDirectory(); d = Path(tmp.name)
        profile, days = ("small", 16) if a.quick else ("seed", 28)
        print(f"building the training set: {days} days of the {profile} profile (not timed) ...", flush=True)
        simulate(profile, days, 42, d, progress=False)
        run_batch(d, progress=False)
        check_tables(d).write(d / "quality")
    cfg = TrainConfig(n_trials=trials, timeout_s=TARGET_S, val_days=a.val_days or (3 if a.quick else 7),
                      test_days=a.test_days or (3 if a.quick else 7))
    t = time.perf_counter()
    s = train_pipeline(d, cfg, promote=False)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    rows = sum(s["rows"].values())
    print(f"\n{'stage':<28} {'seconds':>9}")
    for k, v in s["stage_seconds"].items(): print(f"{k:<28} {v:>9.1f}")
    print(f"{'total':<28} {wall:>9.1f}   target < {TARGET_S} s (20 trials + final fit + calibration, seed 4 weeks)")
    print(f"\n{rows:,} rows x {s['features']} features (train / val / test {' / '.join(f'{v:,}' for v in s['rows'].values())}; "
          f"the trials saw {s['hpo_rows']['train']:,} / {s['hpo_rows']['val']:,}), {s['trials']} trials, test PR-AUC {s['metrics']['pr_auc']:.4f}, "
          f"ECE {s['metrics']['ece']:.4f}, peak memory {peak:.2f} GiB")
    o = s.get("oracle")
    if o:
        what = {"moment": "the simulator's probability at each test scoring point (p_now: it knows the latent intent)",
                "session": "the session's p_true, fixed at its decision (an older world: no truth/events)"}[o.get("kind", "session")]
        print(f"oracle = {what}: model PR-AUC {s['metrics']['pr_auc']:.4f} vs {o['pr_auc']:.4f} = {o['pr_auc_ratio']:.3f} "
              f"(target >= 0.9); Brier {s['metrics']['brier']:.5f} vs {o['brier']:.5f} = {o['brier_ratio']:.3f} (target <= 1.05)")
    segs = [x for x in s["metrics"].get("segments", []) if x.get("sessions", x["n"]) >= 2000]
    worst = max(segs, key=lambda x: x["ece"]) if segs else None
    if worst:
        print(f"ECE overall {s['metrics']['ece']:.4f} (target <= 0.01); worst of {len(segs)} segments with >= 2,000 sessions: "
              f"{worst['column']}={worst['value']} {worst['ece']:.4f} (target <= 0.02)")
    preds = pd.read_parquet(Path(s["run_dir"]) / "predictions.parquet").query("split == 'test'")
    print("\ntest points by trigger: purchase rate, mean calibrated score" + (", mean oracle" if "p_true" in preds else ""))
    for trig, g in preds.groupby("trigger"):
        print(f"  {trig:<14} {len(g):>9,} points  rate {g.label.mean():.4f}  score {g.score.mean():.4f}"
              + (f"  oracle {g.p_true.mean():.4f}" if "p_true" in g else ""))
    at_scale = rows >= 1_500_000
    met = (wall < TARGET_S) if at_scale else None  # the target is stated for ~2M rows: smaller runs do not decide it
    verdict = {True: "MET", False: "NOT MET", None: "NOT DECIDED"}[met]
    print(f"{verdict}: {wall:,.0f} s (target < {TARGET_S:,} s)" + ("" if at_scale else
          f" on {rows:,} rows, fewer than the target's ~2M: run on a 4-week seed world for the real figure"))
    print("RESULT " + json.dumps(dict(benchmark="training", rows=rows, split_rows=s["rows"], hpo_rows=s["hpo_rows"], features=s["features"], trials=s["trials"],
                                      seconds=round(wall, 1), stage_seconds=s["stage_seconds"], peak_gib=round(peak, 3),
                                      target_seconds=TARGET_S, pr_auc=s["metrics"]["pr_auc"], ece=s["metrics"]["ece"],
                                      worst_segment_ece=worst and worst["ece"], oracle=o, met=met)))
    if tmp: tmp.cleanup()


if __name__ == "__main__":
    main()
