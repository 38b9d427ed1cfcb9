"""The SageMaker `train` program end to end, as SageMaker would run it: a fake /opt/ml tree (relocated with
PROPENSITY_SM_ROOT), string hyperparameters, a CSV training channel; the model it writes scores held-out rows,
and bad input leaves the reason in output/failure with a non-zero exit."""
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from propensity.metrics import roc_auc
from propensity.tabular import MODEL_FILES, predict_table, synthetic_sessions

TRAIN = Path(__file__).resolve().parents[1] / "serving" / "sagemaker" / "train"


def _layout(root: Path, hyperparameters: dict, table: pd.DataFrame) -> Path:
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "data" / "training").mkdir(parents=True)
    (root / "model").mkdir()
    (root / "output").mkdir()
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    table.to_csv(root / "input" / "data" / "training" / "sessions.csv", index=False)
    return root


def _run(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROPENSITY_SM_ROOT": str(root)}
    return subprocess.run([sys.executable, str(TRAIN)], env=env, capture_output=True, text=True, timeout=120)


def test_program_is_an_executable_python_script():
    assert os.access(TRAIN, os.X_OK)
    assert TRAIN.read_text().splitlines()[0] == "#!/usr/bin/env python"


def test_trains_a_model_that_scores_held_out_rows(tmp_path):
    hp = {"label": "bought", "trials": "3", "timeout": "60", "seed": "7", "id_columns": "visitor"}
    train = synthetic_sessions(4000, seed=1).assign(visitor=lambda d: [f"v{i % 900}" for i in range(len(d))])
    root = _layout(tmp_path / "ml", hp, train)
    r = _run(root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (root / "output" / "failure").exists()
    assert sorted(p.name for p in (root / "model").iterdir()) == sorted(MODEL_FILES)
    manifest = json.loads((root / "model" / "manifest.json").read_text())
    assert manifest["label"] == "bought" and manifest["rows"] == 4000 and manifest["seed"] == 7
    assert manifest["search"]["trials_budget"] == 3 and manifest["search"]["timeout_s"] == 60.0
    assert manifest["dropped"] == {"session_id": "id-like: all 4000 values distinct", "visitor": "id column (given)"}
    assert "metric: calibration_roc_auc=" in r.stdout

    held_out = synthetic_sessions(3000, seed=2).drop(columns="bought").sample(frac=1.0, random_state=0)
    truth = synthetic_sessions(3000, seed=2).set_index("session_id").loc[held_out.session_id, "bought"].eq("yes").to_numpy()
    held_out.to_parquet(tmp_path / "held_out.parquet", index=False)
    out = predict_table(root / "model", tmp_path / "held_out.parquet", tmp_path / "scored.csv")
    scored = pd.read_csv(out)
    assert scored.session_id.tolist() == held_out.session_id.tolist()        # input order, shuffled input
    assert list(scored.columns) == list(held_out.columns) + ["score"]
    s = scored.score.to_numpy()
    assert np.isfinite(s).all() and (s >= 0).all() and (s <= 1).all() and s.std() > 0.01
    assert roc_auc(truth, s) > 0.72                                           # the truth's own ROC-AUC is about 0.8
    assert abs(s.mean() - truth.mean()) < 0.02                                # calibrated: the level is right


def test_bad_label_values_fail_with_the_reason(tmp_path):
    table = synthetic_sessions(300, seed=3).assign(outcome=["yes", "no", "maybe"] * 100).drop(columns="bought")
    root = _layout(tmp_path / "ml", {"label": "outcome", "trials": "2"}, table)
    r = _run(root)
    assert r.returncode != 0
    reason = (root / "output" / "failure").read_text()
    assert "label column 'outcome': 100 of 300 rows are not true/false, yes/no or 1/0" in reason and "'maybe'" in reason
    assert not any((root / "model").iterdir())
    assert "Traceback" in r.stderr
    # the same root run again, right: the earlier failure is gone; then wrong again: the model it wrote is gone too
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps({"label": "outcome", "trials": "2"}))
    table.assign(outcome=["yes", "no", "no"] * 100).to_csv(root / "input" / "data" / "training" / "sessions.csv", index=False)
    assert _run(root).returncode == 0 and not (root / "output" / "failure").exists() and any((root / "model").iterdir())
    table.to_csv(root / "input" / "data" / "training" / "sessions.csv", index=False)
    assert _run(root).returncode != 0 and not any((root / "model").iterdir())


def test_missing_label_column_fails_with_the_reason(tmp_path):
    root = _layout(tmp_path / "ml", {"label": '"purchased"'}, synthetic_sessions(300, seed=3))   # SDK-style JSON-encoded value
    r = _run(root)
    assert r.returncode != 0
    reason = (root / "output" / "failure").read_text()
    assert "label column 'purchased' not in the table" in reason and "'bought'" in reason


@pytest.fixture(scope="module")
def program():
    "The train program imported as a module (it has no .py suffix), for its hyperparameter parsing."
    loader = importlib.machinery.SourceFileLoader("sagemaker_train", str(TRAIN))
    mod = importlib.util.module_from_spec(importlib.util.spec_from_loader("sagemaker_train", loader))
    loader.exec_module(mod)
    return mod


def test_hyperparameters_are_strings_and_typos_are_refused(program):
    parse = program.parse_hyperparameters
    assert parse({"label": "bought", "trials": "5", "timeout": "30.5", "seed": "1", "id_columns": "a, b",
                  "sagemaker_job_name": "x"}) == dict(label="bought", trials=5, timeout_s=30.5, seed=1, id_columns=["a", "b"])
    assert parse({"label": '"bought"', "trials": "5", "id_columns": '"[\\"a\\", \\"b c\\"]"'}) == \
        dict(label="bought", trials=5, id_columns=["a", "b c"])                 # JSON-encoded by the SDK
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lable'\]"): parse({"lable": "bought"})
    with pytest.raises(ValueError, match="'label' .* is required"): parse({"trials": "3"})
    with pytest.raises(ValueError, match=r"trials='ten': expected a whole number"): parse({"label": "y", "trials": "ten"})
    with pytest.raises(ValueError, match=r"seed=-1: expected a whole number from 0 to 2,147,483,647"): parse({"label": "y", "seed": "-1"})
    with pytest.raises(ValueError, match=r"hyperparameter timeout=0: expected a number of seconds > 0"): parse({"label": "y", "timeout": "0"})
    with pytest.raises(ValueError, match=r"hyperparameter trials=0: expected a whole number of trials >= 1"): parse({"label": "y", "trials": "0"})


def test_missing_channel_fails_with_the_reason(tmp_path):
    root = tmp_path / "ml"
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "hyperparameters.json").write_text('{"label": "bought"}')
    (root / "input" / "data" / "train").mkdir(parents=True)                   # a channel by another name
    r = _run(root)
    assert r.returncode != 0
    assert "no 'training' channel (CSV or Parquet files expected); channels found: train" in (root / "output" / "failure").read_text()
