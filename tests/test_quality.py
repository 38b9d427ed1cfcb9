"""Data-quality checks end to end: three weeks of synthetic feature tables (about 60,000 rows) written as
Parquet partitions in the Spark layout, checked clean, with faults, and with drift."""
import json
import shutil
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from propensity.features import model_features
from propensity.quality import (TABLES, DataQualityError, QualityReport, check_tables, synthetic_frame, table_path,
                                write_partition)

DAYS = [(date(2024, 3, 4) + timedelta(days=i)).isoformat() for i in range(21)]  # 3 weeks, Monday 2024-03-04 on
PER_DAY = {"user_features": 800, "visitor_features": 500, "product_features": 300, "session_features": 600, "training_set": 1200}
MODEL = {f.name for f in model_features()}


def _write_world(root, days=DAYS, tables=PER_DAY):
    for i, day in enumerate(days):
        for j, name in enumerate(tables):
            write_partition(synthetic_frame(name, PER_DAY[name], day, seed=1000 * i + j), root, name, day)
    return root


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory):
    return _write_world(tmp_path_factory.mktemp("clean") / "data")


@pytest.fixture(scope="module")
def clean_report(clean_dir):
    return check_tables(clean_dir)


def _edit(root, name, day, fn):
    "Apply `fn` to the Parquet file of partition `day` of table `name`, as a bad Spark run would have written it."
    f = next((table_path(root, name) / f"dt={day}").glob("*.parquet"))
    fn(pd.read_parquet(f)).to_parquet(f, index=False)


def _put(column, rows, value):
    return lambda d: d.assign(**{column: d[column].where(~d.index.isin(rows), value)})


# (table, column, check) -> examples of the failing values the report must show
FAULTS = {
    ("user_features", "user_orders_lifetime", "range"): ["-7"],
    ("product_features", "prod_cart_to_purchase_7d", "range"): ["1.3"],
    ("product_features", "prod_category_l1", "non_empty"): ["''"],
    ("training_set", "sess_hour", "range"): ["24"],
    ("training_set", "user_aov", "not_null"): ["null"],
    ("session_features", "sess_cart_items", "dtype"): [f"string in dt={DAYS[15]}"],
    ("product_features", "prod_price", "dtype"): [f"float32 in dt={DAYS[3]}"],  # pandas' concat alone would hide it
    ("training_set", "sess_cart_value", "psi"): [],
}


@pytest.fixture(scope="module")
def faulty(clean_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("faulty") / "data"
    shutil.copytree(clean_dir, root)
    _edit(root, "user_features", DAYS[5], _put("user_orders_lifetime", [11], -7))
    _edit(root, "product_features", DAYS[9], _put("prod_cart_to_purchase_7d", [2, 3], 1.3))
    _edit(root, "product_features", DAYS[1], _put("prod_category_l1", [0], ""))
    _edit(root, "training_set", DAYS[12], lambda d: _put("user_aov", [8], None)(_put("sess_hour", [4], 24)(d)))
    _edit(root, "session_features", DAYS[15], lambda d: d.assign(sess_cart_items=d.sess_cart_items.astype(str)))
    _edit(root, "product_features", DAYS[3], lambda d: d.assign(prod_price=d.prod_price.astype("float32")))
    for day in DAYS[14:]:  # the latest week: carts three times as valuable
        _edit(root, "training_set", day, lambda d: d.assign(sess_cart_value=d.sess_cart_value * 3))
    return root, check_tables(root)


def test_clean_tables_pass_with_psi_below_warn(clean_report):
    rep = clean_report
    assert rep.ok, rep.summary()
    assert rep.failures == [] and rep.warnings == [], rep.summary()
    assert {r["table"]: r["value"] for r in rep.rows if r["check"] == "rows"} == {n: 21 * k for n, k in PER_DAY.items()}
    for name, t in TABLES.items():
        psi = {r["column"]: r["value"] for r in rep.rows if r["table"] == name and r["check"] == "psi"}
        assert set(psi) == {f.name for f in t.features} & MODEL  # every model feature of the table, clocks excluded
        assert max(psi.values()) < 0.1, (name, max(psi.items(), key=lambda kv: kv[1]))
    window = {r["table"]: r["detail"] for r in rep.rows if r["check"] == "psi_window"}
    assert window["training_set"].startswith("latest week 2024-03-18..2024-03-24 against 2024-03-11..2024-03-17 (8400 vs 8400 rows)")
    assert window["user_features"].startswith("latest week 2024-03-19..2024-03-25 against 2024-03-12..2024-03-18 (5600 vs 5600 rows)")
    nulls = {r["column"]: r for r in rep.rows if r["table"] == "training_set" and r["check"] == "null_share"}
    assert 0.1 < nulls["user_id"]["value"] < 0.3 and nulls["user_id"]["status"] == "ok"  # nullable by design
    assert nulls["user_aov"]["value"] == 0
    rep.raise_for_failures()  # nothing failed: no exception


def test_each_fault_is_one_failure_naming_table_column_and_values(faulty):
    _, rep = faulty
    got = {(r["table"], r["column"], r["check"]): r for r in rep.failures}
    assert set(got) == set(FAULTS), rep.summary()
    for key, examples in FAULTS.items():
        if examples: assert got[key]["examples"] == examples, got[key]
    assert got["product_features", "prod_cart_to_purchase_7d", "range"]["value"] == 2  # two rows, one example value
    assert got["training_set", "sess_hour", "range"]["threshold"] == "[0, 23]"
    assert f"point_id=pt{DAYS[12].replace('-', '')}-000004" in got["training_set", "sess_hour", "range"]["detail"]
    with pytest.raises(DataQualityError) as e:
        rep.raise_for_failures()
    msg = str(e.value)
    assert msg.startswith(f"{len(FAULTS)} data-quality check(s) failed")
    for line in ("user_features.user_orders_lifetime: range (>= 0); values: -7",
                 "product_features.prod_cart_to_purchase_7d: range ([0, 1]); values: 1.3",
                 "product_features.prod_category_l1: non_empty (non-empty string); values: ''",
                 "training_set.sess_hour: range ([0, 23]); values: 24",
                 "training_set.user_aov: not_null (no nulls); values: null",
                 f"session_features.sess_cart_items: dtype: expected int64, found string in dt={DAYS[15]}",
                 f"product_features.prod_price: dtype: expected float64, found float32 in dt={DAYS[3]}",
                 "training_set.sess_cart_value: psi (warn 0.1, fail 0.25) = "):
        assert line in msg, (line, msg)


def _psi_by_hand(ref, cur, eps=1e-4):
    "PSI with pandas' cut over 10 quantile bins of `ref` (another code path than the library's)."
    edges = np.unique(np.quantile(ref, np.linspace(0.1, 0.9, 9)))
    cut = lambda x: pd.Series(pd.cut(x, [-np.inf, *edges, np.inf], right=True)).value_counts(normalize=True, sort=False).to_numpy()
    p, q = cut(ref), cut(cur)
    p, q = np.where(p == 0, eps, p), np.where(q == 0, eps, q)
    return float(np.sum((q - p) * np.log(q / p)))


def test_shifted_feature_fails_psi_with_the_hand_computed_value(faulty):
    root, rep = faulty
    psi = {r["column"]: r for r in rep.rows if r["table"] == "training_set" and r["check"] == "psi"}
    week = lambda days: pd.concat([pd.read_parquet(next((table_path(root, "training_set") / f"dt={d}").glob("*.parquet")))
                                   for d in days])
    before, latest = week(DAYS[7:14]), week(DAYS[14:21])
    expected = _psi_by_hand(before.sess_cart_value.to_numpy(), latest.sess_cart_value.to_numpy())
    assert expected > 0.25
    assert psi["sess_cart_value"]["value"] == pytest.approx(expected, rel=1e-4)
    numeric = [f.name for f in model_features() if f.dtype in ("int64", "float64")]
    for c in numeric:  # counts too: quantile edges fall on their values, so the side of each bin matters
        x, y = before[c].dropna().to_numpy("float64"), latest[c].dropna().to_numpy("float64")
        assert psi[c]["value"] == pytest.approx(_psi_by_hand(x, y), rel=1e-4, abs=1e-6), c
    assert psi["sess_cart_value"]["status"] == "fail"
    others = {k: r["value"] for k, r in psi.items() if k != "sess_cart_value"}
    assert max(others.values()) < 0.1, max(others.items(), key=lambda kv: kv[1])
    # thresholds are settings: the same shift only warns when the fail threshold is above it
    lenient = check_tables(root, tables=["training_set"], psi_fail=expected + 1)
    assert [(r["column"], r["status"]) for r in lenient.rows if r["check"] == "psi" and r["status"] != "ok"] \
        == [("sess_cart_value", "warn")]


def test_report_json_and_markdown_written_and_parsed_back(faulty, tmp_path):
    _, rep = faulty
    out = rep.write(tmp_path / "quality")
    data = json.loads(out["json"].read_text())
    assert data["ok"] is False and data["counts"] == rep.counts() and data["counts"]["fail"] == len(FAULTS)
    assert len(data["rows"]) == len(rep.rows)
    assert {(r["table"], r["column"], r["check"]) for r in data["rows"] if r["status"] == "fail"} == set(FAULTS)
    assert data["settings"]["psi_fail"] == 0.25
    md = out["md"].read_text()
    assert f"**Status: FAILED** ({len(FAULTS)} fail, " in md
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()
             if line.startswith("| ") and not line.startswith("| table ")]
    assert {(c[0], c[1], c[2]) for c in cells if c[3] == "fail"} == set(FAULTS)
    row = next(c for c in cells if c[1] == "user_orders_lifetime")
    assert row[4:7] == ["1", ">= 0", "-7"]
    back = QualityReport.from_json(out["json"])
    assert back.to_frame().astype(str).equals(rep.to_frame().astype(str))
    assert not back.ok and len(back.failures) == len(FAULTS)


def test_raise_for_failures_only_when_a_check_fails(clean_dir, faulty):
    warn_only = check_tables(clean_dir, tables=["training_set"], psi_warn=1e-9, psi_fail=10.0)
    assert len(warn_only.warnings) == len(MODEL) and warn_only.failures == []
    assert warn_only.raise_for_failures() is warn_only
    with pytest.raises(DataQualityError, match="training_set.user_aov"):
        faulty[1].raise_for_failures()
    one_fail = QualityReport(warn_only.rows[:1] + [dict(warn_only.rows[0], status="fail")])
    with pytest.raises(DataQualityError, match="1 data-quality check"):
        one_fail.raise_for_failures()


def test_short_history_skips_psi_and_missing_tables_are_reported(tmp_path):
    root = _write_world(tmp_path / "data", DAYS[:10], ["session_features"])
    (table_path(root, "session_features") / f"dt={DAYS[0]}" / "part-00000.parquet").rename(
        table_path(root, "session_features") / f"dt={DAYS[0]}" / "part-00000.parquet.tmp")  # a stray non-Parquet file
    rep = check_tables(root)
    assert rep.ok, rep.summary()
    assert not [r for r in rep.rows if r["check"] == "psi"]
    assert "less than two weeks of data (9 days of event_timestamp, 2024-03-05..2024-03-13); PSI skipped" in rep.summary()
    assert {r["table"]: r["status"] for r in rep.rows if r["check"] == "exists"} == \
        {"user_features": "warn", "visitor_features": "warn", "product_features": "warn", "training_set": "warn"}
    strict = check_tables(root, required=["training_set"])
    with pytest.raises(DataQualityError, match=r"training_set: exists; not found: .*training/training_set"):
        strict.raise_for_failures()
    assert not check_tables(tmp_path / "nothing").ok


def test_drift_of_a_window_still_filling_is_a_warning_not_a_stop(clean_dir, tmp_path):
    """Three weeks of data give 7 days of history before the compared weeks: a 30-day window feature that triples
    is expected drift (warn, with the reason); a feature without a window that triples still fails."""
    root = tmp_path / "data"
    shutil.copytree(clean_dir, root)
    for day in DAYS[14:]:
        _edit(root, "product_features", day, lambda d: d.assign(prod_views_30d=d.prod_views_30d * 3 + 5,
                                                                prod_price=d.prod_price * 3))
    report = check_tables(root)
    rows = {(r["table"], r["column"], r["check"]): r for r in report.rows}
    window = rows[("product_features", "prod_views_30d", "psi")]
    assert window["status"] == "warn" and window["value"] >= 0.25 and "30-day window is not full yet" in window["detail"]
    assert rows[("product_features", "prod_price", "psi")]["status"] == "fail"
    assert not report.ok
