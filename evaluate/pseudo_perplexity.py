"""Masked-LM pseudo-perplexity (Salazar et al., 2020), batched.

Every non-special token of a text is masked in turn (one masked copy of the sequence per token);
the model's negative log-likelihood of the true token at the masked position is summed over the
corpus, and the corpus score is ``exp(sum NLL / number of scored tokens)``.

    from evaluate.pseudo_perplexity import load_texts, pseudo_perplexity
    texts = load_texts("Salesforce/wikitext", num_rows=100, dataset_config="wikitext-2-raw-v1")
    result = pseudo_perplexity(model, tokenizer, texts, batch_size=64, max_length=128)
    result.pseudo_perplexity

Texts longer than ``max_length`` tokens (special tokens included) are cut into consecutive
windows, each wrapped in the tokenizer's special tokens (``[CLS] ... [SEP]`` for BERT), so every
token of the text is scored once. Special tokens (``tokenizer.all_special_ids``, which includes
``[UNK]``) are never scored. Works with any ``*ForMaskedLM`` model whose forward takes
``input_ids`` and ``attention_mask`` and returns ``logits``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from boomerang.text import load_texts as read_texts
from boomerang.errors import BoomerangError


class PseudoPerplexityError(BoomerangError):
    pass


@dataclass
class PseudoPerplexity:
    """The corpus score and what it was computed from."""

    nll_sum: float
    num_tokens: int
    num_sequences: int
    # Per-sequence sums, in the order of ``sequences`` (useful for checks and per-text scores).
    sequence_nll: list[float] = field(default_factory=list, repr=False)

    @property
    def pseudo_perplexity(self) -> float:
        return math.exp(self.mean_nll)

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.num_tokens if self.num_tokens else float("nan")


# ---------------------------------------------------------------------------------------- text
def load_texts(source: str, num_rows: int | None = None, dataset_config: str | None = None, split: str = "test",
               column: str = "text") -> list[str]:
    """The first ``num_rows`` non-blank texts, stripped, of a local source (a .txt file: one text a line) or a
    ``datasets`` name (``boomerang.text.load_texts``), e.g. ``"Salesforce/wikitext"``, ``"wikitext-2-raw-v1"``."""
    if num_rows is not None and num_rows < 1:
        raise PseudoPerplexityError(f"num_rows must be a positive integer or None (all rows), got {num_rows!r}")
    texts = read_texts(source, split, column, dataset_config, flag="load_texts", lines=True)
    return [t.strip() for t in texts[:num_rows]]


def _special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a single text (``[CLS]`` / ``[SEP]`` for BERT)."""
    probe = "the"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return list(full[:i]), list(full[i + len(plain) :])
    raise PseudoPerplexityError("cannot tell which special tokens this tokenizer adds around a text (tokenizing "
                                "with and without special tokens gives unrelated ids)")


def encode_texts(tokenizer, texts: list[str], max_length: int = 128) -> list[list[int]]:
    """Token ids of every text, cut into windows of at most ``max_length`` ids including special tokens."""
    if isinstance(texts, str):
        raise PseudoPerplexityError("texts must be a list of strings, got a single string")
    prefix, suffix = _special_affixes(tokenizer)
    room = max_length - len(prefix) - len(suffix)
    if room < 1:
        raise PseudoPerplexityError(f"max_length {max_length} leaves no room for text after "
                                    f"{len(prefix) + len(suffix)} special tokens")
    limit = getattr(tokenizer, "model_max_length", None)
    if limit and limit < 10**9 and max_length > limit:
        raise PseudoPerplexityError(f"max_length {max_length} exceeds the tokenizer's model_max_length {limit}")
    sequences: list[list[int]] = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), room):
            sequences.append(prefix + list(ids[start : start + room]) + suffix)
    return sequences


def scored_positions(sequence: list[int], special_ids: set[int]) -> list[int]:
    return [i for i, t in enumerate(sequence) if t not in special_ids]


# ---------------------------------------------------------------------------------------- score
def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def pseudo_perplexity(model: torch.nn.Module, tokenizer, texts: list[str] | None = None, *,
                      sequences: list[list[int]] | None = None, batch_size: int = 64, max_length: int = 128,
                      progress: bool = True, desc: str | None = None) -> PseudoPerplexity:
    """Pseudo-perplexity of a masked LM on ``texts`` (or on already-encoded ``sequences``).

    All masked copies of all sequences are scored ``batch_size`` at a time (copies of similar
    length together, padded on the right). Runs on the model's device; log-probabilities are
    taken in float32 whatever the model's dtype.
    """
    if (texts is None) == (sequences is None):
        raise PseudoPerplexityError("give exactly one of texts and sequences")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise PseudoPerplexityError(f"batch_size must be a positive integer, got {batch_size!r}")
    mask_id = getattr(tokenizer, "mask_token_id", None)
    if mask_id is None:
        raise PseudoPerplexityError("the tokenizer has no mask token: pseudo-perplexity needs a masked-LM tokenizer "
                                    "(BERT, DistilBERT, ...)")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else mask_id
    if sequences is None:
        sequences = encode_texts(tokenizer, texts, max_length)
    max_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    longest = max((len(s) for s in sequences), default=0)
    if max_pos is not None and longest > max_pos:
        raise PseudoPerplexityError(f"a sequence has {longest} tokens but the model takes at most {max_pos}: "
                                    "lower max_length")
    special = set(tokenizer.all_special_ids)

    # One item per (sequence, position to mask); longest sequences first so batches pad little.
    order = sorted(range(len(sequences)), key=lambda s: -len(sequences[s]))
    items = [(s, p) for s in order for p in scored_positions(sequences[s], special)]
    device = _model_device(model)
    nll = torch.zeros(len(sequences), dtype=torch.float64)

    bar = tqdm(total=len(items), desc=desc or "pseudo-perplexity", unit="tok", leave=False, disable=not progress)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            width = max(len(sequences[s]) for s, _ in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attn = torch.zeros((len(batch), width), dtype=torch.long)
            targets = torch.empty(len(batch), dtype=torch.long)
            for b, (s, p) in enumerate(batch):
                seq = sequences[s]
                ids[b, : len(seq)] = torch.tensor(seq)
                attn[b, : len(seq)] = 1
                targets[b] = seq[p]
                ids[b, p] = mask_id
            positions = torch.tensor([p for _, p in batch])
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
            picked = logits[torch.arange(len(batch), device=device), positions.to(device)].float()
            token_nll = -torch.log_softmax(picked, dim=-1).gather(1, targets.to(device)[:, None])[:, 0]
            nll.index_add_(0, torch.tensor([s for s, _ in batch]), token_nll.double().cpu())
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    return PseudoPerplexity(float(nll.sum()), len(items), len(sequences), nll.tolist())

