"""The claims report (reproduce.claims) and the generated pages (reproduce.pages) on made-up result files whose
verdicts are known by construction, and the committed pages against the committed results."""

import json
import math
import os
import random

import pytest

from reproduce import claims, pages

DOCS = 12
TOKENS = [40 + 5 * i for i in range(DOCS)]
DEPTHS = [5, 6, 7]


def record(name: str, depth, nats: float, *, role: str = "intermediate", curve: str = "boomerang: full",
           params: int = 1000, rng=None) -> dict:
    """A result record whose held-out log-perplexity is ``nats`` per token (plus a little per-document noise)."""
    noise = [rng.uniform(-0.5, 0.5) if rng else 0.0 for _ in TOKENS]
    noise = [e - sum(noise) / len(noise) for e in noise]  # the total is exactly nats * tokens
    nll = [nats * t + e for t, e in zip(TOKENS, noise)]
    kl = [0.1 * t for t in TOKENS]
    ppl = math.exp(sum(nll) / sum(TOKENS))
    return {"name": name, "curve": curve, "role": role, "depth": depth, "parameters": {"total": params},
            "metrics": {"heldout_kl": {"token_perplexity": {"value": ppl}, "kl": {"value": 0.1}}},
            "heldout_scores": {"document_nll": nll, "document_kl": kl, "document_tokens": TOKENS}}


def write_seed(root, seed: int, students: dict[str, float], same: dict[int, float] | None = None,
               naive: bool = False, ledger: dict | None = None) -> None:
    """One seed folder: each ladder student at nats-per-token ``students[n]`` less 0.1 per depth, the teacher at 4."""
    rng = random.Random(seed)
    sd = root / f"seed-{seed}"
    for n, base in students.items():
        res = sd / "eval" / f"ladder-{n}" / "results"
        res.mkdir(parents=True)
        recs = [record("student", 4, base + 0.3, role="student", rng=rng)]
        recs += [record(f"last_k{i:02d}", d, base - 0.1 * i, params=1000 + 100 * i, rng=rng) for i, d in enumerate(DEPTHS)]
        if n == "full":
            recs.append(record("teacher", 8, 4.0, role="teacher", params=2000))
        for r in recs:
            (res / f"{r['name']}.json").write_text(json.dumps(r))
    if naive:
        res = sd / "eval" / "naive" / "results"
        res.mkdir(parents=True)
        for d in DEPTHS:
            (res / f"naive_d{d:02d}.json").write_text(json.dumps(record(f"naive_d{d:02d}", d, 9.0, rng=rng)))
    if same:
        res = sd / "eval" / "same-size" / "results"
        res.mkdir(parents=True)
        for d, nats in same.items():
            r = record(f"same_{d}", d, nats, curve="distilled at this size", rng=rng)
            (res / f"same_{d}.json").write_text(json.dumps(r))
    (sd / "students.json").write_text(json.dumps({n: {"seed": seed} for n in students}))
    (sd / "training.json").write_text(json.dumps({n: {"steps": 2, "tokens": 128, "eval_ce": 5.0} for n in students}))
    if ledger is not None:
        (sd / "stage_times.json").write_text(json.dumps(ledger))


def test_a_seed_effect_larger_than_the_ablations_is_not_beyond_noise(tmp_path):
    # ce-kl is 0.05 nats per token worse than full at each seed, but seed 1's full student is 0.1 worse than its
    # others: pooled, ce-kl's seeds and full's seeds overlap, and no size is worse beyond noise
    for s, shift in ((0, 0.0), (1, 0.1), (2, 0.0)):
        write_seed(tmp_path, s, {"full": 5.0 + shift, "ce-kl": 5.05}, naive=s == 0)
    report = claims.ClaimsReport.load(str(tmp_path), resamples=300)
    text = report.markdown()
    c2 = report.facts["claim2"]["against_full"]["ce-kl"]
    assert c2 == {"worse": 0, "better": 0, "within noise": 4}
    assert "**not shown** beyond training-seed noise" in report.claims_table()
    assert "(148.4 / 164.0 / 148.4)" in text  # each seed's full student beside the pooled value
    # with seed 1 as good as the others, every size is worse beyond noise, and the claim holds in direction
    steady = tmp_path / "steady"
    for s in (0, 1, 2):
        write_seed(steady, s, {"full": 5.0, "ce-kl": 5.05}, naive=s == 0)
    report = claims.ClaimsReport.load(str(steady), resamples=300)
    report.markdown()
    assert report.facts["claim2"]["against_full"]["ce-kl"] == {"worse": 4, "better": 0, "within noise": 0}
    assert "**holds in direction**" in report.claims_table()
    assert report.facts["claim1"]["naive"] == {"worse": 3, "of": 3}  # naive pruning, from seed 0 only


def test_claim3_and_rises_pool_the_seeds(tmp_path):
    for s in (0, 1, 2):
        write_seed(tmp_path, s, {"full": 5.0 + 0.01 * s}, same={5: 4.5 + 0.01 * s, 7: 4.81 - 0.01 * s})
    report = claims.ClaimsReport.load(str(tmp_path), resamples=300)
    text = report.markdown()
    assert report.facts["claim3"]["verdicts"] == {5: "better", 7: "within noise"}
    assert "**holds at 7 layers only**" in report.claims_table()
    assert "claim2" not in report.facts  # no ablation: no claim-2 section
    assert "## Claim 3" in text
    assert report.rises("full") == []  # every step of every seed falls (student 5.3, then 5.0, 4.9, 4.8 nats)


def test_time_section_marks_stages_too_short_to_measure(tmp_path):
    ledger = {"teacher": {"seconds": 0.2, "complete": True, "runs": 1, "other_cpu_s": 1.9},
              "distill full": {"seconds": 600.0, "complete": True, "runs": 1, "other_cpu_s": 30.0,
                               "max_rss_kib": 4 * 2**20}}
    write_seed(tmp_path, 0, {"full": 5.0}, ledger=ledger)
    text = claims.ClaimsReport.load(str(tmp_path), resamples=100).markdown()
    assert "teacher 0 s [too short to measure others' load]" in text
    assert "distill full 600 s [others 0.05] [peak 4.0 GiB]" in text
    assert "9.50" not in text  # 1.9 s of others' CPU over 0.2 s of wall time is not a load


def test_pages_write_check_and_collect(tmp_path, monkeypatch):
    run, data = tmp_path / "run", tmp_path / "data"
    for s in (0, 1):
        write_seed(run, s, {"full": 5.0 + 0.02 * s, "ce": 5.1}, naive=s == 0)
    (run / "seed-0" / "students" / "full").mkdir(parents=True)
    (run / "seed-0" / "students" / "full" / "model.safetensors").write_text("weights")
    (run / "chance.json").write_text(json.dumps({"copa": 0.5}))
    copied = pages.collect(str(run), str(data))
    assert not any("students" + os.sep in c for c in copied)  # no weights
    assert (data / "seed-1" / "eval" / "ladder-ce" / "results" / "last_k02.json").is_file()
    assert (data / "chance.json").is_file() and (data / "seed-0" / "training.json").is_file()
    page, readme = tmp_path / "page.md", tmp_path / "README.md"
    page.write_text("# Page\n\nhand-written\n\n<!-- report: start -->\nold\n<!-- report: end -->\n\nafter\n")
    readme.write_text("top\n<!-- claims: start -->\n<!-- claims: end -->\n")
    monkeypatch.setattr(pages, "EXPERIMENTS_PAGE", str(page))
    monkeypatch.setattr(pages, "README", str(readme))
    monkeypatch.setattr(pages, "MAIN_DATA", str(tmp_path / "no-main-job"))  # the README's main-job blocks: none
    assert len(pages.check(str(data))) == 2
    assert sorted(pages.write(str(data))) == sorted([str(page), str(readme)])
    assert pages.check(str(data)) == [] and pages.write(str(data)) == []  # idempotent
    text = page.read_text()
    assert text.startswith("# Page\n\nhand-written\n\n<!-- report: start -->\nSeeds: 0, 1. Held-out") and text.endswith("after\n")
    assert "| 2. the cosine loss" in readme.read_text()
    # a result that changes makes the committed page stale
    f = data / "seed-1" / "eval" / "ladder-ce" / "results" / "last_k02.json"
    r = json.loads(f.read_text())
    r["heldout_scores"]["document_nll"][0] += 50.0
    r["metrics"]["heldout_kl"]["token_perplexity"]["value"] *= 1.5
    f.write_text(json.dumps(r))
    assert any("page.md" in s for s in pages.check(str(data)))
    readme.write_text("no markers\n")
    with pytest.raises(pages.PageError, match="expected one '<!-- claims: start -->'"):
        pages.check(str(data))
    with pytest.raises(pages.PageError, match="no seed-<S> folders"):
        pages.collect(str(tmp_path / "nowhere"), str(data))


def test_committed_pages_are_what_the_committed_results_write():
    """Every generated block of the committed pages equals what `python -m reproduce.pages` writes from
    docs/results/experiments/data: no figure on them is typed by hand or left stale."""
    assert pages.check() == [], "run: python -m reproduce.pages"
