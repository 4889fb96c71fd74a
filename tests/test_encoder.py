"""BERT <- DistilBERT boomerang patching and masked-LM pseudo-perplexity, on tiny random encoders."""

from __future__ import annotations

import math

import pytest
import torch

import tiny_models
from boomerang.families import count_parameters
from boomerang.text import DataError
from evaluate.pseudo_perplexity import (
    PseudoPerplexityError,
    encode_texts,
    load_texts,
    pseudo_perplexity,
)
from patching.encoder import (
    EncoderPatchError,
    bert_config_from_distilbert,
    distilbert_layer_map,
    distilbert_layer_to_bert,
    distilbert_to_bert,
    interpolated_encoder,
    interpolated_encoders,
    naive_pruned_encoders,
)

EXPECTED_DEPTHS = [6, 7, 8, 10, 11, 12]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher():
    return tiny_models.build(tiny_models.bert(12), seed=1)


@pytest.fixture(scope="module")
def student():
    return tiny_models.build(tiny_models.distilbert(6), seed=2)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tok")
    tiny_models.save_tiny_tokenizer(str(path))
    return AutoTokenizer.from_pretrained(str(path))


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, tiny_models.VOCAB, (3, 19), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0  # padding must be handled the same way by both families
    return ids, mask


def _additive_mask(mask):
    return (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min


def _layer_output(layer, hidden, mask4d=None):
    out = layer(hidden, attention_mask=mask4d)
    return out[0] if isinstance(out, tuple) else out


# ------------------------------------------------------------------------------- layer map
def test_layer_map_blocks_and_ladder():
    lm = distilbert_layer_map(12)
    assert lm.blocks == ((0, 2), (2, 4), (4, 7), (7, 9), (9, 11), (11, 12))
    assert lm.max_patch == 5
    assert [p.depth for p in lm.ladder()] == EXPECTED_DEPTHS
    assert lm.naive_pruning_layers(0) == [0, 2, 4, 7, 9, 11]


# ------------------------------------------------------------------------------- conversion
def test_converting_a_distilbert_layer_preserves_outputs(student, teacher):
    config = bert_config_from_distilbert(student.config, teacher.config)
    hidden = torch.randn(2, 9, config.hidden_size, generator=torch.Generator().manual_seed(3))
    for d_layer in student.distilbert.transformer.layer:
        b_layer = distilbert_layer_to_bert(d_layer, config).eval()
        with torch.no_grad():
            expected = _layer_output(d_layer, hidden)
            got = _layer_output(b_layer, hidden)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        # a different layer gives a different output: the comparison has power
        assert not torch.allclose(_layer_output(b_layer, hidden + 1), expected, atol=1e-3)


def test_converted_student_has_distilbert_outputs(student, teacher):
    converted = distilbert_to_bert(student, teacher.config)
    assert type(converted).__name__ == "BertForMaskedLM"
    assert converted.config.num_hidden_layers == 6
    assert torch.count_nonzero(converted.bert.embeddings.token_type_embeddings.weight) == 0
    # shared tensors, not copies
    assert converted.bert.embeddings.word_embeddings.weight is student.distilbert.embeddings.word_embeddings.weight
    ids, mask = _batch()
    with torch.no_grad():
        expected = student(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        got = converted(input_ids=ids, attention_mask=mask, token_type_ids=torch.ones_like(ids),
                        output_hidden_states=True)
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=1e-5)
    for h_got, h_exp in zip(got.hidden_states, expected.hidden_states):
        torch.testing.assert_close(h_got, h_exp, rtol=0, atol=1e-5)
    # without the teacher's config the conversion is exact too
    alone = distilbert_to_bert(student)
    with torch.no_grad():
        torch.testing.assert_close(alone(input_ids=ids, attention_mask=mask).logits, expected.logits, rtol=0, atol=1e-5)


def test_conversion_rejects_mismatched_teacher(student):
    wide = tiny_models.bert(12)
    wide.intermediate_size = 96
    with pytest.raises(EncoderPatchError, match="intermediate_size"):
        bert_config_from_distilbert(student.config, wide)
    eps = tiny_models.bert(12)
    eps.layer_norm_eps = 1e-5
    with pytest.raises(EncoderPatchError, match="layer_norm_eps"):
        bert_config_from_distilbert(student.config, eps)
    with pytest.raises(EncoderPatchError, match="student must be a distilbert"):
        distilbert_to_bert(tiny_models.build(tiny_models.bert(2)))


def test_teacher_depth_must_match_layer_map(student):
    shallow = tiny_models.build(tiny_models.bert(8))
    with pytest.raises(EncoderPatchError, match="12-layer teacher"):
        interpolated_encoder(shallow, student, 0, distilbert_layer_map(12))


# ------------------------------------------------------------------------------- interpolation
def _param_count(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def test_every_interpolated_encoder_depth_layers_and_parameters(teacher, student):
    lm = distilbert_layer_map(12)
    s_layers = student.distilbert.transformer.layer
    t_layers = teacher.bert.encoder.layer
    layer_size = _param_count([t_layers[0]])
    models = list(interpolated_encoders(teacher, student, lm))
    assert [k for k, _, _ in models] == list(range(6))
    for k, plan, model in models:
        layers = model.bert.encoder.layer
        assert len(layers) == model.config.num_hidden_layers == plan.depth == EXPECTED_DEPTHS[k]
        # every layer is the right tensor of the right model, in order
        for layer, (src, i) in zip(layers, plan.layers):
            q = layer.attention.self.query.weight
            expected = s_layers[i].attention.q_lin.weight if src == "student" else t_layers[i].attention.self.query.weight
            assert q is expected or q.data_ptr() == expected.data_ptr()
        # BERT's MLM head at every size; the student's embeddings below the teacher's size
        assert model.cls.predictions.transform.dense.weight.data_ptr() == teacher.cls.predictions.transform.dense.weight.data_ptr()
        emb = model.bert.embeddings.word_embeddings.weight
        if k < lm.max_patch:
            assert emb.data_ptr() == student.distilbert.embeddings.word_embeddings.weight.data_ptr()
            assert torch.count_nonzero(model.bert.embeddings.token_type_embeddings.weight) == 0
            # student embeddings + zero token types + layers + BERT head (transform + bias) + its own decoder
            expected_total = (
                _param_count([student.distilbert.embeddings])
                + model.bert.embeddings.token_type_embeddings.weight.numel()
                + layer_size * plan.depth
                + _param_count([teacher.cls.predictions.transform]) + teacher.cls.predictions.bias.numel()
                + teacher.cls.predictions.decoder.weight.numel()
            )
        else:
            expected_total = count_parameters(teacher)["total"]
        assert count_parameters(model)["total"] == expected_total
    non_emb = [count_parameters(m)["non_embedding"] for _, _, m in models]
    assert non_emb == sorted(non_emb) and len(set(non_emb)) == len(non_emb)


def test_patching_every_block_gives_bert_exactly(teacher, student):
    model, plan = interpolated_encoder(teacher, student, 5)
    assert plan.embeddings_from == plan.lm_head_from == "teacher"
    ids, mask = _batch(1)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, teacher(input_ids=ids, attention_mask=mask).logits)


def test_k0_is_student_layers_with_berts_last_layer_and_head(teacher, student):
    model, _ = interpolated_encoder(teacher, student, 0)
    converted = distilbert_to_bert(student, teacher.config)
    ids, mask = _batch(2)
    ext = _additive_mask(mask)
    with torch.no_grad():
        h = converted.bert.embeddings(input_ids=ids)
        for layer in converted.bert.encoder.layer[:5]:
            h = _layer_output(layer, h, ext)
        h = _layer_output(teacher.bert.encoder.layer[11], h, ext)
        expected = teacher.cls(h)
        got = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_naive_pruning_baseline(teacher):
    lm = distilbert_layer_map(12)
    ids, mask = _batch(3)
    for k, layers, model in naive_pruned_encoders(teacher, lm):
        assert layers == lm.naive_pruning_layers(k)
        assert model.config.num_hidden_layers == len(layers) == EXPECTED_DEPTHS[k]
        if k in (0, 5):
            ext = _additive_mask(mask)
            with torch.no_grad():
                h = teacher.bert.embeddings(input_ids=ids)
                for i in layers:
                    h = _layer_output(teacher.bert.encoder.layer[i], h, ext)
                torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, teacher.cls(h),
                                           rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------- pseudo-perplexity
TEXTS = [
    "the man said that he was in the state .",
    "she had not been there",
    "many people work , and they make good time over the years .",
    "it",
]


def _naive_pll(model, tokenizer, sequences) -> tuple[float, int]:
    """One masked copy at a time, no padding: the definition, written out."""
    special = set(tokenizer.all_special_ids)
    total, count = 0.0, 0
    for seq in sequences:
        for pos, tok in enumerate(seq):
            if tok in special:
                continue
            ids = torch.tensor([seq])
            ids[0, pos] = tokenizer.mask_token_id
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, pos]
            total += -torch.log_softmax(logits.double(), -1)[tok].item()
            count += 1
    return total, count


def test_pseudo_perplexity_matches_naive_loop(teacher, tokenizer):
    sequences = encode_texts(tokenizer, TEXTS, max_length=8)  # long texts are cut into windows
    assert max(len(s) for s in sequences) == 8 and len(sequences) > len(TEXTS)
    flat = [t for s in sequences for t in s]
    assert flat == [t for text in TEXTS for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
    result = pseudo_perplexity(teacher, tokenizer, TEXTS, batch_size=5, max_length=8, progress=False)
    nll, count = _naive_pll(teacher, tokenizer, sequences)
    assert result.num_tokens == count == len(flat)
    assert result.nll_sum == pytest.approx(nll, rel=1e-5)
    assert result.pseudo_perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)
    # the batch size does not change the score
    again = pseudo_perplexity(teacher, tokenizer, sequences=sequences, batch_size=64, progress=False)
    assert again.nll_sum == pytest.approx(result.nll_sum, rel=1e-5)


def test_pseudo_perplexity_skips_special_tokens(teacher, tokenizer):
    sequences = [[1, 4, 5, 2, 0], [1, 6, 2]]  # <s> the a </s> <pad> ; <s> of </s>
    result = pseudo_perplexity(teacher, tokenizer, sequences=sequences, batch_size=2, progress=False)
    nll, count = _naive_pll(teacher, tokenizer, sequences)
    assert result.num_tokens == count == 3
    assert result.nll_sum == pytest.approx(nll, rel=1e-5)


def test_pseudo_perplexity_bad_input(teacher, tokenizer):
    with pytest.raises(PseudoPerplexityError, match="exactly one"):
        pseudo_perplexity(teacher, tokenizer, progress=False)
    with pytest.raises(PseudoPerplexityError, match="at most 128"):
        pseudo_perplexity(teacher, tokenizer, ["the " * 300], max_length=200, progress=False)
    no_mask = type("Tok", (), {"mask_token_id": None})()
    with pytest.raises(PseudoPerplexityError, match="no mask token"):
        pseudo_perplexity(teacher, no_mask, TEXTS, progress=False)


def test_load_texts_from_a_local_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("first line\n\n   \nsecond line\nthird\n")
    assert load_texts(str(path)) == ["first line", "second line", "third"]
    assert load_texts(str(path), num_rows=2) == ["first line", "second line"]
    with pytest.raises(DataError, match="no such file"):  # read by boomerang.text, the one text reader
        load_texts(str(tmp_path / "missing.txt"))
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(DataError, match="no non-empty"):
        load_texts(str(tmp_path / "blank.txt"))


def test_windows_are_wrapped_in_bert_special_tokens(tmp_path):
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "man", "said", "it", "was", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast.from_pretrained(str(tmp_path))  # a folder with vocab.txt, as on the hub
    cls, sep = tok.cls_token_id, tok.sep_token_id
    sequences = encode_texts(tok, ["the man said it was the man .", "it"], max_length=5)
    assert sequences == [[cls, 5, 6, 7, sep], [cls, 8, 9, 5, sep], [cls, 6, 10, sep], [cls, 8, sep]]
    with pytest.raises(PseudoPerplexityError, match="no room"):
        encode_texts(tok, ["the"], max_length=2)
