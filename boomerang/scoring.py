"""How far a model's next-token distribution is from the teacher's, on fixed token sequences.

``TeacherReference`` runs the teacher once over a list of token sequences and keeps its next-token
log-probabilities; every model scored against it afterwards costs one forward pass. A score holds,
per sequence, the summed next-token NLL and the summed KL(teacher || model), so that perplexity, mean
KL per token and paired bootstrap intervals over sequences can all be derived from it.

Used by the sweeps (held-out KL next to perplexity) and by ``patching.search`` (the calibration KL).

Models assembled from the tensors of the same loaded models (patched sizes, searched candidates, pruned
teachers) share their first layers often: with ``cache_bytes``, the hidden state after each prefix of
layers is kept (keyed by the identity of those layers' tensors, and of the embeddings), and a later model
that starts with the same layers runs only the rest of them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch

from boomerang.assemble import LayerRef, ModelSource, assemble
from boomerang.families import UnsupportedModelError, adapter_for_config


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


def nll_and_kl(logits: torch.Tensor, teacher_probs: torch.Tensor, teacher_plogp: float,
               targets: torch.Tensor) -> tuple[float, float]:
    """Summed NLL of ``targets`` and summed KL(teacher || model) over positions, from a model's [N, V] logits z,
    the teacher's probabilities p ([N, V]) and their constant ``teacher_plogp`` = sum p log p.

    KL = sum p log p - sum p z + sum logsumexp(z) (the teacher's probabilities sum to 1 at each position): one
    logsumexp and one dot product per position, instead of the model's whole log-softmax and the teacher's
    log-probabilities exponentiated again for every model scored.
    """
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    nll = (lse - logits.gather(-1, targets[:, None])[:, 0]).double().sum().item()
    dots = torch.bmm(teacher_probs[:, None, :], logits[:, :, None]).view(-1)
    kl = teacher_plogp - dots.double().sum().item() + lse.double().sum().item()
    return nll, max(kl, 0.0)  # >= 0 in exact arithmetic; rounding leaves the teacher itself a hair either side


def _tensor_key(t: torch.Tensor) -> tuple:
    # what a layer computes with: the storage it reads (address and place), and the in-place version of it
    return (t.data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype, str(t.device), t._version)


def _depth(model) -> int:
    try:
        adapter = adapter_for_config(model.config)
    except UnsupportedModelError:
        return 0
    return adapter.num_layers(model.config)


class PrefixCache:
    """Hidden states after the first layers of a model, for reuse by models that start with the same layers.

    A prefix is keyed by the identity of its tensors (the embeddings, then each layer's parameters and
    buffers), so that models assembled from shared tensors find each other's states and nothing else does.
    An entry keeps the tensors of its prefix alive: a freed model's memory can then never be taken by
    another model's tensors at the same address (a false match). Bounded by ``max_bytes`` of hidden
    states; the least recently used entries go first.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self.entries: "OrderedDict[tuple, tuple[torch.Tensor, tuple]]" = OrderedDict()

    @staticmethod
    def signature(model) -> tuple[tuple, list[tuple], list[tuple]] | None:
        """``(base, layer keys, layer tensors)`` of a model whose forward can start from a cached hidden state,
        else None (a family that adds to ``inputs_embeds``, as GPT-2 adds position embeddings)."""
        try:
            adapter = adapter_for_config(model.config)
        except UnsupportedModelError:
            return None
        if not adapter.inputs_embeds_is_hidden_state:
            return None
        layers = adapter.get_layers(model)
        prefix = adapter.layer_prefix()
        # what runs before layer 0 besides the embeddings: the model's own buffers (rotary frequencies), made anew
        # for every assembled model, so compared by value (by identity when large)
        model_buffers = tuple((n, tuple(b.shape), b.dtype, tuple(b.flatten().tolist()) if b.numel() <= 4096
                               else _tensor_key(b)) for n, b in model.named_buffers() if not n.startswith(prefix))
        emb = model.get_input_embeddings().weight
        base = (_tensor_key(emb), model_buffers, str(getattr(model.config, "_attn_implementation", "")))
        keys, tensors = [], []
        for layer in layers:
            ts = tuple(layer.parameters()) + tuple(layer.buffers())
            keys.append(tuple(_tensor_key(t) for t in ts) + (getattr(layer, "attention_type", None),))
            tensors.append(ts)
        return base, keys, [emb, *tensors]

    def get(self, key: tuple) -> torch.Tensor | None:
        hit = self.entries.get(key)
        if hit is None:
            return None
        self.entries.move_to_end(key)
        return hit[0]

    def put(self, key: tuple, h: torch.Tensor, keep_alive: tuple) -> None:
        if key in self.entries or h.numel() * h.element_size() > self.max_bytes:
            return
        self.entries[key] = (h, keep_alive)
        self.bytes += h.numel() * h.element_size()
        while self.bytes > self.max_bytes:
            old, _ = self.entries.popitem(last=False)[1]
            self.bytes -= old.numel() * old.element_size()


class TeacherReference:
    """The teacher's next-token distributions on ``sequences`` (each a [1, T] tensor of token ids).

    Its probabilities are kept in float32 on the CPU: ``sum(T - 1) * vocab * 4`` bytes (25 documents of 512
    tokens, 49k vocabulary: 2.5 GB).
    Sequences of equal length run ``batch_size`` at a time. ``cache_bytes`` > 0: a ``PrefixCache`` of that many
    bytes of hidden states serves the models scored afterwards; ``stats`` counts layer passes run and reused.
    """

    def __init__(self, teacher, sequences: list[torch.Tensor], batch_size: int = 4, cache_bytes: int = 0):
        if not sequences:
            raise ValueError("TeacherReference needs at least one sequence")
        self.sequences = [s if s.dim() == 2 else s[None] for s in sequences]
        short = [i for i, s in enumerate(self.sequences) if s.shape[1] < 2]
        if short:
            raise ValueError(f"sequences {short} have fewer than 2 tokens: nothing to predict")
        self.batches = []  # (first, stop): runs of equal-length sequences, at most batch_size each
        i = 0
        while i < len(self.sequences):
            j = i + 1
            while (j < len(self.sequences) and j - i < batch_size
                   and self.sequences[j].shape[1] == self.sequences[i].shape[1]):
                j += 1
            self.batches.append((i, j))
            i = j
        self.cache = PrefixCache(cache_bytes) if cache_bytes > 0 else None
        self.stats = {"models_scored": 0, "layers_run": 0, "layers_reused": 0}
        self.probs, self.plogp = [], []  # per sequence: the teacher's [T - 1, V] probabilities and sum p log p
        for logits in self._logits(teacher, cached=False):
            logp = torch.log_softmax(logits.float(), dim=-1)
            self.probs.append(logp.exp())
            self.plogp.append((self.probs[-1] * logp).double().sum().item())

    @torch.no_grad()
    def _logits(self, model, cached: bool = True):
        """Each sequence's [T - 1, V] logits, in order."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        sig = PrefixCache.signature(model) if cached and self.cache is not None else None
        suffixes = {}  # start layer -> the model of the layers from there on (built once per model)
        try:
            for b, (i, j) in enumerate(self.batches):
                ids = torch.cat(self.sequences[i:j]).to(device)
                if sig:
                    logits = self._forward(model, b, ids, sig, suffixes)
                else:
                    logits = model(input_ids=ids).logits
                    if cached:
                        self.stats["layers_run"] += _depth(model)
                for row in logits:
                    yield row[:-1].float().cpu()
        finally:
            model.train(was_training)

    def _forward(self, model, b: int, ids: torch.Tensor, sig, suffixes: dict) -> torch.Tensor:
        base, keys, tensors = sig
        n, start, h = len(keys), 0, None
        for m in range(n - 1, -1, -1):  # the longest cached prefix (at least one layer is run)
            h = self.cache.get((b, base, *keys[:m]))
            if h is not None:
                start = m
                break
        if h is None:
            h = model.get_input_embeddings()(ids)
        if start not in suffixes:
            if start == 0:
                suffixes[0] = model
            else:
                src = ModelSource(model)
                suffixes[start] = assemble(src, [LayerRef(src, i) for i in range(start, n)], copy_untied_head=False)
        out = suffixes[start](inputs_embeds=h, output_hidden_states=True)
        for m in range(start, n):  # hidden_states[m - start]: the input of layer m
            self.cache.put((b, base, *keys[:m]), out.hidden_states[m - start], tuple(tensors[:m + 1]))
        self.stats["layers_run"] += n - start
        self.stats["layers_reused"] += start
        return out.logits

    @property
    def tokens(self) -> list[int]:
        return [s.shape[1] - 1 for s in self.sequences]

    def score_logits(self, index: int, logits: torch.Tensor) -> tuple[float, float]:
        """(summed NLL, summed KL) of sequence ``index`` from a model's [T - 1, V] logits."""
        return nll_and_kl(logits, self.probs[index], self.plogp[index], self.sequences[index][0, 1:])

    def score(self, model) -> Scores:
        """Score a model (one forward pass per batch of sequences, from a cached prefix where one matches)."""
        pairs = [self.score_logits(i, logits) for i, logits in enumerate(self._logits(model))]
        self.stats["models_scored"] += 1
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
