"""The training pipeline on a short simulated world, through the real batch job: search, calibration, evaluation,
gates, registry; a failing candidate leaves nothing registered, a passing one loads back and reproduces its scores."""
import json

import numpy as np
import optuna
import pytest

from conftest import copy_world

from propensity.calibration import SegmentAdjuster, calibrator_from_dict
from propensity.contracts import read_table
from propensity.registry import load, promoted
from propensity.train import Encoder, TrainConfig, time_split, train_pipeline

CFG = TrainConfig(val_days=2, test_days=2, n_trials=3, timeout_s=120, max_rounds=300, early_stopping=20)


@pytest.fixture(scope="module")
def world(tmp_path_factory, short_world):
    return copy_world(short_world, tmp_path_factory.mktemp("train") / "w")


def test_strict_gates_refuse_and_register_nothing(world):
    s = train_pipeline(world, CFG, gates=dict(ece_max=1e-6))
    assert s["version"] is None and not s["promoted"] and promoted(world / "registry") is None
    assert "ece" in s["gates_summary"] and "missed by" in s["gates_summary"]
    assert s["trials"] == 3 and s["rows"]["test"] > 1000
    m = s["metrics"]
    assert m["pr_auc"] > 2 * m["base_rate"]                    # far better than chance
    assert m["ece"] < m["raw"]["ece"]                          # calibration helped
    o = s["oracle"]                                             # the simulator's probability at each test point
    assert o["kind"] == "moment" and 0 < o["pr_auc_ratio"] < 1.5
    assert o["brier"] < m["brier"] and o["pr_auc"] > m["pr_auc"]  # it knows the latent intent: better than any model
    assert o["ece"] < 0.05                                      # and is calibrated on the scoring points
    # the run keeps the oracle beside every validation and test row: p_now of the row's own event
    from propensity.simulate import load_event_truth
    preds = read_table(f"{s['run_dir']}/predictions.parquet")
    assert set(preds["split"]) == {"val", "test"}
    p_now = load_event_truth(world).set_index("event_id")["p_now"]
    np.testing.assert_allclose(preds["p_true"], p_now.reindex(preds["point_id"]).to_numpy())
    # the study is stored: the same window resumes it instead of starting over
    study = optuna.load_study(study_name=s["study"], storage=f"sqlite:///{world / 'models' / 'optuna.db'}")
    assert len(study.trials) == 3


def test_relaxed_gates_register_promote_and_reproduce(world):
    s = train_pipeline(world, CFG, gates=dict(ece_max=1.0, segment_ece_max=1.0, pr_auc_tolerance=1.0))
    assert s["version"] and s["promoted"] and promoted(world / "registry") == s["version"]
    assert s["trials"] == 3                                     # the same window resumed the stored study
    model = load(world / "registry")
    assert model.version == s["version"]
    cal = json.loads(json.dumps(model.calibration))             # what the artifact stores is plain JSON
    enc = Encoder.from_dict(cal["encoder"])
    calibrator, adjuster = calibrator_from_dict(cal["calibrator"]), SegmentAdjuster.from_dict(cal["segments"])
    tr = read_table(world / "training" / "training_set").sort_values(["event_timestamp", "point_id"], kind="stable").reset_index(drop=True)
    test = tr[time_split(tr, CFG)["test"]].reset_index(drop=True)
    raw = model.booster.predict(enc.transform(test))
    p = adjuster.transform(calibrator.predict(raw), test[["device", "country", "traffic_source"]])
    from propensity.metrics import evaluate
    again = evaluate(test["label"].astype(int).to_numpy(), p)
    assert again["pr_auc"] == pytest.approx(s["metrics"]["pr_auc"], abs=1e-12)
    assert again["ece"] == pytest.approx(s["metrics"]["ece"], abs=1e-12)
    # the scorer's single-row path gives the same score as the batch path
    row = test.iloc[0].to_dict()
    one = adjuster.predict_one(calibrator.predict_one(float(model.booster.predict(np.array([enc.row(row)]))[0])),
                               {k: row[k] for k in ("device", "country", "traffic_source")})
    assert one == pytest.approx(p[0], abs=1e-9)
    assert s["bands"]["thresholds"]["high"] > s["bands"]["thresholds"]["medium"]




def test_the_pr_auc_gate_compares_both_models_on_the_same_rows(world):
    "The serving model is scored on the candidate's test rows (those after the last day it was fitted on), not judged by its own window's figure."
    from dataclasses import replace
    from propensity.drift import _model_inputs
    from propensity.metrics import evaluate
    from propensity.train import _segments
    inc = load(world / "registry")                              # promoted by the test above
    s = train_pipeline(world, CFG, promote=False, gates=dict(ece_max=1.0, segment_ece_max=1.0, pr_auc_tolerance=1.0))
    assert s["incumbent"] == inc.version and s["new_trials"] == 0  # the same split resumed its study
    tr = read_table(world / "training" / "training_set").sort_values(["event_timestamp", "point_id"], kind="stable").reset_index(drop=True)
    test = tr[time_split(tr, CFG)["test"]].reset_index(drop=True)
    y = test["label"].astype(int).to_numpy()
    _, cal, adj = _model_inputs(inc, test)
    want = evaluate(y, adj.transform(cal, _segments(test)))["pr_auc"]
    pr = next(c for c in s["gates"]["checks"] if c["gate"] == "pr_auc")
    assert f"incumbent {want:.4f} ({inc.version}, on the same {len(test):,} test rows)" in pr["detail"], pr
    # a longer test window reaches into the days the serving model was fitted on: both are judged on the later rows only
    cfg3 = replace(CFG, test_days=3)
    s3 = train_pipeline(world, cfg3, promote=False, gates=dict(ece_max=1.0, segment_ece_max=1.0, pr_auc_tolerance=1.0))
    pr3 = next(c for c in s3["gates"]["checks"] if c["gate"] == "pr_auc")
    last_seen = max(v[1] for k, v in inc.lineage["training_window"].items() if k != "test")
    assert f"test rows after {last_seen}, the last day {inc.version} was fitted on" in pr3["detail"], pr3
    test3 = tr[time_split(tr, cfg3)["test"]].reset_index(drop=True)
    assert s3["rows"]["test"] == len(test3) > len(test)


def test_a_damaged_serving_model_or_a_missing_quality_report_stop_training_before_the_search(world):
    model = world / "registry" / promoted(world / "registry") / "model.txt"
    good = model.read_bytes()
    model.write_bytes(good + b"x")
    try:
        with pytest.raises(ValueError, match="the serving model cannot be checked.*model.txt was changed after registration"):
            train_pipeline(world, CFG)
    finally:
        model.write_bytes(good)
    q = world / "quality" / "quality.json"
    q.rename(q.with_suffix(".away"))
    try:
        with pytest.raises(FileNotFoundError, match="no data-quality report"):
            train_pipeline(world, CFG)
    finally:
        q.with_suffix(".away").rename(q)
