"""The two-level bootstrap (documents and training seeds) against hand-computed values."""

import math

import pytest

from boomerang.scoring import Scores
from evaluate.bootstrap import (interval_verdict, paired_comparison, seeded_comparison, seeded_steps, step_changes,
                                verdict)

TOKENS = [10, 20, 30, 40]
BASE = [25.0, 41.0, 70.0, 95.0]


def shifted(nats_per_token: float, noise=(0.0, 0.0, 0.0, 0.0)) -> Scores:
    """BASE worse by ``nats_per_token`` on every token, plus a per-document ``noise`` (nats)."""
    return Scores([b + nats_per_token * t + e for b, t, e in zip(BASE, TOKENS, noise)], [0.5 * t for t in TOKENS],
                  TOKENS)


def test_one_seed_is_the_paired_bootstrap_over_documents():
    a, b = shifted(0.0), shifted(0.05, (3.0, -2.0, 1.0, -4.0))
    one = seeded_comparison([a], [b], resamples=500, seed=3)
    two = paired_comparison(a, b, resamples=500, seed=3)
    for k in ("ppl_ratio", "kl_diff"):
        assert one[k] == pytest.approx(two[k], rel=1e-12)
    assert one["ppl_ci95"] == pytest.approx(two["ppl_ci95"], rel=1e-12)
    assert one["kl_ci95"] == pytest.approx(two["kl_ci95"], rel=1e-12)
    total = sum(TOKENS)
    assert one["ppl_ratio"] == pytest.approx(math.exp((sum(b.nll) - sum(a.nll)) / total))
    assert one["seed_ppl"]["a"] == {0: pytest.approx(math.exp(sum(a.nll) / total))}
    assert two["verdict"] == interval_verdict(two["ppl_ci95"]) == "within noise"  # the documents' noise is larger
    assert paired_comparison(a, shifted(0.05), resamples=200)["verdict"] == "worse"  # worse on every document
    assert paired_comparison(a, shifted(-0.05), resamples=200)["verdict"] == "better"


def test_the_one_seed_rule_is_the_interval_against_no_change():
    assert interval_verdict([1.001, 1.2]) == "worse"
    assert interval_verdict([0.8, 0.999]) == "better"
    assert interval_verdict([0.99, 1.01]) == interval_verdict([1.0, 1.2]) == "within noise"  # touching is not beyond
    assert interval_verdict([-0.2, -0.01], no_change=0.0) == "better"  # a difference, such as ΔKL
    assert interval_verdict([0.01, 0.2], no_change=0.0) == "worse"


def test_seeds_are_a_level_of_the_interval():
    # every document moves by the same nats per token within a seed, so documents add no noise: what spreads the
    # interval is the seeds alone
    a = {0: shifted(0.00), 1: shifted(0.10), 2: shifted(0.02)}
    b = {0: shifted(0.05), 1: shifted(0.15), 2: shifted(0.07)}  # each seed 0.05 nats per token worse
    paired = seeded_comparison(a, b, paired_seeds=True, resamples=400)
    assert paired["ppl_ratio"] == pytest.approx(math.exp(0.05))
    assert paired["ppl_ci95"] == pytest.approx([math.exp(0.05)] * 2)  # seed s against seed s: no noise left
    assert paired["seed_ppl_ratio"] == {s: pytest.approx(math.exp(0.05)) for s in (0, 1, 2)}
    assert paired["verdict"] == "worse"
    free = seeded_comparison(a, b, resamples=400)  # seeds drawn independently for each model
    lo, hi = free["ppl_ci95"]
    assert free["ppl_ratio"] == pytest.approx(math.exp(0.05))
    # the extremes a replicate can reach: b's three draws all its best seed and a's all its worst, and conversely
    assert math.exp(0.05 - 0.10) - 1e-12 <= lo < math.exp(0.05) < hi <= math.exp(0.15 + 0.10 - 0.0) + 1e-12
    assert hi - lo > 0.05
    # seed 1 of a (0.10) is worse than seeds 0 and 2 of b (0.05, 0.07): not beyond noise, whatever the interval
    assert free["verdict"] == "within noise"
    assert free["seed_ppl"]["a"][1] == pytest.approx(math.exp(sum(a[1].nll) / sum(TOKENS)))


def test_verdict_needs_the_interval_and_every_seed():
    c = {"ppl_ci95": [1.01, 1.2], "seed_ppl": {"a": {0: 100.0, 1: 110.0}, "b": {0: 112.0, 1: 120.0}}}
    assert verdict(c) == "worse"
    c["seed_ppl"]["b"][0] = 105.0  # one seed of b better than one of a
    assert verdict(c) == "within noise"
    assert verdict({"ppl_ci95": [0.8, 0.99], "seed_ppl": {"a": {0: 100.0}, "b": {0: 90.0}}}) == "better"
    assert verdict({"ppl_ci95": [0.98, 1.3], "seed_ppl": {"a": {0: 100.0}, "b": {0: 120.0}}}) == "within noise"
    paired = {"ppl_ci95": [1.01, 1.2], "seed_ppl_ratio": {0: 1.1, 1: 0.99}}
    assert verdict(paired, paired_seeds=True) == "within noise"
    paired["seed_ppl_ratio"][1] = 1.02
    assert verdict(paired, paired_seeds=True) == "worse"


def test_seeded_steps_pair_the_seeds_of_one_ladder():
    ladder = [{0: shifted(0.0), 1: shifted(0.3)},
              {0: shifted(0.1), 1: shifted(0.4)},  # both seeds rise 0.1 nats per token
              {0: shifted(0.2), 1: shifted(0.35)}]  # seed 0 rises, seed 1 falls
    steps = seeded_steps(["16", "17", "18"], ladder, resamples=300)
    assert steps[0]["verdict"] == "rises" and steps[0]["ratio"] == pytest.approx(math.exp(0.1))
    assert steps[0]["ci95"] == pytest.approx([math.exp(0.1)] * 2)
    assert steps[1]["verdict"] == "within noise"
    assert steps[1]["seed_ratios"] == {0: pytest.approx(math.exp(0.1)), 1: pytest.approx(math.exp(-0.05))}
    # one seed per rung: the paired bootstrap over documents of step_changes
    single = step_changes(["a", "b"], [shifted(0.0).nll, shifted(0.1).nll], TOKENS, resamples=300)
    assert single[0]["verdict"] == "rises" and single[0]["ratio"] == pytest.approx(math.exp(0.1))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="not on the same documents"):
        seeded_comparison([shifted(0.0)], [Scores([1.0], [0.0], [3])])
    with pytest.raises(ValueError, match="paired seeds need the same seeds"):
        seeded_comparison({0: shifted(0.0)}, {1: shifted(0.0)}, paired_seeds=True)
    with pytest.raises(ValueError, match="at least one seed"):
        seeded_comparison([], [shifted(0.0)])
