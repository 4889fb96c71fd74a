"""The shared world of the paper-reference run: a tiny teacher pair and a corpus both environments read alike.

Runs in either environment (this project's, and the paper's pinned one, where bench/paper_reference/harness.py
imports it by file path): only the standard library at import; torch, transformers and the tiny configs
(tests/tiny_models.py) are imported by the functions that build a teacher, which run in this project's
environment only.

Every document names itself: its first three words spell its number in base ``ID_BASE`` (word ``FIRST_ID_TOKEN + d``
is digit ``d``), so the document ids of a batch are read back from its token ids alone (``doc_ids_of``), in either
environment, with no hook into either trainer's data pipeline.
"""

from __future__ import annotations

import json
import os
import random

FAMILIES = ("llama", "qwen3")
NUM_LAYERS = 8
NUM_DOCUMENTS = 160_000  # > 50,000 skipped + 100,000 buffered: the buffer fills, replaces slots, then drains
NUM_FILES = 4  # the corpus folder holds several files (several shards of the streamed dataset)
ID_BASE = 100
FIRST_ID_TOKEN = 4  # token ids 4..103 are the id digits; 0-3 are <pad> <s> </s> <unk>
ID_DIGITS = 3


def write_corpus(folder: str, num_documents: int = NUM_DOCUMENTS, num_files: int = NUM_FILES,
                 vocabulary: list[str] | None = None, seed: int = 0) -> str:
    """``num_files`` JSON-lines files ``part-K.jsonl`` of short documents {"id", "text"}, deterministic for ``seed``:
    three id words, then 0-19 filler words (so a document is 4-23 tokens with its BOS: some truncated at 16, most
    padded). ``vocabulary``: the tokenizer's words by id (default: the tiny tokenizer's)."""
    words = vocabulary or _tiny_vocabulary()
    filler = words[FIRST_ID_TOKEN:]
    rng = random.Random(seed)
    os.makedirs(folder, exist_ok=True)
    per_file = -(-num_documents // num_files)
    for k in range(num_files):
        lines = []
        for i in range(k * per_file, min(num_documents, (k + 1) * per_file)):
            digits = [(i // ID_BASE ** p) % ID_BASE for p in reversed(range(ID_DIGITS))]
            body = [words[FIRST_ID_TOKEN + d] for d in digits] + [rng.choice(filler) for _ in range(rng.randrange(20))]
            lines.append(json.dumps({"id": i, "text": " ".join(body)}) + "\n")
        tmp = os.path.join(folder, f".part-{k}.jsonl.tmp")
        with open(tmp, "w") as f:
            f.writelines(lines)
        os.replace(tmp, os.path.join(folder, f"part-{k}.jsonl"))
    return folder


def doc_ids_of(input_ids, bos_token_id: int | None = 1) -> list[int]:
    """The document number of each row of ``input_ids`` (nested lists or a tensor [B, S]), read from its id words."""
    rows = input_ids.tolist() if hasattr(input_ids, "tolist") else input_ids
    out = []
    for row in rows:
        start = 1 if bos_token_id is not None and row[0] == bos_token_id else 0
        n = 0
        for t in row[start:start + ID_DIGITS]:
            d = t - FIRST_ID_TOKEN
            if not 0 <= d < ID_BASE:
                raise ValueError(f"row {row[:8]}... does not start with {ID_DIGITS} id words")
            n = n * ID_BASE + d
        out.append(n)
    return out


def tensor_summary(named_tensors) -> dict:
    """{name: [sum, sum of |x|, x at flat positions 0, n/3, 2n/3, n-1]} in float64 (a checksum and a few values)."""
    out = {}
    for name, t in named_tensors:
        flat = t.detach().reshape(-1).double()
        n = flat.numel()
        picks = [flat[i].item() for i in (0, n // 3, 2 * n // 3, n - 1)]
        out[name] = [flat.sum().item(), flat.abs().sum().item(), *picks]
    return out


# ------------------------------------------------------------------ this project's environment only
def _tiny_vocabulary() -> list[str]:
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as d:
        save_tokenizer(d)
        tok = AutoTokenizer.from_pretrained(d)
        return tok.convert_ids_to_tokens(list(range(len(tok))))


def save_tokenizer(path: str) -> None:
    """The tiny word-level tokenizer with a BOS added to every text (as Llama 3.2's tokenizer does), its
    tokenizer_config.json naming ``PreTrainedTokenizerFast`` so that transformers 4.51 and 5.x both load it."""
    import tiny_models
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    tiny_models.save_tiny_tokenizer(path)
    tok_file = os.path.join(path, "tokenizer.json")
    tok = Tokenizer.from_file(tok_file)
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tok.save(tok_file)
    cfg_file = os.path.join(path, "tokenizer_config.json")
    with open(cfg_file) as f:
        cfg = json.load(f)
    cfg.update(tokenizer_class="PreTrainedTokenizerFast", model_max_length=1 << 20)
    cfg.pop("backend", None)
    with open(cfg_file, "w") as f:
        json.dump(cfg, f, indent=2)


def teacher_config(family: str):
    """The tiny config of ``family`` (tests/tiny_models.py), with full attention in every layer (Qwen3's tiny
    config slides a window on its upper layers, which transformers 4.51 and 5.x assign differently after a cut)."""
    import tiny_models

    cfg = tiny_models.TINY_DECODERS[family](NUM_LAYERS)
    if family == "qwen3":
        cfg.use_sliding_window = False
        cfg.layer_types = ["full_attention"] * NUM_LAYERS
    return cfg


def save_teacher(path: str, family: str, seed: int = 0) -> str:
    """A tiny random teacher of ``family`` and the tokenizer, loadable by transformers 4.51.3 and 5.x alike
    (config.json also states ``rope_theta`` and ``torch_dtype``, the 4.x names)."""
    import tiny_models

    model = tiny_models.build(teacher_config(family), seed)
    model.save_pretrained(path)
    save_tokenizer(path)
    cfg_file = os.path.join(path, "config.json")
    with open(cfg_file) as f:
        cfg = json.load(f)
    cfg.update(rope_theta=cfg.get("rope_parameters", {}).get("rope_theta", 10000.0), torch_dtype="float32")
    with open(cfg_file, "w") as f:
        json.dump(cfg, f, indent=2)
    return path


def make_world(folder: str) -> dict:
    """Teachers ``folder/<family>-teacher`` and the corpus ``folder/corpus``; returns their paths."""
    world = {f: save_teacher(os.path.join(folder, f"{f}-teacher"), f) for f in FAMILIES}
    world["corpus"] = write_corpus(os.path.join(folder, "corpus"))
    return world
