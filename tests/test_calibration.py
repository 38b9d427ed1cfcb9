"""Calibration end to end on 300,000 synthetic rows whose true probability is known: a kinked (non-logistic)
monotone distortion of the model's probability, desktop converting more than the model thinks (+0.8 on the
logit), three segment columns. Slices: 120K to fit the calibrators, 80K to choose one and fit the segment
adjuster, 100K fresh rows to measure. Then the same with negatives downsampled 1-in-5 and weighted 5."""
import json

import numpy as np
import pandas as pd
import pytest

from propensity.calibration import CalibratedModel, IsotonicCalibrator, synthetic_calibration_data
from propensity.metrics import SEGMENTS, brier, ece

SHIFTS = {"device": {"desktop": 0.8}}
SEED = 2024


@pytest.fixture(scope="module")
def slices():
    df = synthetic_calibration_data(300_000, seed=SEED, shifts=SHIFTS)
    return df.iloc[:120_000], df.iloc[120_000:200_000], df.iloc[200_000:].reset_index(drop=True)


@pytest.fixture(scope="module")
def model(slices):
    fit, ev, _ = slices
    return CalibratedModel.fit(fit.score, fit.label, ev.score, ev.label, ev)


def _downsample(d, rng):
    "Every positive, one negative in five (weight 5)."
    d = d[d.label.to_numpy() | (rng.random(len(d)) < 0.2)]
    return d, np.where(d.label, 1.0, 5.0)


@pytest.fixture(scope="module")
def weighted(slices):
    fit, ev, _ = slices
    rng = np.random.default_rng(SEED + 1)
    (fw, w_fit), (ew, w_ev) = _downsample(fit, rng), _downsample(ev, rng)
    assert len(fw) < 0.3 * len(fit)
    return (CalibratedModel.fit(fw.score, fw.label, ew.score, ew.label, ew, w_fit, w_ev),
            CalibratedModel.fit(fw.score, fw.label, ew.score, ew.label, ew))   # the same rows, weights ignored


def _segment_eces(test, p, min_rows=2000):
    "ECE of `p` in every (column, value) segment of `test` with at least `min_rows` rows."
    out = {}
    for col in SEGMENTS:
        for value, rows in test.groupby(col).indices.items():
            if len(rows) >= min_rows: out[(col, value)] = ece(test.label.to_numpy()[rows], p[rows])
    return out


def test_choice_and_adjustment(model):
    assert isinstance(model.calibrator, IsotonicCalibrator)          # the kink is beyond Platt's straight line
    cmp = model.comparison_
    assert cmp.loc["isotonic", "ece"] < cmp.loc["platt", "ece"] < cmp.loc["raw", "ece"]
    adj = model.adjuster
    assert {c: list(v) for c, v in adj.shifts_.items()} == {"device": ["desktop"], "country": [], "traffic_source": []}
    assert adj.shifts_["device"]["desktop"] == pytest.approx(0.8, abs=0.12)
    rep = adj.report().set_index(["column", "value"])
    assert rep.loc[("device", "desktop"), "after"] == pytest.approx(rep.loc[("device", "desktop"), "observed"], rel=1e-5)
    assert (rep.drop(index=("device", "desktop")).status == "calibrated").all()


def test_calibrated_overall_and_in_every_segment(slices, model):
    _, _, test = slices
    p = model.calibrate(test.score, test)
    assert ece(test.label, p) <= 0.01
    after = _segment_eces(test, p)
    assert len(after) == 12                                           # 3 devices, 5 countries, 4 sources, all >= 2000 rows
    assert max(after.values()) <= 0.02, after
    before = _segment_eces(test, model.calibrator.predict(test.score))   # the global calibrator alone is not enough
    assert before[("device", "desktop")] > 0.02 and max(before.values()) > 0.025
    assert ece(test.label, test.score) > 0.05                         # and the raw score is far off


def test_brier_close_to_the_oracle(slices, model):
    _, _, test = slices
    oracle = brier(test.label, test.p_true)
    assert brier(test.label, model.calibrate(test.score, test)) <= 1.05 * oracle
    assert brier(test.label, test.score) > 1.05 * oracle              # the bound does separate a bad score


def test_weighted_downsample_matches_full_data(slices, model, weighted):
    _, _, test = slices
    m_w, m_unweighted = weighted
    p_full, p_w = model.calibrate(test.score, test), m_w.calibrate(test.score, test)
    gap = np.abs(p_w - p_full)
    assert gap.mean() <= 0.004 and np.quantile(gap, 0.99) <= 0.05, (gap.mean(), np.quantile(gap, 0.99))
    assert abs(p_w.mean() / p_full.mean() - 1) <= 0.03
    for col in SEGMENTS:                                              # mean prediction of every segment within 5%
        m_full = pd.Series(p_full).groupby(test[col]).mean()
        m_wt = pd.Series(p_w).groupby(test[col]).mean()
        assert ((m_wt / m_full - 1).abs() <= 0.05).all(), col
    assert isinstance(m_w.calibrator, IsotonicCalibrator)
    assert {c: list(v) for c, v in m_w.adjuster.shifts_.items()} == {c: list(v) for c, v in model.adjuster.shifts_.items()}
    assert m_w.adjuster.shifts_["device"]["desktop"] == pytest.approx(model.adjuster.shifts_["device"]["desktop"], abs=0.1)
    assert ece(test.label, p_w) <= 0.01 and max(_segment_eces(test, p_w).values()) <= 0.02
    # without the weights the downsampled fit over-predicts about threefold: the weights are what makes it match
    assert m_unweighted.calibrate(test.score, test).mean() > 2 * p_full.mean()


def test_artifact_round_trip_and_single_rows(slices, model):
    _, _, test = slices
    back = CalibratedModel.from_dict(json.loads(json.dumps(model.to_dict(), allow_nan=False)))
    p = model.calibrate(test.score, test)
    np.testing.assert_array_equal(back.calibrate(test.score, test), p)
    head = test.head(500)
    one = [back.predict_one(s, r) for s, r in zip(head.score.tolist(), head[list(SEGMENTS)].to_dict("records"))]
    np.testing.assert_allclose(one, p[:500], rtol=1e-12, atol=1e-15)
