"""How far a model's next-token distribution is from the teacher's, on fixed token sequences.

``TeacherReference`` runs the teacher once over a list of token sequences and keeps its next-token
log-probabilities; every model scored against it afterwards costs one forward pass. A score holds,
per sequence, the summed next-token NLL and the summed KL(teacher || model), so that perplexity, mean
KL per token and paired bootstrap intervals over sequences can all be derived from it.

Used by the sweeps (held-out KL next to perplexity) and by ``patching.search`` (the calibration KL).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Scores:
    """Per-sequence sums: ``nll[i]`` (next-token NLL), ``kl[i]`` (KL(teacher || model)), ``tokens[i]``."""

    nll: list[float]
    kl: list[float]
    tokens: list[int]

    @property
    def token_perplexity(self) -> float:
        return math.exp(sum(self.nll) / sum(self.tokens))

    @property
    def kl_per_token(self) -> float:
        return sum(self.kl) / sum(self.tokens)

    def to_dict(self) -> dict:
        return {"token_perplexity": self.token_perplexity, "kl_per_token": self.kl_per_token,
                "tokens": sum(self.tokens), "documents": len(self.tokens),
                "document_nll": self.nll, "document_kl": self.kl, "document_tokens": self.tokens}

    @classmethod
    def from_dict(cls, d: dict) -> "Scores":
        return cls(list(d["document_nll"]), list(d["document_kl"]), list(d["document_tokens"]))


def nll_and_kl(logits: torch.Tensor, teacher_logprobs: torch.Tensor, targets: torch.Tensor,
               chunk: int = 512) -> tuple[float, float]:
    """Summed NLL of ``targets`` and summed KL(teacher || model) over positions ([N, V] logits), in chunks."""
    nll = kl = 0.0
    for i in range(0, logits.shape[0], chunk):
        lp = torch.log_softmax(logits[i:i + chunk].float(), dim=-1)
        tlp = teacher_logprobs[i:i + chunk]
        nll -= lp.gather(-1, targets[i:i + chunk, None]).sum().item()
        kl += (tlp.exp() * (tlp - lp)).sum().item()
    return nll, kl


class TeacherReference:
    """The teacher's next-token log-probabilities on ``sequences`` (each a [1, T] tensor of token ids).

    Kept in float32 on the CPU: ``sum(T - 1) * vocab * 4`` bytes (25 documents of 512 tokens, 49k vocabulary: 2.5 GB).
    """

    def __init__(self, teacher, sequences: list[torch.Tensor]):
        if not sequences:
            raise ValueError("TeacherReference needs at least one sequence")
        self.sequences = [s if s.dim() == 2 else s[None] for s in sequences]
        short = [i for i, s in enumerate(self.sequences) if s.shape[1] < 2]
        if short:
            raise ValueError(f"sequences {short} have fewer than 2 tokens: nothing to predict")
        self.logprobs = [torch.log_softmax(logits.float(), dim=-1) for logits in self._logits(teacher)]

    @torch.no_grad()
    def _logits(self, model, batch_size: int = 4):
        """Each sequence's [T - 1, V] logits, in order; sequences of equal length run as one batch."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            i = 0
            while i < len(self.sequences):
                j = i + 1
                while (j < len(self.sequences) and j - i < batch_size
                       and self.sequences[j].shape[1] == self.sequences[i].shape[1]):
                    j += 1
                logits = model(input_ids=torch.cat(self.sequences[i:j]).to(device)).logits
                for row in logits:
                    yield row[:-1].float().cpu()
                i = j
        finally:
            model.train(was_training)

    @property
    def tokens(self) -> list[int]:
        return [s.shape[1] - 1 for s in self.sequences]

    def score_logits(self, index: int, logits: torch.Tensor) -> tuple[float, float]:
        """(summed NLL, summed KL) of sequence ``index`` from a model's [T - 1, V] logits."""
        return nll_and_kl(logits, self.logprobs[index], self.sequences[index][0, 1:])

    def score(self, model) -> Scores:
        """Score a model (one forward pass per sequence)."""
        pairs = [self.score_logits(i, logits) for i, logits in enumerate(self._logits(model))]
        return Scores([nll for nll, _ in pairs], [kl for _, kl in pairs], self.tokens)


def encode_documents(tokenizer, texts: list[str], max_tokens: int, docs: int | None = None) -> list[torch.Tensor]:
    """The first ``docs`` texts, each tokenized (no special tokens) and cut to ``max_tokens``; shorter than 2 dropped.
    """
    out = []
    for text in texts[:docs] if docs is not None else texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
        if len(ids) >= 2:
            out.append(torch.tensor([ids]))
    return out


def fixed_length_sequences(tokenizer, texts: list[str], samples: int, seq_len: int, data_flag: str = "data",
                           samples_flag: str = "samples", seq_len_flag: str = "seq_len") -> torch.Tensor:
    """[samples, seq_len] token ids: the first ``seq_len`` tokens of each of the first texts that long (no
    padding, so every position of every row counts). Too few such texts: ValueError naming the flags."""
    rows = []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(ids) >= seq_len:
            rows.append(ids[:seq_len])
        if len(rows) == samples:
            break
    if len(rows) < samples:
        raise ValueError(f"{data_flag} has only {len(rows)} documents of at least {seq_len_flag} {seq_len} tokens, "
                         f"{samples} asked for ({samples_flag}): lower one of them")
    return torch.tensor(rows)
