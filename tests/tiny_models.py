"""Tiny random models of every supported family, built from configs in code (no downloads).

Hidden 32-64, 4-8 layers, a 128-token vocabulary: each builds and runs in milliseconds on a CPU.
``TINY_DECODERS`` maps a family name to a function returning its config for ``num_layers`` layers.
"""

from __future__ import annotations

import torch
import transformers

VOCAB = 128


def _common(num_layers: int) -> dict:
    return dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def llama(num_layers: int = 8, tie: bool = True):
    return transformers.LlamaConfig(**_common(num_layers), tie_word_embeddings=tie)


def mistral(num_layers: int = 8, tie: bool = False):
    return transformers.MistralConfig(**_common(num_layers), sliding_window=16, tie_word_embeddings=tie)


def qwen2(num_layers: int = 8, tie: bool = True):
    # Sliding-window attention on the upper layers, so per-layer settings differ and must follow the layers.
    return transformers.Qwen2Config(
        **_common(num_layers), use_sliding_window=True, sliding_window=16, max_window_layers=num_layers // 2,
        tie_word_embeddings=tie,
    )


def qwen3(num_layers: int = 8, tie: bool = True):
    return transformers.Qwen3Config(
        **_common(num_layers), head_dim=16, use_sliding_window=True, sliding_window=16,
        max_window_layers=num_layers // 2, tie_word_embeddings=tie,
    )


def gemma3_text(num_layers: int = 8, tie: bool = True):
    return transformers.Gemma3TextConfig(
        **_common(num_layers), head_dim=16, sliding_window=16, tie_word_embeddings=tie,
        query_pre_attn_scalar=16,
    )


def gpt_neox(num_layers: int = 8, tie: bool = False):
    return transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers, num_attention_heads=4,
        max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=tie,
        rotary_pct=0.5,
    )


def gpt2(num_layers: int = 8, tie: bool = True):
    return transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=num_layers, n_head=4, n_positions=256, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, tie_word_embeddings=tie,
    )


TINY_DECODERS = {
    "llama": llama,
    "mistral": mistral,
    "qwen2": qwen2,
    "qwen3": qwen3,
    "gemma3_text": gemma3_text,
    "gpt_neox": gpt_neox,
    "gpt2": gpt2,
}


def bert(num_layers: int = 12):
    return transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers, num_attention_heads=4,
        max_position_embeddings=128, pad_token_id=0,
    )


def distilbert(num_layers: int = 6):
    return transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=32, hidden_dim=64, n_layers=num_layers, n_heads=4, max_position_embeddings=128,
        pad_token_id=0,
    )


def build(config, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A randomly initialized model of ``config`` (deterministic for a seed), in eval mode."""
    torch.manual_seed(seed)
    auto = transformers.AutoModelForMaskedLM if config.model_type in ("bert", "distilbert") else transformers.AutoModelForCausalLM
    model = auto.from_config(config, dtype=dtype)
    # Random init gives near-identical layers' outputs a small scale; widen weights so that every
    # layer measurably changes the output (tests compare logits, not noise).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    return model.eval()


def save_tiny_tokenizer(path: str) -> None:
    """A word-level tokenizer over the tiny vocabulary (a few real words, then filler tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>", "the", "a", "of", "and", "to", "in", "is", "was", "he", "it", "that",
             "for", "on", "with", "as", "his", "by", "at", "be", "this", "had", "not", "are", "but", "from", "or",
             "have", "an", "they", "which", "one", "you", "were", "her", "all", "she", "there", "would", "their",
             "we", "him", "been", "has", "when", "who", "will", "more", "no", "if", "out", "so", "said", "what",
             "up", "its", "about", "into", "than", "them", "can", "only", "other", "new", "some", "could", "time",
             "these", "two", "may", "then", "do", "first", "any", "my", "now", "such", "like", "our", "over",
             "man", "me", "even", "most", "made", "after", "also", "did", "many", "before", "must", "through",
             "back", "years", "where", "much", "your", "way", "well", "down", "should", "because", "each", "just",
             "those", "people", "how", "too", "little", "state", "good", "very", "make", "world", "still", "own",
             "see", "men", "work", "long", "get", "here", ".", ","]
    vocab = {w: i for i, w in enumerate(words[:VOCAB])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        mask_token="<unk>",
    )
    fast.save_pretrained(path)


def save_tiny_model(path: str, config, seed: int = 0) -> str:
    """Save a tiny random model and a tokenizer to ``path`` (a loadable Hugging Face folder)."""
    model = build(config, seed)
    model.save_pretrained(path)
    save_tiny_tokenizer(path)
    return path


WORDS = "the a of and to in is was he it that for on with as his by at be this had not are but from or".split()


def _doc(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n)) + " ."


def make_world(tmp_path, heldout_docs=20, train_docs=40):
    """A tiny 8-layer Llama teacher folder and a data folder shaped like ../shared/data (Brown train and
    held-out, five multiple-choice tasks of 8 items); returns (teacher folder, data folder, out path)."""
    import json
    import random

    rng = random.Random(0)
    teacher = save_tiny_model(str(tmp_path / "teacher"), llama(8))
    data = tmp_path / "data"
    (data / "corpus").mkdir(parents=True)
    (data / "tasks").mkdir()
    for name, n in (("brown_train", train_docs), ("brown_heldout", heldout_docs)):
        with open(data / "corpus" / f"{name}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({"id": str(i), "genre": "x", "text": _doc(rng, 300)}) + "\n")
    for task in ("arc_easy", "piqa", "boolq", "openbook_qa", "copa"):
        with open(data / "tasks" / f"{task}.jsonl", "w") as f:
            for i in range(8):
                f.write(json.dumps({"query": _doc(rng, 6), "choices": [_doc(rng, 2), _doc(rng, 3)], "gold": i % 2}) + "\n")
    return teacher, str(data), tmp_path / "out"
