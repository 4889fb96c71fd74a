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
               naive: bool = False, ledger: dict | None = None, step: dict[str, float] | None = None) -> None:
    """One seed folder: each ladder student at nats-per-token ``students[n]`` plus ``step[n]`` (default -0.1) per
    depth, the student itself 0.3 above, the teacher at 4."""
    rng = random.Random(seed)
    sd = root / f"seed-{seed}"
    for n, base in students.items():
        res = sd / "eval" / f"ladder-{n}" / "results"
        res.mkdir(parents=True)
        recs = [record("student", 4, base + 0.3, role="student", rng=rng)]
        per_depth = (step or {}).get(n, -0.1)
        recs += [record(f"last_k{i:02d}", d, base + per_depth * i, params=1000 + 100 * i, rng=rng)
                 for i, d in enumerate(DEPTHS)]
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
    # with seed 1 as good as the others, every size is worse beyond noise, but the ladder falls at every step as the
    # full one does: the level holds, the stability (a breakdown between sizes) does not
    steady = tmp_path / "steady"
    for s in (0, 1, 2):
        write_seed(steady, s, {"full": 5.0, "ce-kl": 5.05}, naive=s == 0)
    report = claims.ClaimsReport.load(str(steady), resamples=300)
    report.markdown()
    assert report.facts["claim2"]["against_full"]["ce-kl"] == {"worse": 4, "better": 0, "within noise": 0}
    table = report.claims_table()
    assert "worse beyond noise at 4 of 4 sizes (the student included)" in table
    assert ("**holds for perplexity, not for stability**: without the cosine term every size is worse beyond noise; "
            "but the ladder without it (ce-kl) rises no more often than the full loss's") in table
    assert report.facts["claim1"]["naive"] == {"worse": 3, "of": 3}  # naive pruning, from seed 0 only
    assert "**holds for distillation**; initialization not measured" in table  # no random-init student
    # a ladder without the cosine term that rises at every added block while the full one falls: a breakdown
    broken = tmp_path / "broken"
    for s in (0, 1, 2):
        write_seed(broken, s, {"full": 5.0, "ce": 5.05, "ce-cos": 5.0}, step={"ce": 0.1})
    report = claims.ClaimsReport.load(str(broken), resamples=300)
    text = report.markdown()
    assert report.facts["claim2"]["rises"] == {"full": [], "ce": ["5->6", "6->7"], "ce-cos": []}
    assert ("**holds**: without the cosine term every size is worse beyond noise, and the ladder without it rises "
            "more often than the full loss's (ce)") in report.claims_table()
    assert "in seed order: full 0 / 1 / 2, ce 0 / 1 / 2, ce-cos 0 / 1 / 2" in text


def test_claim3_and_rises_pool_the_seeds(tmp_path):
    for s in (0, 1, 2):
        write_seed(tmp_path, s, {"full": 5.0 + 0.01 * s}, same={5: 4.5 + 0.01 * s, 7: 4.81 - 0.01 * s})
    report = claims.ClaimsReport.load(str(tmp_path), resamples=300)
    text = report.markdown()
    assert report.facts["claim3"]["verdicts"] == {5: "better", 7: "within noise"}
    assert "better beyond noise at 1 of 2 depths (5) " in report.claims_table()  # the depth that is better, only
    assert "**holds at 7 layers only**" in report.claims_table()
    assert "claim2" not in report.facts  # no ablation: no claim-2 section
    assert "## Claim 3" in text
    assert report.rises("full") == []  # every step of every seed falls (student 5.3, then 5.0, 4.9, 4.8 nats)


def test_time_section_marks_stages_too_short_to_measure_idle_stages_and_what_else_ran(tmp_path):
    ledger = {"teacher": {"seconds": 0.2, "complete": True, "runs": 1, "other_cpu_s": 1.9},
              "distill full": {"seconds": 600.0, "complete": True, "runs": 1, "other_cpu_s": 30.0,
                               "max_rss_kib": 4 * 2**20},
              "distill ce": {"seconds": 1200.0, "complete": True, "runs": 2, "other_cpu_s": 600.0,
                             "own_cpu_s": 1200.0},
              "evaluate ce": {"seconds": 60.0, "complete": False, "runs": 1, "other_cpu_s": 0.0}}
    write_seed(tmp_path, 0, {"full": 5.0}, ledger=ledger)
    (tmp_path / "seed-0" / "stage_notes.json").write_text(json.dumps({"distill ce": "stopped 10 min for CI"}))
    text = claims.ClaimsReport.load(str(tmp_path), resamples=100).markdown()
    assert "teacher 0 s [too short to measure others' load]" in text
    assert "distill full 600 s [others 0.05] [peak so far 4.0 GiB]" in text
    assert "distill ce 1200 s [others 0.50] [own 1.00] (stopped 10 min for CI)" in text
    assert "evaluate ce 60 s [others 0.00] (unfinished)" in text
    # on idle cores: the complete stages measured at most 0.05 other cores (distill full), not the unfinished one
    assert "total 31.0 min, of which 10.0 min in 1 stage on idle cores." in text
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


def test_multiple_choice_shows_answers_given_without_reading(tmp_path):
    """The seeds' mean accuracy with the mean of their standard errors (the seeds share the items), the flag below
    chance, and how many models sit within one standard error of an answer given without reading."""
    from reproduce.common import MC_TASKS, answer_bias

    items = {t: [{"query": "q", "choices": ["no", "yes"], "gold": 1}] * 3 + [{"query": "q", "choices": ["a bb", "c"],
                                                                               "gold": 0}] for t in MC_TASKS}
    files = {}
    for t, its in items.items():
        files[t] = str(tmp_path / f"{t}.jsonl")
        with open(files[t], "w") as f:
            f.write("\n".join(json.dumps(it) for it in its) + "\n")
    bias = answer_bias(files, limit=None)
    # gold at position 1 three times in four: always position 0 scores 0.25, always 1 scores 0.75; the shortest
    # choice is "no" (position 0, wrong) three times and "c" (position 1, wrong) once
    assert bias[MC_TASKS[0]] == {"one_position": [0.25, 0.75], "shortest": 0.0, "items": 4}
    assert answer_bias(files, limit=2)[MC_TASKS[0]]["one_position"] == [0.0, 1.0]
    write_seed(tmp_path, 0, {"full": 5.0}, same={6: 4.5})
    write_seed(tmp_path, 1, {"full": 5.0}, same={6: 4.5})
    for s, acc in ((0, 0.30), (1, 0.20)):
        res = tmp_path / f"seed-{s}" / "eval" / "mc" / "results"
        res.mkdir(parents=True)
        for name, curve in (("same_6", "distilled at this size"), ("last_k01", "boomerang: full")):
            metrics = {t: {"acc": {"value": acc, "stderr": 0.04 + 0.02 * s}} for t in MC_TASKS}
            (res / f"{name}.json").write_text(json.dumps({"name": name, "curve": curve, "depth": 6, "metrics": metrics,
                                                         "settings": {"limit": 4}}))
    (tmp_path / "chance.json").write_text(json.dumps({t: 0.5 for t in MC_TASKS}))
    (tmp_path / "answer_bias.json").write_text(json.dumps(bias))
    text = claims.ClaimsReport.load(str(tmp_path), resamples=100).markdown()
    t = MC_TASKS[0]
    assert "| 0.250 ± 0.050 ↓" in text  # mean 0.25 ± mean(0.04, 0.06), below 0.5 by more than 0.05
    assert "- 6 layers: every task within one standard error of the difference" in text
    assert f"| {t} " in text and "| 0.250 to 0.750 " in text  # the table of answers given without reading
    assert f"- {t}: 0.250 to 0.250; 2 of 2 models within one standard error of an answer given without reading" in text
