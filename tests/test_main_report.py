"""The README's pages from a main job's result files (reproduce.main_report, reproduce.pages --collect_main), on
made-up records whose verdicts are known by construction."""

import json

import pytest

from reproduce import main_report, pages
from tests.test_claims import record


CURVES = {"boomerang": "boomerang", "naive": "naive pruning", "shortgpt": "ShortGPT", "searched": "searched"}


def model(name: str, depth: int, nats: float, *, method: str = "boomerang", **kw) -> dict:
    """A main job's result record (``record``'s, with the sweep's method and curve)."""
    return {**record(name, depth, nats, curve=CURVES[method], **kw), "method": method}


def write_main_job(root, shortgpt_wins_at: int | None = 7) -> None:
    """A main job's folder: a 4-layer student, the fixed order at 5-7 layers and the 8-layer teacher (log-perplexity
    falling 0.3 a layer); naive pruning far worse; ShortGPT a little worse except at ``shortgpt_wins_at``; a searched
    frontier smaller and better than the fixed order; and weights that must not be collected."""
    ev, se = root / "eval" / "results", root / "search" / "eval" / "results"
    ev.mkdir(parents=True)
    se.mkdir(parents=True)
    recs = [model("student", 4, 6.0, role="student", params=1000),
            model("teacher", 8, 4.5, role="teacher", params=2000)]
    for i, d in enumerate((5, 6, 7)):
        nats = 5.7 - 0.3 * i
        recs.append(model(f"last_k{i:02d}", d, nats, params=1300 + 200 * i))
        recs.append(model(f"naive_d{d}", d, 9.0, method="naive", params=1300 + 200 * i))
        recs.append(model(f"shortgpt_d{d}", d, nats - 0.2 if d == shortgpt_wins_at else nats + 0.2,
                          method="shortgpt", params=1250 + 200 * i))
    for r in recs:
        (ev / f"{r['name']}.json").write_text(json.dumps(r))
    for i, d in enumerate((4, 5, 6, 7)):
        r = model(f"searched_{d}", d, 5.9 - 0.35 * i, method="searched", params=1000 + 150 * i)
        (se / f"{r['name']}.json").write_text(json.dumps(r))
    other = root / "first-k" / "eval" / "results"  # the other order, swept into its own folder
    other.mkdir(parents=True)
    for r in [recs[0], recs[1]] + [model(f"first_k{i:02d}", d, 5.8 - 0.2 * i, params=1300 + 200 * i)
                                   for i, d in enumerate((5, 6, 7))]:
        (other / f"{r['name']}.json").write_text(json.dumps(r))
    (root / "report.json").write_text(json.dumps({"timings": {"distillation": 10.0}, "total_s": 60.0,
                                                  "preset": "cpu", "order": "last-k"}))
    (root / "student").mkdir()
    (root / "student" / "model.safetensors").write_text("weights")


def test_claims_and_ladder_from_result_files(tmp_path):
    write_main_job(tmp_path)
    report = main_report.MainReport.load(str(tmp_path), resamples=400)
    claims = report.claims_block()
    naive = next(line for line in claims.splitlines() if "naive pruning" in line)
    assert "better beyond noise at 3, worse at 0" in naive and "**holds**" in naive
    short = next(line for line in claims.splitlines() if "ShortGPT" in line)
    assert "better beyond noise at 2, worse at 1 (7 layers)" in short and "**holds at 2 of 3 depths**" in short
    smooth = next(line for line in claims.splitlines() if "smooth" in line)
    assert "the last-k order: rises beyond noise at 0 of 4 steps" in smooth and "**holds**" in smooth
    ladder = report.ladder_block(str(tmp_path / "plots"), "docs/plots")
    assert "**searched frontier**: 5 models" in ladder  # four searched, then the teacher
    # every fixed-order and baseline model has a frontier member no larger that is better beyond noise (the first
    # ShortGPT model, 1,250 parameters, against the 1,150 one)
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")]
                                              for line in ladder.splitlines() if line.startswith("| "))}
    for family in ("last-k order", "first-k order", "naive pruning", "ShortGPT"):
        assert rows[family][2:] == ["3", "0", "0"], rows[family]
    # the other order is a family of its own (with the student; the teacher is the job's), not in the claims
    assert "- **first-k order**: 4 models, 1,000 to 1,700 parameters" in ladder  # the student and k = 0..2
    assert "first-k" not in claims
    assert rows["ShortGPT"][0] == "3 (1,250 to 1,650)"
    assert "![held-out perplexity by size](docs/plots/heldout_kl__token_perplexity.png)" in ladder
    assert (tmp_path / "plots" / "heldout_kl__token_perplexity.png").is_file()


def test_a_rise_along_the_ladder_is_reported(tmp_path):
    write_main_job(tmp_path)
    f = tmp_path / "eval" / "results" / "last_k02.json"  # 7 layers: worse than 6
    f.write_text(json.dumps(model("last_k02", 7, 5.9, params=1700)))
    smooth = next(line for line in main_report.MainReport.load(str(tmp_path), 400).claims_block().splitlines()
                  if "smooth" in line)
    assert "rises beyond noise at 1 of 4 steps (6 -> 7 (x1.65))" in smooth and "**holds for** the searched" in smooth


def test_collect_main_and_readme_blocks(tmp_path, monkeypatch):
    run, data = tmp_path / "run", tmp_path / "data"
    write_main_job(run)
    copied = pages.collect_main(str(run), str(data))
    assert len(copied) == 11 + 4 + 1 + 5 and not (data / "student").exists()
    readme = tmp_path / "README.md"
    readme.write_text("top\n<!-- claims: start -->\n<!-- claims: end -->\n<!-- ladder: start -->\n<!-- ladder: end -->\n"
                      "<!-- budget-claims: start -->\n<!-- budget-claims: end -->\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n<!-- report: start -->\n<!-- report: end -->\n")
    exp = tmp_path / "exp"
    from tests.test_claims import write_seed

    write_seed(exp, 0, {"full": 5.0}, naive=True)
    monkeypatch.setattr(pages, "README", str(readme))
    monkeypatch.setattr(pages, "EXPERIMENTS_PAGE", str(page))
    monkeypatch.setattr(pages, "MAIN_DATA", str(data))
    monkeypatch.setattr(pages, "MAIN_PLOTS", str(tmp_path / "plots-by-size"))
    assert any("block 'ladder'" in s for s in pages.check(str(exp)))
    pages.write(str(exp))
    assert pages.check(str(exp)) == []
    text = readme.read_text()
    assert "**searched frontier**" in text and "the interpolated ladder beats naive pruning" in text
    with pytest.raises(pages.PageError, match="no eval/results"):
        pages.collect_main(str(tmp_path / "nowhere"), str(data))
    assert (data / "report.json").is_file()  # a failed collect leaves the committed copy alone
