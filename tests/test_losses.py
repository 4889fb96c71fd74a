"""The distillation loss terms against hand-computed values; chunked = dense; masks."""

import math

import pytest
import torch

from train.losses import (LossConfig, cosine_loss_sum, distillation_loss, next_token_labels, valid_positions,
                          vocab_losses)


def _softmax(xs, T=1.0):
    m = max(x / T for x in xs)
    e = [math.exp(x / T - m) for x in xs]
    s = sum(e)
    return [v / s for v in e]


def test_valid_positions_padding_and_boundaries():
    doc = torch.tensor([[0, 0, 0, 1, 1, -1, -1], [3, 3, 3, 3, 3, 3, 3]])
    v = valid_positions(doc)
    # Position 2 (last token of doc 0, predicting doc 1's first) and position 4 (predicting padding) do not count;
    # the last position of a row never counts.
    assert v.tolist() == [[True, True, False, True, False, False, False], [True] * 6 + [False]]
    labels = next_token_labels(torch.arange(7).expand(2, 7), v)
    assert labels[0].tolist() == [1, 2, -100, 4, -100, -100, -100]


@pytest.mark.parametrize("T", [2.0, 1.0])  # T = 1: one log-softmax serves CE and KL
def test_cross_entropy_and_kl_hand_computed(T):
    s = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    t = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    y = [1, 2]
    ce_hand = sum(-math.log(_softmax(s[i])[y[i]]) for i in range(2))
    kl_hand = 0.0
    for i in range(2):
        p, q = _softmax(t[i], T), _softmax(s[i], T)
        kl_hand += sum(pv * (math.log(pv) - math.log(qv)) for pv, qv in zip(p, q))
    valid = torch.ones(1, 2, dtype=torch.bool)
    ce, kl = vocab_losses(torch.tensor([s]), torch.tensor([t]), torch.tensor([y]), valid, T=T, chunk_size=0)
    assert ce.item() == pytest.approx(ce_hand, rel=1e-6)
    assert kl.item() == pytest.approx(kl_hand, rel=1e-6)


def test_cosine_hand_computed_and_weight_split():
    a = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    b = torch.tensor([[[1.0, 1.0], [0.0, 5.0]]])
    c = torch.tensor([[[-1.0, 0.0], [3.0, 0.0]]])
    valid = torch.tensor([[True, True]])
    # pair 1: (1 - 1/sqrt2) + (1 - 1); pair 2 (a vs c): (1 - (-1)) + (1 - 0)
    hand = ((1 - 1 / math.sqrt(2)) + 0.0 + 2.0 + 1.0) / 2
    got = cosine_loss_sum([a, a], [b, c], valid)
    assert got.item() == pytest.approx(hand, rel=1e-6)


def test_total_combines_terms_with_weights_and_switches():
    torch.manual_seed(0)
    B, S, V, H = 2, 6, 11, 4
    s_logits, t_logits = torch.randn(B, S, V), torch.randn(B, S, V)
    s_h = [torch.randn(B, S, H) for _ in range(3)]
    t_h = [torch.randn(B, S, H) for _ in range(3)]
    ids = torch.randint(0, V, (B, S))
    doc = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, -1, -1]])
    cfg = LossConfig(kl_loss_weight=0.3, T=2.0, cosine_loss_weight=1.5, kl_chunk_size=0)
    terms = distillation_loss(cfg, s_logits, t_logits, s_h, t_h, ids, doc)
    assert terms.num_valid == 7
    assert terms.total.item() == pytest.approx(float(terms.ce + 0.3 * 4.0 * terms.kl + 1.5 * terms.cosine), rel=1e-6)
    for off, keep in (("use_kl_loss", lambda t: t.ce + 1.5 * t.cosine),
                      ("use_cosine_loss", lambda t: t.ce + 1.2 * t.kl),
                      ("use_cross_entropy", lambda t: 1.2 * t.kl + 1.5 * t.cosine)):
        c = LossConfig(kl_loss_weight=0.3, T=2.0, cosine_loss_weight=1.5, kl_chunk_size=0, **{off: False})
        tt = distillation_loss(c, s_logits, t_logits if c.use_kl_loss else None, s_h, t_h, ids, doc)
        assert tt.total.item() == pytest.approx(float(keep(terms)), rel=1e-6)
    with pytest.raises(ValueError, match="switched off"):
        LossConfig(use_cross_entropy=False, use_kl_loss=False, use_cosine_loss=False)


@pytest.mark.parametrize("T", [1.0, 1.5])
@pytest.mark.parametrize("chunk", [1, 3, 5, 1000])
def test_chunked_equals_dense_values_and_gradients(chunk, T):
    torch.manual_seed(1)
    B, S, V = 2, 7, 13
    doc = torch.tensor([[0] * 7, [0, 0, 0, 1, 1, -1, -1]])
    valid = valid_positions(doc)
    ids = torch.randint(0, V, (B, S))
    labels = next_token_labels(ids, valid)
    t = torch.randn(B, S, V)
    base = torch.randn(B, S, V)
    out = []
    for c in (0, chunk):
        s = base.clone().requires_grad_(True)
        ce, kl = vocab_losses(s, t, labels, valid, T=T, chunk_size=c)
        (ce + 0.7 * kl).backward()
        out.append((ce.item(), kl.item(), s.grad.clone()))
    assert out[1][0] == pytest.approx(out[0][0], rel=1e-5)
    assert out[1][1] == pytest.approx(out[0][1], rel=1e-5)
    torch.testing.assert_close(out[1][2], out[0][2], rtol=1e-5, atol=1e-6)
    # Invalid positions get no gradient at all.
    assert out[1][2][~valid].abs().sum() == 0


def test_padding_and_packing_change_nothing():
    """Per-document values are the same whether documents are packed together or padded alone."""
    torch.manual_seed(2)
    V, H = 9, 4
    la, lb = 5, 4
    sa, sb = torch.randn(1, la, V), torch.randn(1, lb, V)
    ta, tb = torch.randn(1, la, V), torch.randn(1, lb, V)
    ha, hb = torch.randn(1, la, H), torch.randn(1, lb, H)
    ga, gb = torch.randn(1, la, H), torch.randn(1, lb, H)
    ia, ib = torch.randint(0, V, (1, la)), torch.randint(0, V, (1, lb))
    cfg = LossConfig(kl_chunk_size=2)
    # packed: [a b] in one row
    packed = distillation_loss(cfg, torch.cat([sa, sb], 1), torch.cat([ta, tb], 1), [torch.cat([ha, hb], 1)],
                               [torch.cat([ga, gb], 1)], torch.cat([ia, ib], 1),
                               torch.tensor([[0] * la + [1] * lb]))

    def padded(s, t, h, g, i, n, pad=3):
        z = lambda x: torch.cat([x, torch.randn(1, pad, x.shape[-1]) * 100], 1)  # garbage in the padding
        return distillation_loss(cfg, z(s), z(t), [z(h)], [z(g)], torch.cat([i, torch.zeros(1, pad, dtype=torch.long)], 1),
                                 torch.tensor([[0] * n + [-1] * pad]))

    a, b = padded(sa, ta, ha, ga, ia, la), padded(sb, tb, hb, gb, ib, lb)
    assert packed.num_valid == a.num_valid + b.num_valid == la - 1 + lb - 1
    for name in ("total", "ce", "kl", "cosine"):
        assert float(getattr(packed, name)) == pytest.approx(float(getattr(a, name)) + float(getattr(b, name)),
                                                             rel=1e-5)


@pytest.mark.parametrize("T", [1.0, 1.5])
def test_teacher_with_a_padded_vocabulary(T):
    """A teacher whose logits have extra (padded) vocabulary entries: KL over the student's V, CE over all of
    the student's logits; the same values and gradients chunked or dense."""
    torch.manual_seed(3)
    B, S, V = 2, 5, 7
    valid = torch.ones(B, S, dtype=torch.bool)
    labels = torch.randint(0, V, (B, S))
    s0, t = torch.randn(B, S, V), torch.randn(B, S, V + 3)
    q = torch.log_softmax(s0 / T, -1)
    p = torch.softmax(t[..., :V] / T, -1)
    kl_ref = (p * (p.log() - q)).sum()
    ce_ref = torch.nn.functional.cross_entropy(s0.reshape(-1, V), labels.reshape(-1), reduction="sum")
    grads = []
    for c in (0, 3):
        s = s0.clone().requires_grad_(True)
        ce, kl = vocab_losses(s, t, labels, valid, T=T, chunk_size=c)
        assert ce.item() == pytest.approx(ce_ref.item(), rel=1e-5)
        assert kl.item() == pytest.approx(kl_ref.item(), rel=1e-5)
        (ce + 0.3 * kl).backward()
        grads.append(s.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)
