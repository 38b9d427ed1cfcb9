"""The simulated marketplace's must-shows, on a 7-day small world written to disk."""
import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score

from propensity.contracts import EVENT, read_jsonl, read_table
from propensity.simulate import PROFILES, SEGMENTS, Drift, load_truth, simulate


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    summary = simulate("small", 7, 42, out, progress=False)
    return out, summary, load_truth(out)


def test_conversion_among_eligible_is_3_to_6_percent(world):
    _, s, truth = world
    e = truth[truth.eligible]
    assert 0.03 <= e.label.mean() <= 0.06, e.label.mean()
    assert s["conversion_eligible"] == pytest.approx(e.label.mean(), abs=1e-5)
    assert s["orders"] == int(e.label.sum())


def test_bot_and_bounce_shares_near_settings(world):
    _, _, truth = world
    p = PROFILES["small"]
    shares = truth.kind.value_counts(normalize=True)
    assert shares["bot"] == pytest.approx(p.bot_share, abs=0.005)
    assert shares["bounce"] == pytest.approx(p.bounce_share, abs=0.01)


@pytest.mark.parametrize("segment", SEGMENTS)
def test_conversion_differs_by_segment(world, segment):
    _, _, truth = world
    e = truth[truth.eligible]
    table = pd.crosstab(e[segment], e.label)
    assert len(table) >= 3
    _, pvalue, _, _ = chi2_contingency(table)
    assert pvalue < 1e-3, f"{segment}: conversion does not differ (p={pvalue:.3g})\n{table}"


def _aggregates_at_nth_product_view(events: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    "Counts and timing of each session's events strictly before its n-th product view (a scoring point)."
    ev = events.sort_values(["session_id", "event_time"], kind="stable")
    rank = (ev.event_type == "product_view").groupby(ev.session_id).cumsum()
    point = ev[(ev.event_type == "product_view") & (rank == n)].groupby("session_id").event_time.first()
    before = ev.merge(point.rename("t_point"), left_on="session_id", right_index=True)
    before = before[before.event_time < before.t_point]
    f = pd.crosstab(before.session_id, before.event_type)
    g = before.groupby("session_id").agg(t0=("event_time", "min"), products=("product_id", "nunique"),
                                         logged_in=("user_id", lambda x: float(x.notna().any())),
                                         device=("device", "first"), country=("country", "first"),
                                         source=("traffic_source", "first"))
    f = f.join(g)
    f["elapsed_s"] = (point.reindex(f.index) - f.pop("t0")) / 1000
    return pd.get_dummies(f, columns=["device", "country", "source"], dtype=float)


def test_signal_is_learnable_but_the_oracle_is_better(world):
    out, _, truth = world
    events = read_table(out / "tables" / "events", EVENT)
    X = _aggregates_at_nth_product_view(events)
    t = truth.set_index("session_id").loc[X.index]
    keep = t.eligible.to_numpy()
    X, t = X[keep], t[keep]
    day = (t.start_time - t.start_time.min()) // 86_400_000
    train, test = (day < 5).to_numpy(), (day >= 5).to_numpy()
    model = LogisticRegression(max_iter=3000).fit(X[train], t.label[train])
    p = model.predict_proba(X[test])[:, 1]
    y = t.label[test]
    assert y.sum() > 100
    auc = roc_auc_score(y, p)
    assert auc > 0.65, auc                     # learnable from what is observable
    assert auc < roc_auc_score(y, t.p_true[test])  # ... but not trivially
    assert brier_score_loss(y, t.p_true[test]) < brier_score_loss(y, p)


def test_landing_zone_reconciles_with_delivery_truth(world):
    out, s, _ = world
    v = read_jsonl(out / "events")
    events = read_table(out / "tables" / "events", EVENT)
    delivery = read_table(out / "truth" / "delivery")
    kinds = delivery.kind.value_counts()
    assert v.n_rejected == kinds["malformed"] > 0            # every malformed record, and only those, rejected
    assert v.n_valid == len(events) + kinds["duplicate"]     # duplicates are delivered twice
    assert set(v.valid.event_id) == set(events.event_id)     # nothing lost
    dup_ids = v.valid.event_id[v.valid.event_id.duplicated()]
    assert set(dup_ids) == set(delivery.event_id[delivery.kind == "duplicate"])
    assert s["landing_records"] == v.n_valid + v.n_rejected
    assert kinds["late"] / len(events) == pytest.approx(PROFILES["small"].late_share, rel=0.15)


def test_late_events_arrive_out_of_order_and_spill_into_the_next_day(world):
    out, _, _ = world
    f = sorted((out / "events").glob("dt=*/part-*.jsonl"))[30]
    v = read_jsonl(f)
    assert (np.diff(v.valid.event_time.to_numpy()) < 0).any()
    last_day = sorted(p.name for p in (out / "events").iterdir())[-1]
    assert last_day > sorted(p.name for p in (out / "tables" / "events").iterdir())[-2]
    # events landed on a later day than they happened
    arrived = read_jsonl(out / "events" / "dt=2024-03-05").valid
    assert (arrived.event_time < pd.Timestamp("2024-03-05", tz="UTC").value // 1_000_000).sum() > 0


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = _digest(Path(simulate("small", 2, 11, tmp_path / "a", progress=False)["out"]))
    b = _digest(Path(simulate("small", 2, 11, tmp_path / "b", progress=False)["out"]))
    c = _digest(Path(simulate("small", 2, 12, tmp_path / "c", progress=False)["out"]))
    assert len(a) > 50 and a == b
    assert a["world.json"] != c["world.json"]
    assert a["tables/orders.parquet"] != c["tables/orders.parquet"]


def test_rerun_replaces_outputs_and_keeps_other_files(tmp_path):
    out = tmp_path / "w"
    simulate("small", 2, 1, out, progress=False)
    (out / "notes.txt").write_text("mine")
    simulate("small", 1, 1, out, progress=False)
    assert (out / "notes.txt").read_text() == "mine"
    assert len(list((out / "truth" / "sessions").iterdir())) == 1


def test_rerun_removes_what_was_built_from_the_old_world(tmp_path, capsys):
    out = tmp_path / "w"
    simulate("small", 1, 1, out, progress=False)
    for d in ("offline/sessions", "registry/v0001", "models/runs", "streaming/checkpoint"): (out / d).mkdir(parents=True)
    capsys.readouterr()
    simulate("small", 1, 2, out, progress=False)
    assert not any((out / d).exists() for d in ("offline", "registry", "models", "streaming"))  # stale: gone
    assert "removed what was built from the old one: offline, models, registry, streaming" in capsys.readouterr().out  # said, even quiet
    assert (out / "world.json").exists()


def test_bad_arguments_leave_the_old_world_whole(tmp_path):
    out = tmp_path / "w"
    simulate("small", 1, 1, out, progress=False)
    (out / "registry").mkdir()
    before = _digest(out)
    for kw, says in ((dict(seed=-1), "seed=-1: expected a whole number from 0 to 2,147,483,647"),
                     (dict(seed=10**10), "seed=10000000000: expected a whole number from 0 to 2,147,483,647"),
                     (dict(drift=Drift(day=3)), "drift day=3: expected a day of the simulated range 0..1")):
        with pytest.raises(ValueError, match=re.escape(says)):
            simulate("small", 2, kw.get("seed", 1), out, drift=kw.get("drift"), progress=False)
    assert _digest(out) == before and (out / "registry").exists()
    for kw, says in ((dict(shift=float("nan")), "drift shift=nan: expected a finite number"),
                     (dict(value="toaster"), "drift value='toaster': expected a device of the simulator: mobile, desktop, tablet"),
                     (dict(column="country", value="XX"), "drift value='XX': expected a country"), (dict(day=-1), "drift day=-1")):
        with pytest.raises(ValueError, match=re.escape(says)):
            Drift(**{"day": 0, **kw})


def test_a_failure_part_way_leaves_the_old_world_whole(tmp_path, monkeypatch):
    "The new world is written beside the old one and swapped in whole: an interrupt on day 2 changes nothing."
    import propensity.simulate as sim
    out = tmp_path / "w"
    simulate("small", 1, 1, out, progress=False)
    (out / "registry").mkdir()
    before = _digest(out)
    real = sim.simulate_day
    def interrupted(world, day):
        if day == 1: raise KeyboardInterrupt
        return real(world, day)
    monkeypatch.setattr(sim, "simulate_day", interrupted)
    with pytest.raises(KeyboardInterrupt):
        simulate("small", 2, 5, out, progress=False)
    assert _digest(out) == before and (out / "registry").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # nothing of the failed run is left beside it
    monkeypatch.setattr(sim, "simulate_day", real)
    assert simulate("small", 1, 5, out, progress=False)["out"] == str(out) and _digest(out) != before


def test_refuses_to_replace_folders_of_something_else(tmp_path):
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "precious.parquet").write_text("not mine to delete")
    with pytest.raises(FileExistsError, match="no world.json: not a simulated world"):
        simulate("small", 1, 1, tmp_path, progress=False)
    assert (tmp_path / "tables" / "precious.parquet").exists()


def test_no_session_pauses_past_the_inactivity_rule(world):
    "A simulated session is one session under the batch job's 30-minute rule: no gap between its events reaches it."
    out, _, truth = world
    ev = read_table(out / "tables" / "events")[["session_id", "event_time"]].sort_values(["session_id", "event_time"])
    gap = ev.groupby("session_id").event_time.diff().max()
    assert gap < 30 * 60_000, gap
    assert ev.session_id.nunique() == len(truth)
