"""boomerang.scoring (KL from the teacher, per document) and the paired bootstrap that compares two models."""

import math

import pytest
import torch

import tiny_models
from boomerang.scoring import Scores, TeacherReference, nll_and_kl
from evaluate.alignment import paired_comparison

pytestmark = pytest.mark.usefixtures("one_thread")


def test_nll_and_kl_against_torch():
    g = torch.Generator().manual_seed(0)
    logits, t_logits = torch.randn(37, 11, generator=g), torch.randn(37, 11, generator=g)
    targets = torch.randint(0, 11, (37,), generator=g)
    tlp = torch.log_softmax(t_logits, -1)
    nll, kl = nll_and_kl(logits, tlp, targets, chunk=5)  # chunked: 8 chunks, the last short
    assert nll == pytest.approx(torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item(), rel=1e-6)
    want = torch.nn.functional.kl_div(torch.log_softmax(logits, -1), tlp, log_target=True, reduction="sum").item()
    assert kl == pytest.approx(want, rel=1e-6)


def test_teacher_reference_scores_models_per_document():
    teacher = tiny_models.build(tiny_models.llama(4), 0)
    other = tiny_models.build(tiny_models.llama(4), 1)
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 128, (1, n), generator=g) for n in (9, 9, 9, 5, 12)]  # mixed lengths: batched in runs
    ref = TeacherReference(teacher, seqs)
    own = ref.score(teacher)
    assert own.kl == pytest.approx([0.0] * 5, abs=1e-5) and own.tokens == [8, 8, 8, 4, 11]
    s = ref.score(other)
    for i, ids in enumerate(seqs):  # each document by hand, one at a time
        lo, lt = other(input_ids=ids).logits[0, :-1], teacher(input_ids=ids).logits[0, :-1]
        nll = torch.nn.functional.cross_entropy(lo, ids[0, 1:], reduction="sum").item()
        kl = torch.nn.functional.kl_div(torch.log_softmax(lo, -1), torch.log_softmax(lt, -1), log_target=True,
                                        reduction="sum").item()
        assert s.nll[i] == pytest.approx(nll, rel=1e-5) and s.kl[i] == pytest.approx(kl, rel=1e-5)
    assert s.token_perplexity == pytest.approx(math.exp(sum(s.nll) / 39))
    assert Scores.from_dict(s.to_dict()) == s


def test_paired_comparison():
    a = Scores([10.0, 20.0, 30.0, 5.0], [1.0, 2.0, 3.0, 0.5], [10, 10, 10, 10])
    same = paired_comparison(a, a)
    assert same["ppl_ratio"] == 1.0 and same["ppl_ci95"] == [1.0, 1.0] and same["kl_diff"] == 0.0
    # b is worse by exactly 0.1 nats and 0.2 KL per token in every document: no doubt, interval a point
    b = Scores([x + 1.0 for x in a.nll], [x + 2.0 for x in a.kl], a.tokens)
    c = paired_comparison(a, b)
    assert c["ppl_ratio"] == pytest.approx(math.exp(0.1)) and c["ppl_ci95"] == pytest.approx([math.exp(0.1)] * 2)
    assert c["kl_diff"] == pytest.approx(0.2) and c["kl_ci95"] == pytest.approx([0.2, 0.2])
    # worse in one document, better in another: the interval straddles 1
    d = Scores([12.0, 18.0, 30.0, 5.0], a.kl, a.tokens)
    lo, hi = paired_comparison(a, d)["ppl_ci95"]
    assert lo < 1 < hi
    with pytest.raises(ValueError, match="not on the same documents"):
        paired_comparison(a, Scores([1.0], [1.0], [3]))
