"""The model registry on real files: a real LightGBM booster registered, verified, loaded, promoted and gated,
concurrent writers in separate processes, and score bands proposed from synthetic calibrated scores."""
import json
import multiprocessing as mp
import subprocess
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from propensity.config import Settings
from propensity.features import FEATURES, MODEL_EXCLUDE, Feature, model_features, spec_hash
from propensity.registry import (BANDS, FILES, BandEconomics, IntegrityError, RegistryError, SpecMismatchError, band_of,
                                 evaluate_gates, list_versions, load, promote, promoted, propose_bands, register,
                                 register_if_passing, verify)

NAMES = [f.name for f in model_features()]


def _train(names, seed=0, rounds=20):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(3000, len(names)))
    y = (X[:, 0] - 0.5 * X[:, 3] + rng.normal(size=3000) > 0.8).astype(int)
    b = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 15, "num_threads": 1, "seed": seed},
                  lgb.Dataset(X, y, feature_name=names), rounds)
    return b, X


@pytest.fixture(scope="module")
def model():
    return _train(NAMES)


def artefacts(booster, **kw):
    a = dict(booster_text=booster.model_to_string(), calibration={"method": "isotonic", "x": [0.0, 0.5, 1.0], "y": [0.0, 0.4, 1.0]},
             feature_names=NAMES, spec_hash=spec_hash(), training_window={"start": "2024-03-01", "end": "2024-03-28"},
             metrics={"pr_auc": 0.42, "ece": 0.004, "segments": []}, gates={"passed": True},
             bands={"thresholds": {"high": 0.8, "medium": 0.12, "low": 0.0}},
             lineage={"data_range": {"from": "2024-03-01", "to": "2024-03-28"}}, params={"num_leaves": 15, "rounds": 20})
    return {**a, **kw}


def test_register_then_load_round_trip_predicts_identically(tmp_path, model):
    booster, X = model
    v = register(tmp_path / "registry", **artefacts(booster))
    assert v == "v0001"
    d = tmp_path / "registry" / v
    assert sorted(p.name for p in d.iterdir()) == sorted([*FILES, "manifest.json"])
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["version"] == v and manifest["created_at"].endswith("Z")
    assert manifest["files"]["model.txt"] == __import__("hashlib").sha256((d / "model.txt").read_bytes()).hexdigest()

    m = load(tmp_path / "registry", v)
    np.testing.assert_array_equal(m.booster.predict(X), booster.predict(X))  # bit-identical, not merely close
    assert m.booster.predict(X).std() > 0.05                                  # ... and not a constant model
    assert (m.version, m.feature_names, m.spec_hash) == (v, NAMES, spec_hash())
    assert m.calibration == {"method": "isotonic", "x": [0.0, 0.5, 1.0], "y": [0.0, 0.4, 1.0]}
    assert m.bands["thresholds"]["medium"] == 0.12 and m.metrics["pr_auc"] == 0.42 and m.params["rounds"] == 20
    assert m.lineage["training_window"] == {"start": "2024-03-01", "end": "2024-03-28"}
    assert m.lineage["data_range"]["to"] == "2024-03-28"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    assert m.lineage["code_commit"] == (head.stdout.strip() if head.returncode == 0 else "unknown")


def test_registry_lives_under_the_data_folder_of_the_settings(tmp_path, model):
    settings = Settings.from_env({"PROPENSITY_DATA": str(tmp_path / "data")})
    v = register(settings, **artefacts(model[0]))
    assert (tmp_path / "data" / "registry" / v / "model.txt").is_file()
    assert load(settings, v).version == v


def test_a_tampered_model_is_refused_naming_the_file_and_both_hashes(tmp_path, model):
    booster, X = model
    reg = tmp_path / "registry"
    v = register(reg, **artefacts(booster))
    recorded = json.loads((reg / v / "manifest.json").read_text())["files"]["model.txt"]
    # a still-valid model with one leaf value changed: only the checksum can tell
    text = (reg / v / "model.txt").read_text()
    i = text.index("leaf_value=") + len("leaf_value=")
    i += text[i] == "-"
    tampered = text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1:]
    assert not np.array_equal(lgb.Booster(model_str=tampered).predict(X[:200]), booster.predict(X[:200]))
    (reg / v / "model.txt").write_text(tampered)
    actual = __import__("hashlib").sha256(tampered.encode()).hexdigest()
    with pytest.raises(IntegrityError) as e:
        load(reg, v)
    msg = str(e.value)
    assert "v0001: model.txt was changed after registration" in msg and actual in msg and recorded in msg
    with pytest.raises(IntegrityError, match="model.txt was changed"):
        promote(reg, v)
    assert promoted(reg) is None
    (reg / v / "calibration.json").unlink()
    (reg / v / "model.txt").write_text(text)  # restored: now the missing calibration is the problem
    with pytest.raises(IntegrityError, match="v0001: calibration.json is missing"):
        verify(reg, v)


def test_a_model_from_another_feature_spec_is_refused_naming_the_features(tmp_path):
    old_spec = [f for f in FEATURES if f.name not in ("prod_margin", "user_tenure_days")] + \
               [Feature("sess_scroll_depth", "float64", "session", "removed since", 0.0)]
    old_names = [f.name for f in old_spec if f.name not in MODEL_EXCLUDE]
    booster, X = _train(old_names, rounds=5)
    reg = tmp_path / "registry"
    v = register(reg, **artefacts(booster, feature_names=old_names, spec_hash=spec_hash(old_spec), spec=old_spec))
    with pytest.raises(SpecMismatchError) as e:
        load(reg, v)
    msg = str(e.value)
    assert f"trained on feature spec {spec_hash(old_spec)}, the expected spec is {spec_hash()}" in msg
    assert "inputs only in the model: ['sess_scroll_depth']" in msg
    assert "only in the current spec: ['user_tenure_days', 'prod_margin']" in msg
    # the caller who knows the old spec can still load it
    m = load(reg, v, expected_spec_hash=spec_hash(old_spec))
    np.testing.assert_array_equal(m.booster.predict(X[:100]), booster.predict(X[:100]))
    # an explicit expectation that differs is refused too
    with pytest.raises(SpecMismatchError, match="the expected spec is 0000"):
        load(reg, v, expected_spec_hash="0000")


def test_promote_promoted_and_list_versions(tmp_path, model):
    booster, _ = model
    reg = tmp_path / "registry"
    assert promoted(reg) is None and list_versions(reg).empty
    v1 = register(reg, **artefacts(booster, metrics={"pr_auc": 0.40, "ece": 0.006, "segments": [], "n_test": 5000}))
    v2 = register(reg, **artefacts(booster, metrics={"pr_auc": 0.43, "ece": 0.005, "segments": [], "n_test": 5200}))
    v3 = register(reg, **artefacts(booster, gates={"passed": False, "summary": "FAILED 1 of 4 checks"}))
    assert (v1, v2, v3) == ("v0001", "v0002", "v0003")
    with pytest.raises(RegistryError, match="no version is promoted"):
        load(reg)

    assert promote(reg, v1)["previous"] is None
    rec = promote(reg, v2)
    assert promoted(reg) == v2 and rec["previous"] == v1
    assert json.loads((reg / "promoted.json").read_text())["version"] == v2
    assert load(reg).version == v2
    with pytest.raises(RegistryError, match=r"v0003: its gates did not pass \(FAILED 1 of 4 checks\)"):
        promote(reg, v3)
    assert promoted(reg) == v2
    with pytest.raises(RegistryError, match=r"version 'v0042' is not in .*registered: \['v0001', 'v0002', 'v0003'\]"):
        promote(reg, "v0042")
    assert [p.name for p in reg.iterdir() if p.name.startswith(".")] == []  # no temporary files left

    lv = list_versions(reg)
    assert list(lv["version"]) == [v1, v2, v3]
    assert list(lv["promoted"]) == [False, True, False]
    assert list(lv["gates_passed"]) == [True, True, False]
    assert list(lv["pr_auc"]) == [0.40, 0.43, 0.42] and list(lv["n_test"][:2]) == [5000, 5200]
    assert lv["created_at"].is_monotonic_increasing
    assert (lv["spec_hash"] == spec_hash()).all()

    assert promote(reg, v3, force=True)["previous"] == v2  # an explicit override is possible
    assert promoted(reg) == v3


def _register_in_another_process(barrier, queue, reg, art, times):
    barrier.wait()
    for _ in range(times):
        queue.put(register(reg, **art))


def test_concurrent_writers_get_distinct_versions(tmp_path, model):
    booster, X = model
    reg = tmp_path / "registry"
    art = artefacts(booster)
    ctx = mp.get_context("spawn")
    n, times = 4, 3
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_register_in_another_process, args=(barrier, queue, reg, art, times)) for _ in range(n)]
    for p in procs: p.start()
    got = [queue.get(timeout=60) for _ in range(n * times)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(got) == [f"v{i:04d}" for i in range(1, n * times + 1)]
    assert sorted(p.name for p in reg.iterdir()) == sorted(got)  # no temporary folder left behind
    for v in got:
        assert verify(reg, v)["version"] == v
    np.testing.assert_array_equal(load(reg, got[-1]).booster.predict(X[:50]), booster.predict(X[:50]))


def test_register_if_passing_keeps_the_incumbent_on_failure(tmp_path, model):
    booster, _ = model
    reg = tmp_path / "registry"
    art = {k: v for k, v in artefacts(booster).items() if k not in ("metrics", "gates")}
    segs = [{"column": "device", "value": "mobile", "n": 12000, "ece": 0.012},
            {"column": "country", "value": "LU", "n": 300, "ece": 0.09}]  # too small to judge
    v1, g1 = register_if_passing(reg, metrics={"pr_auc": 0.42, "ece": 0.006, "segments": segs}, data_checks_ok=True,
                                 promote_on_pass=True, **art)
    assert (v1, promoted(reg), g1.passed) == ("v0001", "v0001", True)
    assert g1.skipped == ({"column": "country", "value": "LU", "n": 300},)
    assert json.loads((reg / v1 / "gates.json").read_text())["passed"] is True

    worse = {"pr_auc": 0.395, "ece": 0.006, "segments": [{**segs[0], "ece": 0.026}, segs[1]]}
    v2, g2 = register_if_passing(reg, metrics=worse, data_checks_ok=True, promote_on_pass=True, **art)
    assert v2 is None and not g2.passed
    assert promoted(reg) == "v0001" and [p.name for p in reg.iterdir() if p.is_dir()] == ["v0001"]
    assert [c.gate for c in g2.failures] == ["pr_auc", "segment_ece"]
    pr, seg = g2.failures
    assert pr.measured == 0.395 and pr.threshold == pytest.approx(0.41) and pr.missed_by == pytest.approx(0.015)
    assert seg.detail == "device=mobile, n=12000" and seg.missed_by == pytest.approx(0.006)
    s = g2.summary()
    assert s.startswith("FAILED 2 of 4 checks")
    assert "pr_auc [incumbent 0.4200 (v0001, on its own test window) - tolerance 0.0100]: 0.3950, required >= 0.4100, missed by 0.0150" in s
    assert "segment_ece [device=mobile, n=12000]: 0.0260, required <= 0.0200, missed by 0.0060" in s
    d = g2.to_dict()
    assert d["passed"] is False and [f["gate"] for f in d["failures"]] == ["pr_auc", "segment_ece"]

    v3, g3 = register_if_passing(reg, metrics={"pr_auc": 0.43, "ece": 0.007, "segments": segs}, data_checks_ok=False,
                                 promote_on_pass=True, **art)
    assert v3 is None and [c.gate for c in g3.failures] == ["data_checks"] and promoted(reg) == "v0001"

    v4, g4 = register_if_passing(reg, metrics={"pr_auc": 0.415, "ece": 0.007, "segments": segs}, data_checks_ok=True, **art)
    assert (v4, g4.passed, promoted(reg)) == ("v0002", True, "v0001")  # registered within tolerance, not promoted
    assert load(reg, v4).gates["checks"][0]["threshold"] == pytest.approx(0.41)


def test_gates_refuse_malformed_metrics():
    with pytest.raises(ValueError, match="candidate_metrics: missing 'pr_auc'"):
        evaluate_gates({"ece": 0.0}, None, data_checks_ok=True)
    with pytest.raises(ValueError, match=r"segments\[0\]\['ece'\]=nan: expected a finite number"):
        evaluate_gates({"pr_auc": 0.5, "ece": 0.0, "segments": [{"column": "d", "value": "m", "n": 5000, "ece": float("nan")}]},
                       None, data_checks_ok=True)
    r = evaluate_gates({"pr_auc": 0.5, "ece": 0.011}, {"pr_auc": 0.5}, data_checks_ok=True, ece_max=0.01)
    assert [c.gate for c in r.failures] == ["ece"] and r.failures[0].missed_by == pytest.approx(0.001)


@pytest.fixture(scope="module")
def scored():
    rng = np.random.default_rng(11)
    p = rng.beta(0.8, 1.6, 30_000)
    return (rng.random(p.size) < p).astype(int), p


ECO = BandEconomics(aov=60.0, margin_rate=0.35, incentive_cost=1.0, incentive_uplift=0.5)


def test_bands_are_monotone_and_priced(scored):
    y, p = scored
    bands = propose_bands(y, p, economics=ECO)
    t = bands["thresholds"]
    assert t["high"] > t["medium"] > t["low"] == 0.0
    lo, hi = ECO.break_even()
    assert abs(t["medium"] - lo) < 0.03 and abs(t["high"] - hi) < 0.05  # calibrated scores: near the break-evens
    b = bands["bands"]
    assert sum(b[k]["n"] for k in BANDS) == len(p)
    assert b["high"]["conversion"] > b["medium"]["conversion"] > b["low"]["conversion"]
    assert b["high"]["lift"] > 1 > b["low"]["lift"]
    assert b["medium"]["ev_per_offer"] > 0 > max(b["high"]["ev_per_offer"], b["low"]["ev_per_offer"])
    assert [k for k in BANDS if b[k]["incentive"]] == ["medium"]
    # the proposal is what the registry stores
    json.dumps(bands, allow_nan=False)


def test_band_of_at_the_boundaries(scored):
    bands = propose_bands(*scored, economics=ECO)
    hi, med = bands["thresholds"]["high"], bands["thresholds"]["medium"]
    assert band_of(hi, bands) == "high" and band_of(np.nextafter(hi, 0), bands) == "medium"
    assert band_of(med, bands) == "medium" and band_of(np.nextafter(med, 0), bands) == "low"
    assert band_of(0.0, bands) == "low" and band_of(1.0, bands) == "high"
    assert band_of(np.array([[0.0, 1.0]]), bands).tolist() == [["low", "high"]]
    with pytest.raises(ValueError, match=r"p: 1 values outside \[0, 1\] \(first -0.1\)"):
        band_of(-0.1, bands)


def test_bands_follow_the_observed_conversion_not_the_raw_score(scored):
    y, p = scored
    t = propose_bands(y, p ** 0.5, economics=ECO)["thresholds"]  # scores that overstate the probability
    lo, hi = ECO.break_even()
    assert abs(t["medium"] - lo ** 0.5) < 0.04 and abs(t["high"] - hi ** 0.5) < 0.04


def test_band_economics_are_validated():
    with pytest.raises(ValueError, match=r"BandEconomics.incentive_uplift=0: expected a number > 0"):
        BandEconomics(aov=60.0, margin_rate=0.35, incentive_cost=1.0, incentive_uplift=0)
    never = BandEconomics(aov=20.0, margin_rate=0.2, incentive_cost=2.0, incentive_uplift=0.3)
    assert never.break_even() is None
    with pytest.raises(ValueError, match="never pays"):
        propose_bands(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.8]), economics=never)


def test_metrics_from_the_metrics_module_pass_through_gates_and_registry(tmp_path, model):
    "evaluate() + by_segment() output as training produces it: a segment without buyers has a NaN PR-AUC (stored as null)."
    import pandas as pd
    from propensity.metrics import by_segment, evaluate
    rng = np.random.default_rng(3)
    n = 12_000
    df = pd.DataFrame({"device": rng.choice(["mobile", "desktop"], n), "country": "DE", "traffic_source": "direct",
                       "score": rng.beta(1, 6, n)})
    df["label"] = (rng.random(n) < df["score"]).astype(int)
    df.loc[df.index[:50], ["country", "label"]] = ["LU", 0]  # a tiny segment without buyers
    metrics = {**evaluate(df["label"], df["score"]), "segments": by_segment(df, "score")}
    assert np.isnan(metrics["segments"].set_index("value").loc["LU", "pr_auc"])
    art = {k: v for k, v in artefacts(model[0]).items() if k not in ("metrics", "gates")}
    v, g = register_if_passing(tmp_path / "registry", metrics=metrics, data_checks_ok=True, ece_max=0.05,
                               segment_ece_max=0.05, **art)
    assert g.passed and v == "v0001", g.summary()
    assert {s["value"] for s in g.skipped} == {"LU"}
    assert sorted(c.detail.split(",")[0] for c in g.checks if c.gate == "segment_ece") == \
        ["country=DE", "device=desktop", "device=mobile", "traffic_source=direct"]
    stored = load(tmp_path / "registry", v).metrics
    lu = next(s for s in stored["segments"] if s["value"] == "LU")
    assert lu["pr_auc"] is None and lu["n"] == 50 and "country" in (lu.get("column"), lu.get("segment"))
    assert stored["pr_auc"] == pytest.approx(metrics["pr_auc"])
