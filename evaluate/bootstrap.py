"""Intervals for comparing models on held-out documents: over documents, and over documents and training seeds.

Every comparison here is between per-document sums on the same documents (``boomerang.scoring.Scores``: NLL,
KL(teacher || model) and predicted tokens per document). A model's log-perplexity is its summed NLL over its
summed tokens; a model trained at several seeds (a *seeded* model: one ``Scores`` per seed) has the mean of its
seeds' log-perplexities, so each seed counts once whatever it scored.

Two levels of noise, resampled together (a two-level bootstrap):

- **documents**: the held-out documents are a sample of text; every replicate draws documents with
  replacement, the same draw for both models (the comparison is paired over documents);
- **seeds**: each trained model is one draw of the training run's randomness (data order, and for a
  random-init student its weights); every replicate draws each model's seeds with replacement. Two models
  are resampled **independently** over seeds by default (``paired_seeds=False``): seed s of one student and
  seed s of another share a data order but not a training trajectory, and treating them as paired would
  credit that shared order with cancelling noise it may not cancel. The steps of one student's ladder
  (``seeded_steps``) are paired over seeds: depth d and d+1 of seed s are the same trained student.

With one seed per model and no seed resampling this is exactly the paired bootstrap over documents
(``paired_comparison``; the same replicates, bit for bit).

With three seeds the seed level of a percentile bootstrap is coarse (each model has 10 distinct seed
multisets) and, like any bootstrap of a mean over k clusters, narrows the seed variance by (k - 1) / k.
The verdict (``verdict``) therefore asks for more than the interval: a difference is *beyond noise* only
when the 95% interval excludes no-change **and** every seed of one model is on the same side of every seed of
the other (for paired seeds: every seed's own difference has the same sign). That is the rule every
"beyond noise", "rises" and claim verdict of the experiments uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from boomerang.scoring import Scores

QUANTILES = (0.025, 0.975)


def _matrix(scores: Sequence[Scores], key: str) -> torch.Tensor:
    """[seeds, documents] of one per-document sum (``nll`` or ``kl``)."""
    return torch.tensor([getattr(s, key) for s in scores], dtype=torch.float64)


def _check_documents(a: Sequence[Scores], b: Sequence[Scores]) -> list[int]:
    tokens = list(a[0].tokens)
    if any(list(s.tokens) != tokens for s in (*a, *b)):
        raise ValueError("paired_comparison: the scores are not on the same documents (per-document token "
                         "counts differ); score every model on the same held-out reference")
    return tokens


def seeded_comparison(a: Mapping[int, Scores] | Sequence[Scores], b: Mapping[int, Scores] | Sequence[Scores], *,
                      paired_seeds: bool = False, resamples: int = 2000, seed: int = 0) -> dict:
    """Model b against model a, each trained at one or more seeds, on the same documents.

    Returns ``ppl_ratio`` (exp of b's mean log-perplexity over its seeds less a's) and ``kl_diff`` (b's mean KL per
    token less a's), each with a 95% two-level bootstrap interval (``ppl_ci95``, ``kl_ci95``: documents and seeds
    resampled, see the module's docstring); ``seed_ppl``: each model's perplexity at each of its seeds
    ({"a": {seed: ppl}, "b": {...}}); ``seed_ppl_ratio``: with paired seeds, each seed's own ratio; and
    ``verdict`` (``verdict``'s rule: "worse" when b is worse than a beyond noise, "better", or "within noise").
    """
    seeds_a, seeds_b = (list(x) if isinstance(x, Mapping) else list(range(len(x))) for x in (a, b))
    sa = list(a.values()) if isinstance(a, Mapping) else list(a)
    sb = list(b.values()) if isinstance(b, Mapping) else list(b)
    if not sa or not sb:
        raise ValueError("seeded_comparison: each model needs the scores of at least one seed")
    if paired_seeds and seeds_a != seeds_b:
        raise ValueError(f"seeded_comparison: paired seeds need the same seeds on both sides ({seeds_a} vs {seeds_b})")
    tokens = _check_documents(sa, sb)
    g = torch.Generator().manual_seed(seed)
    n = len(tokens)
    idx = torch.randint(0, n, (resamples, n), generator=g)  # documents, shared by both models
    gs = torch.Generator().manual_seed(seed + 1)
    pick_a = torch.randint(0, len(sa), (resamples, len(sa)), generator=gs)
    pick_b = pick_a if paired_seeds else torch.randint(0, len(sb), (resamples, len(sb)), generator=gs)
    tok = torch.tensor(tokens, dtype=torch.float64)
    boot_tok = tok[idx].sum(1)  # [R]
    q = torch.tensor(QUANTILES, dtype=torch.float64)
    out: dict = {}
    for key, field, fn in (("ppl", "nll", torch.exp), ("kl", "kl", lambda x: x)):
        per_token = {}
        for side, scores, pick in (("a", sa, pick_a), ("b", sb, pick_b)):
            m = _matrix(scores, field)  # [seeds, docs]
            per_seed = m.sum(1) / tok.sum()  # each seed's value on all documents
            boot = (m[:, idx].sum(-1) / boot_tok).T  # [R, seeds]: each seed on each document draw
            per_token[side] = (per_seed, boot.gather(1, pick).mean(1))
        point = fn(per_token["b"][0].mean() - per_token["a"][0].mean()).item()
        lo, hi = torch.quantile(fn(per_token["b"][1] - per_token["a"][1]), q).tolist()
        out["ppl_ratio" if key == "ppl" else "kl_diff"] = point
        out[f"{key}_ci95"] = [lo, hi]
        if key == "ppl":
            out["seed_ppl"] = {side: dict(zip(ids, torch.exp(per_token[side][0]).tolist()))
                               for side, ids in (("a", seeds_a), ("b", seeds_b))}
            if paired_seeds:
                out["seed_ppl_ratio"] = dict(zip(seeds_a, torch.exp(per_token["b"][0] - per_token["a"][0]).tolist()))
    out["verdict"] = verdict(out, paired_seeds)
    return out


def interval_verdict(ci95: Sequence[float], no_change: float = 1.0) -> str:
    """"worse" when the whole interval is above ``no_change`` (1 for a perplexity ratio, 0 for a difference),
    "better" when below, else "within noise": the one-seed rule, and the interval half of ``verdict``."""
    lo, hi = ci95
    return "worse" if lo > no_change else "better" if hi < no_change else "within noise"


def verdict(c: dict, paired_seeds: bool = False) -> str:
    """"worse" (b worse than a beyond noise), "better", or "within noise", from ``seeded_comparison``'s result: the
    perplexity interval wholly above (below) 1 and every seed of b worse (better) than every seed of a (paired
    seeds: every seed's own ratio above (below) 1)."""
    if paired_seeds:
        ratios = list(c["seed_ppl_ratio"].values())
        all_worse, all_better = min(ratios) > 1, max(ratios) < 1
    else:
        pa, pb = c["seed_ppl"]["a"].values(), c["seed_ppl"]["b"].values()
        all_worse, all_better = min(pb) > max(pa), max(pb) < min(pa)
    v = interval_verdict(c["ppl_ci95"])
    if (v == "worse" and all_worse) or (v == "better" and all_better):
        return v
    return "within noise"


def paired_comparison(a: Scores, b: Scores, resamples: int = 2000, seed: int = 0) -> dict:
    """Model b against model a on the same documents, one trained model each: the perplexity ratio b/a and the
    difference of mean KL per token b - a, each with a 95% paired bootstrap interval over documents (the one-seed
    case of ``seeded_comparison``); ``verdict``: ``interval_verdict`` of the perplexity ratio."""
    c = seeded_comparison([a], [b], resamples=resamples, seed=seed)
    return {**{k: c[k] for k in ("ppl_ratio", "ppl_ci95", "kl_diff", "kl_ci95")},
            "verdict": interval_verdict(c["ppl_ci95"])}


def seeded_steps(labels: Sequence[str], ladder: Sequence[Mapping[int, Scores] | Sequence[Scores]],
                 resamples: int = 2000, seed: int = 0) -> list[dict]:
    """Perplexity ratio of each consecutive pair of models along one ladder (the same students at every seed), with
    the two-level interval, seeds paired: ``rises`` when the step is worse beyond noise (``verdict``), ``falls``
    when better, else ``within noise``; ``seed_ratios``: each seed's own step."""
    out = []
    for i in range(1, len(labels)):
        c = seeded_comparison(ladder[i - 1], ladder[i], paired_seeds=True, resamples=resamples, seed=seed)
        out.append({"from": labels[i - 1], "to": labels[i], "ratio": c["ppl_ratio"], "ci95": c["ppl_ci95"],
                    "seed_ratios": c["seed_ppl_ratio"],
                    "verdict": {"worse": "rises", "better": "falls"}.get(c["verdict"], "within noise")})
    return out


def step_changes(labels: list[str], nlls: list[list[float]], counts: list[int], resamples: int = 2000,
                 seed: int = 0) -> list[dict]:
    """Perplexity ratio of each consecutive pair of models (one trained model each), with a 95% paired bootstrap
    interval over documents: ``rises`` when the whole interval is above 1, ``falls`` when below, else
    ``within noise``."""
    steps = seeded_steps(labels, [[Scores(nll, [0.0] * len(counts), counts)] for nll in nlls], resamples, seed)
    return [{k: s[k] for k in ("from", "to", "ratio", "ci95", "verdict")} for s in steps]
