"""The distillation loss: cross-entropy + KL(teacher || student) + cosine distance of aligned hidden states.

    loss = CE(student, next token)
         + kl_loss_weight * T^2 * KL(softmax(teacher/T) || softmax(student/T))
         + sum over aligned pairs of (cosine_loss_weight / #pairs) * (1 - cos(h_student, h_teacher))

Every term is averaged over the *valid* positions only: a position is valid when it is not padding
and its next token belongs to the same document (``valid_positions``). The same mask is used by
all three terms, so packing documents together or padding them changes no term.

All functions return *sums* over valid positions; the trainer divides by the number of valid positions of the
whole optimizer step (all micro-batches, all ranks), which makes gradient accumulation and data parallelism
exact: 8 sequences in one micro-batch, 2 x 4, or 4 processes x 2 give the same update.

The vocabulary terms (CE and KL) are computed ``chunk_size`` positions at a time under activation
checkpointing: only one chunk's fp32 probabilities exist at a time, in the forward and in the backward
pass; the full ``tokens x vocabulary`` fp32 tensors are never materialized.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class LossConfig:
    use_cross_entropy: bool = True
    use_kl_loss: bool = True
    kl_loss_weight: float = 0.1
    T: float = 1.0
    use_cosine_loss: bool = True
    cosine_loss_weight: float = 2.0
    kl_chunk_size: int = 1024  # positions per chunk; 0 = dense (all positions at once, no checkpointing)

    def __post_init__(self):
        if self.T <= 0:
            raise ValueError(f"--T (temperature) must be > 0, got {self.T}")
        if not (self.use_cross_entropy or self.use_kl_loss or self.use_cosine_loss):
            raise ValueError("all loss terms are switched off: enable at least one of --use_cross_entropy, "
                             "--use_kl_loss, --use_cosine_loss")
        if self.kl_chunk_size < 0:
            raise ValueError(f"--kl_chunk_size must be >= 0 (0 = dense), got {self.kl_chunk_size}")


def valid_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """Bool mask [B, S]: position i counts when it and position i+1 hold tokens of the same document
    (``doc_ids``: a document number per token, -1 for padding). The last position of a row never counts."""
    same = (doc_ids[:, :-1] == doc_ids[:, 1:]) & (doc_ids[:, :-1] >= 0)
    return torch.cat([same, torch.zeros_like(same[:, :1])], dim=1)


def next_token_labels(input_ids: torch.Tensor, valid: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    labels = torch.full_like(input_ids, ignore_index)
    labels[:, :-1] = input_ids[:, 1:]
    return labels.masked_fill(~valid, ignore_index)


def _vocab_chunk(s, t, y, T: float, want_ce: bool, want_kl: bool):
    """(CE sum, KL sum) in fp32 over rows of student logits ``s`` [N, V], teacher logits ``t`` and labels ``y``.

    At T = 1 with one vocabulary size (the usual case) the student's log-softmax is computed once and serves both
    terms; KL = sum p (log p - log q) with p the teacher's softmax (no gradient)."""
    s = s.float()
    zero = s.new_zeros(())
    if not want_kl:
        return (F.cross_entropy(s, y, reduction="sum") if want_ce else zero), zero
    # Teacher and student share the tokenizer; some checkpoints pad the embedding matrix differently.
    shared = T == 1.0 and t.shape[-1] == s.shape[-1]
    log_q = F.log_softmax(s if shared else s[:, :t.shape[-1]] / T, dim=-1)
    if want_ce:
        ce = F.nll_loss(log_q, y, reduction="sum") if shared else F.cross_entropy(s, y, reduction="sum")
    else:
        ce = zero
    with torch.no_grad():
        log_p = F.log_softmax(t.float() if T == 1.0 else t.float() / T, dim=-1)
        p = log_p.exp()
        plogp = (p * log_p).sum()
    return ce, plogp - (p * log_q).sum()


def vocab_losses(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
                 valid: torch.Tensor, T: float = 1.0, want_ce: bool = True, want_kl: bool = True,
                 chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE sum, KL sum) over the valid positions; KL is *not* multiplied by T^2 or a weight here.

    ``chunk_size`` > 0: positions are processed in chunks under ``torch.utils.checkpoint`` so fp32
    log-probabilities exist for one chunk at a time (also in the backward pass). 0: dense. The valid rows are
    gathered once and split with ``torch.split``, whose backward joins the chunks' gradients in one pass.
    """
    V = student_logits.shape[-1]
    idx = valid.reshape(-1).nonzero(as_tuple=True)[0]
    s = student_logits.reshape(-1, V).index_select(0, idx)
    t = teacher_logits.reshape(-1, teacher_logits.shape[-1]).index_select(0, idx)[:, :V] if want_kl else None
    y = labels.reshape(-1).index_select(0, idx)
    ce = kl = student_logits.new_zeros((), dtype=torch.float32)
    n = s.shape[0]
    if n == 0:
        return ce + 0.0 * student_logits.sum(), kl
    step = chunk_size if chunk_size > 0 else n
    chunked = chunk_size > 0 and torch.is_grad_enabled() and s.requires_grad
    t_parts = t.split(step) if want_kl else (None,) * -(-n // step)
    for s_i, t_i, y_i in zip(s.split(step), t_parts, y.split(step)):
        args = (s_i, t_i, y_i, T, want_ce, want_kl)
        c, k = checkpoint(_vocab_chunk, *args, use_reentrant=False) if chunked else _vocab_chunk(*args)
        ce, kl = ce + c, kl + k
    return ce, kl


def cosine_loss_sum(student_hidden: list[torch.Tensor], teacher_hidden: list[torch.Tensor],
                    valid: torch.Tensor) -> torch.Tensor:
    """Sum over valid positions of the *mean over pairs* of (1 - cosine similarity); times
    ``cosine_loss_weight`` it is the paper's weighting, ``cosine_loss_weight / #pairs`` for each pair."""
    if len(student_hidden) != len(teacher_hidden) or not student_hidden:
        raise ValueError(f"need matching non-empty lists of hidden states, got {len(student_hidden)} "
                         f"and {len(teacher_hidden)}")
    m = valid.reshape(-1)
    return sum((1.0 - F.cosine_similarity(hs.reshape(-1, hs.shape[-1])[m].float(),
                                          ht.reshape(-1, ht.shape[-1])[m].float(), dim=-1, eps=1e-8)).sum()
               for hs, ht in zip(student_hidden, teacher_hidden)) / len(student_hidden)


@dataclass
class LossTerms:
    """Per-term *sums* over valid positions (divide by ``num_valid`` for means) and the weighted total.

    Tensors as the loss functions return them; ``+`` and ``/`` give Python floats (what the trainer sums over
    micro-batches and processes and logs)."""

    total: torch.Tensor | float
    ce: torch.Tensor | float
    kl: torch.Tensor | float
    cosine: torch.Tensor | float
    num_valid: int

    def values(self) -> list:
        """total, ce, kl, cosine, detached (for sums and logs, not for backward)."""
        return [v.detach() if isinstance(v, torch.Tensor) else v for v in (self.total, self.ce, self.kl, self.cosine)]

    def __add__(self, other: "LossTerms") -> "LossTerms":
        return LossTerms(*(float(a) + float(b) for a, b in zip(self.values(), other.values())),
                         num_valid=self.num_valid + other.num_valid)

    def __truediv__(self, denominator: float) -> "LossTerms":
        return LossTerms(*(float(v) / denominator for v in self.values()), num_valid=self.num_valid)

    @classmethod
    def weighted(cls, cfg: LossConfig, ce, kl, cos, num_valid: int) -> "LossTerms":
        """The terms switched on, weighted: CE + kl_loss_weight * T^2 * KL + cosine_loss_weight * cosine."""
        total = ce.new_zeros(())
        if cfg.use_cross_entropy:
            total = total + ce
        if cfg.use_kl_loss:
            total = total + cfg.kl_loss_weight * cfg.T ** 2 * kl
        if cfg.use_cosine_loss:
            total = total + cfg.cosine_loss_weight * cos
        return cls(total=total, ce=ce.detach(), kl=kl.detach(), cosine=cos.detach(), num_valid=num_valid)


def distillation_loss(cfg: LossConfig, student_logits, teacher_logits, student_hidden, teacher_hidden,
                      input_ids, doc_ids) -> LossTerms:
    """Weighted loss *sum* over valid positions (see the module docstring) and its unweighted terms."""
    valid = valid_positions(doc_ids)
    ce, kl = vocab_losses(student_logits, teacher_logits, next_token_labels(input_ids, valid), valid, cfg.T,
                          cfg.use_cross_entropy, cfg.use_kl_loss, cfg.kl_chunk_size)
    cos = cosine_loss_sum(student_hidden, teacher_hidden, valid) if cfg.use_cosine_loss else ce.new_zeros(())
    return LossTerms.weighted(cfg, ce, kl, cos, int(valid.sum()))


# ------------------------------------------------------------------------------------ the paper's recipe
def paper_loss(cfg: LossConfig, student_logits, teacher_logits, student_hidden, teacher_hidden, attention_mask,
               labels) -> LossTerms:
    """The loss of one micro-batch exactly as the paper's ``BoomerangDistillationTrainer.compute_loss``:

    - CE: ``CrossEntropyLoss()`` (mean over labels that are not -100) of logits[:, :-1] against labels[:, 1:];
    - KL: ``KLDivLoss(reduction="batchmean")`` of log_softmax(student / T) against softmax(teacher / T), both
      viewed as [B·S, V]: the sum over *every* position, padding included, divided by B·S; times T²;
    - cosine: for each aligned pair, ``CosineEmbeddingLoss`` with target 1 (the mean of 1 - cos) over the
      positions where ``attention_mask > 0``, weighted ``cosine_loss_weight / #pairs``.

    Returns *means* (``total`` is the micro-batch loss the paper back-propagates; ``num_valid`` counts the CE
    targets).
    """
    V = student_logits.shape[-1]
    ce = kl = cos = student_logits.new_zeros((), dtype=torch.float32)
    y = labels[:, 1:].reshape(-1)
    if cfg.use_cross_entropy:
        ce = F.cross_entropy(student_logits[:, :-1].reshape(-1, V).float(), y, ignore_index=-100)
    if cfg.use_kl_loss:
        s = F.log_softmax(student_logits.reshape(-1, V).float() / cfg.T, dim=-1)
        t = F.softmax(teacher_logits.reshape(-1, teacher_logits.shape[-1]).float() / cfg.T, dim=-1)
        kl = F.kl_div(s, t, reduction="batchmean")
    if cfg.use_cosine_loss:
        m = attention_mask.reshape(-1) > 0
        parts = []
        for hs, ht in zip(student_hidden, teacher_hidden):
            a, b = hs.reshape(-1, hs.shape[-1])[m].float(), ht.reshape(-1, ht.shape[-1])[m].float()
            parts.append(F.cosine_embedding_loss(b, a, a.new_ones(a.shape[0])))  # (teacher, student, target 1)
        cos = torch.stack(parts).mean()
    return LossTerms.weighted(cfg, ce, kl, cos, int((y != -100).sum()))
