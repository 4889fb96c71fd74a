"""boomerang.scoring (KL from the teacher, per document) and the paired bootstrap that compares two models."""

import math

import pytest
import torch

import tiny_models
from boomerang.scoring import Scores, TeacherReference, nll_and_kl
from evaluate.bootstrap import paired_comparison

pytestmark = pytest.mark.usefixtures("one_thread")


def test_nll_and_kl_against_torch():
    g = torch.Generator().manual_seed(0)
    logits, t_logits = torch.randn(37, 11, generator=g), torch.randn(37, 11, generator=g)
    targets = torch.randint(0, 11, (37,), generator=g)
    tlp = torch.log_softmax(t_logits, -1)
    nll, kl = nll_and_kl(logits, tlp.exp(), (tlp.exp() * tlp).sum().item(), targets)
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


def _ladder_pair(family="llama"):
    """A tiny teacher (8 layers) and a perturbed (1, 2, 2) student cut from it, as training would leave it."""
    import copy

    from boomerang.layer_map import LayerMap
    from train.init_student import init_student

    teacher = tiny_models.build(tiny_models.TINY_DECODERS[family](8, True), 0)
    lm = LayerMap.from_recipe(8, 1, 2, 2)
    student = copy.deepcopy(init_student(teacher, lm, False, torch.float32, 0))
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.15)
    student.boomerang_layer_map = lm
    return teacher, student.eval(), lm


def _docs():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, tiny_models.VOCAB, (1, n), generator=g) for n in (9, 9, 9, 9, 9, 6, 12)]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text", "gpt_neox", "gpt2"])
@pytest.mark.parametrize("first_k", [False, True])
def test_prefix_cache_scores_a_ladder_as_the_plain_forward_does(family, first_k):
    from patching.patch import build_intermediate_model

    teacher, student, lm = _ladder_pair(family)
    docs = _docs()
    plain = TeacherReference(teacher, docs)
    cached = TeacherReference(teacher, docs, cache_bytes=2**30)
    layer_passes = 0
    for k in range(lm.max_patch + 1):  # the sizes in ladder order: each shares a prefix with the one before
        model, _ = build_intermediate_model(teacher, student, k, first_k, dtype=torch.float32)
        want, got = plain.score(model), cached.score(model)
        assert got.nll == pytest.approx(want.nll, rel=1e-4) and got.kl == pytest.approx(want.kl, rel=1e-4, abs=1e-5)
        layer_passes += len(cached.batches) * model.config.num_hidden_layers
    st = cached.stats
    assert st["models_scored"] == lm.max_patch + 1 and st["layers_run"] + st["layers_reused"] == layer_passes
    if family == "gpt2":  # GPT-2 adds position embeddings to inputs_embeds: nothing can start from a hidden state
        assert st["layers_reused"] == 0
    else:
        assert st["layers_reused"] > 0


def test_prefix_cache_never_matches_other_or_changed_weights():
    teacher, student, lm = _ladder_pair()
    docs = _docs()
    plain = TeacherReference(teacher, docs)
    cached = TeacherReference(teacher, docs, cache_bytes=2**30)
    for seed in (1, 2, 3):  # fresh models of one shape, each freed before the next is made
        model = tiny_models.build(tiny_models.llama(8), seed)
        assert cached.score(model).kl == pytest.approx(plain.score(model).kl, rel=1e-5)
        del model
    assert cached.stats["layers_reused"] == 0
    model = tiny_models.build(tiny_models.llama(8), 4)
    cached.score(model)
    with torch.no_grad():  # a weight changed in place, as training would: the cached states are stale
        model.model.layers[5].mlp.up_proj.weight.mul_(1.5)
    assert cached.score(model).kl == pytest.approx(plain.score(model).kl, rel=1e-5)
    assert cached.score(model).kl == pytest.approx(plain.score(model).kl, rel=1e-5)  # now served from its own prefix
    assert cached.stats["layers_reused"] > 0


def test_prefix_cache_stays_within_its_bytes():
    teacher, student, lm = _ladder_pair()
    from patching.patch import build_intermediate_model

    docs = _docs()
    one_state = 5 * 9 * teacher.config.hidden_size * 4  # the largest batch's hidden state, float32
    cached = TeacherReference(teacher, docs, batch_size=5, cache_bytes=3 * one_state)
    for k in range(lm.max_patch + 1):
        cached.score(build_intermediate_model(teacher, student, k, True, dtype=torch.float32)[0])
        assert cached.cache.bytes <= 3 * one_state
    assert 0 < len(cached.cache.entries)
