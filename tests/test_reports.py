"""The two stakeholder reports, rendered for a real training run on a short simulated world (through the real
batch job and training pipeline, trained twice so the second run has a serving model to be compared with), then
read back as HTML: every figure (an embedded PNG with its title as alt text, followed by its caption), every table,
no code, no errors, and an index linking the run's reports."""
import base64
import json
import shutil

import pytest

from conftest import copy_world
from bs4 import BeautifulSoup

from propensity.reports import ReportError, find_run, render_reports, run_date_of, write_index
from propensity.train import TrainConfig, train_pipeline

CFG = TrainConfig(val_days=2, test_days=2, n_trials=2, timeout_s=60, max_rounds=200, early_stopping=20)
GATES = dict(ece_max=1.0, segment_ece_max=1.0, pr_auc_tolerance=1.0)

WEEKLY_FIGURES = [
    "Hyper-parameter search: validation PR-AUC of each trial",
    "How well the scores rank buyers above non-buyers (test week)",
    "Which inputs the model relies on most (top 20 by gain)",
    "How each input pushes individual predictions up or down (top 20 inputs,",   # ... N test rows)
]
WEEKLY_TABLES = [
    "Rows per split: scored moments, buyers and purchase rate",
    "Headline measures on the test week",
    "Precision, recall and lift among the top-scored moments (test week)",
    "This run vs the serving model v0001",                                       # ... (its test week ...)
    "Gate checks",
]
WEEKLY_SECTIONS = ["1. Data", "2. Hyper-parameter search", "3. Ranking quality", "4. What drives the predictions",
                   "5. Compared with the serving model", "6. Promotion gates"]
CALIBRATION_FIGURES = [
    "Predicted vs observed purchase rate, all test rows",
    "Calibration by device: predicted vs observed purchase rate (test rows)",
    "Calibration by country: predicted vs observed purchase rate (test rows)",
    "Calibration by traffic source: predicted vs observed purchase rate (test rows)",
    "Where the test week's scores fall in the score bands",
]
CALIBRATION_TABLES = [
    "Calibration error and Brier score, before and after calibration",
    "Calibration by segment (test week)",
    "Calibrator choice (held-out half of the validation week)",
    "Segment adjustments (validation week)",
    "Band thresholds",
    "Per-band statistics on the validation week (where the thresholds were set)",
    "The same bands on the test week",
]
CALIBRATION_SECTIONS = ["1. Overall calibration", "2. Calibration by segment", "3. How the probabilities were calibrated",
                        "4. Score bands"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, short_world):
    out = copy_world(short_world, tmp_path_factory.mktemp("reports") / "w")
    first = train_pipeline(out, CFG, gates=GATES)
    second = train_pipeline(out, CFG, gates=GATES)          # resumes the stored search: fast
    assert (first["version"], second["version"]) == ("v0001", "v0002") and second["promoted"]
    return out


@pytest.fixture(scope="module")
def rendered(world, tmp_path_factory):
    out_root = tmp_path_factory.mktemp("rendered") / "runs"
    return out_root, render_reports(world, out_root=out_root, progress=False)


def _soup(path):
    return BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def _check_page(path, figures, tables, sections):
    soup = _soup(path)
    # no code, no prompts, no errors or warnings
    assert not soup.select("div.input, div.input_area, div.prompt, div.output_error, div.output_stderr")
    text = soup.get_text(" ")
    for needle in ("Traceback", "Error:", "load_run(", "import warnings", "R.show_figure", "display("):
        assert needle not in text, needle
    assert "https://" not in "".join(str(s) for s in soup.find_all("script", src=True))
    # sections
    heads = [h.get_text(strip=True).rstrip("¶") for h in soup.find_all("h2")]
    assert heads == sections
    # figures: embedded PNGs in order, alt = the figure's title, each followed by its "Figure N." caption
    imgs = soup.find_all("img")
    assert len(imgs) == len(figures)
    for img, want in zip(imgs, figures):
        assert img["alt"].startswith(want), (img["alt"], want)
        src = img["src"]
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    cells = soup.select("div.cell")
    with_img = [i for i, c in enumerate(cells) if c.find("img")]
    assert len(with_img) == len(figures)
    for n, i in enumerate(with_img, 1):
        nxt = cells[i + 1]
        assert "text_cell" in nxt["class"] and nxt.get_text(" ", strip=True).startswith(f"Figure {n}."), nxt.get_text()[:80]
    # tables: each caption once, in order, each with data rows
    caps = [t.caption.get_text(strip=True) for t in soup.find_all("table") if t.caption]
    assert len(caps) == len(tables)
    for cap, want in zip(caps, tables):
        assert cap.startswith(want), (cap, want)
    for t in soup.find_all("table"):
        assert len(t.find("tbody").find_all("tr")) >= 1
    return soup


def test_both_reports_render_with_every_figure_and_table(world, rendered):
    out_root, paths = rendered
    run = find_run(world)
    day = run_date_of(run)
    assert paths["dir"] == out_root / day
    for name in ("weekly_training", "calibration_segments"):
        assert paths[name] == out_root / day / f"{name}.html" and paths[name].stat().st_size > 50_000
        assert paths["notebooks"][name].is_file()
    weekly = _check_page(paths["weekly_training"], WEEKLY_FIGURES, WEEKLY_TABLES, WEEKLY_SECTIONS)
    calib = _check_page(paths["calibration_segments"], CALIBRATION_FIGURES, CALIBRATION_TABLES, CALIBRATION_SECTIONS)
    # the pages are about this run
    for soup in (weekly, calib):
        assert run.name in soup.get_text()
    assert "registered as v0002 and promoted" in " ".join(weekly.get_text(" ").split())
    # the comparison is with the version this run replaced, and the gate table lists every check
    comparison = next(t for t in weekly.find_all("table") if t.caption and t.caption.get_text().startswith("This run vs"))
    assert [th.get_text(strip=True) for th in comparison.find("thead").find_all("th")] == \
        ["Measure", "Serving model v0001", "This run", "Change"]
    summary = json.loads((run / "summary.json").read_text())
    gates = next(t for t in weekly.find_all("table") if t.caption and t.caption.get_text() == "Gate checks")
    assert len(gates.find("tbody").find_all("tr")) == len(summary["gates"]["checks"])
    # the segment table has one row per segment value of the test week
    seg = next(t for t in calib.find_all("table") if t.caption and t.caption.get_text().startswith("Calibration by segment"))
    assert len(seg.find("tbody").find_all("tr")) == len(summary["metrics"]["segments"])
    meta = json.loads((paths["dir"] / "report.json").read_text())
    assert meta["run"] == run.name and meta["version"] == "v0002" and meta["gates_passed"] is True


def test_index_links_the_runs_reports_newest_first(rendered):
    out_root, paths = rendered
    day = paths["dir"].name
    older = out_root / "2000-01-01"                      # an earlier rendering, copied by hand
    shutil.copytree(paths["dir"], older)
    (older / "calibration_segments.html").unlink()
    index = write_index(out_root)
    assert index == paths["index"] == out_root / "index.html"
    soup = _soup(index)
    rows = soup.find("tbody").find_all("tr")
    assert [r.find("td").get_text() for r in rows] == [day, "2000-01-01"]
    links = [a["href"] for a in rows[0].find_all("a")]
    assert links == [f"{day}/weekly_training.html", f"{day}/calibration_segments.html"]
    assert all((out_root / h).is_file() for h in links)
    assert [a["href"] for a in rows[1].find_all("a")] == ["2000-01-01/weekly_training.html"]
    assert "v0002" in rows[0].get_text() and "passed" in rows[0].get_text()


def test_a_failing_report_names_the_cell_and_keeps_a_debuggable_page(world, tmp_path):
    run = find_run(world)
    broken = tmp_path / "broken-run"
    shutil.copytree(run, broken)
    s = json.loads((broken / "summary.json").read_text())
    del s["bands"]                                       # the calibration report cannot show bands without them
    (broken / "summary.json").write_text(json.dumps(s))
    earlier = tmp_path / "out" / "2024-03-12"                     # this run's reports from an earlier rendering
    earlier.mkdir(parents=True)
    (earlier / "weekly_training.html").write_text("<p>earlier</p>")
    (earlier / "report.json").write_text(json.dumps({"run_dir": str(broken.resolve())}))
    with pytest.raises(ReportError, match="calibration_segments.ipynb: cell .* KeyError") as e:
        render_reports(world, run_dir=broken, out_root=tmp_path / "out", run_date="2024-03-12", progress=False)
    failed = tmp_path / "out" / ".2024-03-12.failed" / "calibration_segments-failed.html"
    assert str(failed) in str(e.value) and "Traceback" not in str(e.value)
    assert f"{earlier} keeps its earlier reports" in str(e.value)
    page = _soup(failed).get_text(" ")
    assert "KeyError" in page and "band_threshold_table" in page           # the error, beside the code that raised it
    assert (failed.parent / "weekly_training.html").is_file()              # the first report rendered fine
    assert sorted(p.name for p in earlier.iterdir()) == ["report.json", "weekly_training.html"]  # nothing half-replaced
    assert (earlier / "weekly_training.html").read_text() == "<p>earlier</p>"
    assert not (tmp_path / "out" / "index.html").exists()                 # a failed render writes no index
    index = write_index(tmp_path / "out").read_text()                      # and the next one does not list the attempt
    assert "failed" not in index and "2024-03-12/weekly_training.html" in index
    with pytest.raises(FileNotFoundError, match="not found in"):
        render_reports(world, out_root=tmp_path / "out", templates=tmp_path)
