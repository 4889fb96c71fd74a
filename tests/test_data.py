"""Data: file formats, packing with EOS, per-document positions and attention, padding, determinism."""

import json
import os

import pytest
import torch

from tiny_models import TINY_DECODERS, build, save_tiny_tokenizer
from train.data import (DataError, SequenceStream, check_source, document_attention_mask, model_inputs,
                        position_ids_from_docs, read_local_documents, sequences)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tok")
    save_tiny_tokenizer(str(path))
    return AutoTokenizer.from_pretrained(str(path))


def test_packing_eos_and_doc_ids():
    docs = [[5, 6, 7, 2], [8, 9, 2], [10, 11, 12, 13, 2]]
    seqs = list(sequences(iter(docs), max_length=5))
    assert [s["input_ids"].tolist() for s in seqs] == [[5, 6, 7, 2, 8], [9, 2, 10, 11, 12]]
    assert [s["doc_ids"].tolist() for s in seqs] == [[0, 0, 0, 0, 1], [1, 1, 2, 2, 2]]
    pos = position_ids_from_docs(torch.stack([s["doc_ids"] for s in seqs]))
    assert pos.tolist() == [[0, 1, 2, 3, 0], [0, 1, 0, 1, 2]]


def test_no_packing_truncates_and_pads():
    docs = [[5, 6, 2], [7, 8, 9, 10, 11, 12, 2]]
    seqs = list(sequences(iter(docs), max_length=5, packing=False, pad_token_id=0))
    assert [s["input_ids"].tolist() for s in seqs] == [[5, 6, 2, 0, 0], [7, 8, 9, 10, 11]]
    assert [s["doc_ids"].tolist() for s in seqs] == [[0, 0, 0, -1, -1], [0, 0, 0, 0, 0]]


def test_file_formats_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\nstill first\n\n\nsecond doc\n")
    with open(tmp_path / "b.jsonl", "w") as f:
        f.write(json.dumps({"text": "third"}) + "\n" + json.dumps({"text": "fourth"}) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["fifth", "sixth"]}), tmp_path / "c.parquet")
    assert read_local_documents(str(tmp_path / "a.txt")) == ["first doc\nstill first", "second doc"]
    assert read_local_documents(str(tmp_path)) == ["first doc\nstill first", "second doc", "third", "fourth",
                                                   "fifth", "sixth"]
    with pytest.raises(DataError, match="--text_field"):
        read_local_documents(str(tmp_path / "b.jsonl"), text_field="body")


def test_missing_file_names_the_flag(tmp_path):
    with pytest.raises(DataError, match="--eval_dataset .*no such file"):
        check_source(str(tmp_path / "nope.jsonl"), "--eval_dataset")
    check_source("EleutherAI/the_pile_deduplicated")  # a hub name is not checked locally


def test_stream_is_deterministic_and_skip_resumes(tmp_path, tokenizer):
    with open(tmp_path / "d.jsonl", "w") as f:
        for i in range(30):
            f.write(json.dumps({"text": " ".join(["the", "man", "was", "good"][: 1 + i % 4] * (1 + i % 5))}) + "\n")
    a = SequenceStream(str(tmp_path / "d.jsonl"), tokenizer, 8, seed=3)
    first = a.take(12)
    b = SequenceStream(str(tmp_path / "d.jsonl"), tokenizer, 8, seed=3)
    b.skip(5)
    assert torch.equal(b.take(7)["input_ids"], first["input_ids"][5:])
    # Every document ends with EOS.
    assert (first["input_ids"] == tokenizer.eos_token_id).any()
    c = SequenceStream(str(tmp_path / "d.jsonl"), tokenizer, 8, seed=4)
    assert not torch.equal(c.take(12)["input_ids"], first["input_ids"])


def test_attention_mask_blocks_documents():
    doc = torch.tensor([[0, 0, 1, 1, -1]])
    m = document_attention_mask(doc, torch.float32)[0, 0] == 0
    assert m.tolist() == [[True, False, False, False, False],
                          [True, True, False, False, False],
                          [False, False, True, False, False],
                          [False, False, True, True, False],
                          [False, False, False, False, True]]


@pytest.mark.parametrize("attention", ["dense_mask", "position_ids"])
@pytest.mark.parametrize("family", sorted(TINY_DECODERS))
def test_packed_documents_equal_separate_runs(family, attention):
    """Either way of separating packed documents (tests/test_packing.py) matches separate runs, in every family."""
    from train.data import POSITION_IDS_FAMILIES

    assert set(POSITION_IDS_FAMILIES) == set(TINY_DECODERS)
    model = build(TINY_DECODERS[family](4), seed=0)
    torch.manual_seed(0)
    a, b = torch.randint(3, 100, (1, 20)), torch.randint(3, 100, (1, 9))
    batch = {"input_ids": torch.cat([a, b, torch.zeros(1, 3, dtype=torch.long)], 1),
             "doc_ids": torch.tensor([[0] * 20 + [1] * 9 + [-1] * 3])}
    with torch.no_grad():
        out = model(**model_inputs(batch, "cpu", torch.float32, model.config, attention),
                    output_hidden_states=[2]).logits
        ra, rb = model(a).logits, model(b).logits
    torch.testing.assert_close(out[:, :20], ra, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[:, 20:29], rb, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(out).all()


class CountingTokenizer:
    """A tokenizer that records the texts it is asked to tokenize."""

    def __init__(self, tokenizer):
        self.tokenizer, self.texts = tokenizer, []

    def __call__(self, text, **kw):
        self.texts.extend([text] if isinstance(text, str) else text)
        return self.tokenizer(text, **kw)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_a_stream_resumed_at_its_cursor_goes_on_without_tokenizing_the_documents_before_it(tmp_path, tokenizer):
    """Packed sequences over several epochs, cut at every point: a stream made with ``start`` = the cursor gives the
    same sequences (document numbers too) and tokenizes only documents from the cursor's document on."""
    from train.data import PaperStream, document_stream

    src = str(tmp_path / "d.jsonl")
    with open(src, "w") as f:
        for i in range(12):
            f.write(json.dumps({"text": f"doc{i} " + " ".join(["the", "man", "was", "good"][: 1 + i % 4] * (1 + i % 5))})
                    + "\n")
    order = [d for d, _ in zip(document_stream(src, seed=3), range(300))]
    reference = SequenceStream(src, tokenizer, 8, seed=3).take(40)
    for cut in range(0, 30, 3):
        a = SequenceStream(src, tokenizer, 8, seed=3)
        a.take(cut) if cut else None
        start = {**a.cursor, "sequences": a.position}
        counting = CountingTokenizer(tokenizer)
        b = SequenceStream(src, counting, 8, seed=3, start=start)
        assert b.position == cut
        got = b.take(40 - cut)
        for key in ("input_ids", "doc_ids"):
            assert torch.equal(got[key], reference[key][cut:]), (cut, key)
        d = start["document"]
        assert counting.texts == order[d:d + len(counting.texts)], cut  # from the cursor's document on, in order
    # the paper's stream: one document a sequence, the documents before the cursor read but not tokenized
    p = PaperStream(src, tokenizer, 12, seed=1, skip=2, buffer_size=4)
    first = p.take(6)
    counting = CountingTokenizer(tokenizer)
    q = PaperStream(src, counting, 12, seed=1, skip=2, buffer_size=4, start={**p.cursor, "sequences": 4})
    assert p.cursor == {"document": 6, "token": 0} and len(counting.texts) == 0
    p2 = PaperStream(src, tokenizer, 12, seed=1, skip=2, buffer_size=4)
    p2.take(4)
    q = PaperStream(src, counting, 12, seed=1, skip=2, buffer_size=4, start={**p2.cursor, "sequences": 4})
    assert torch.equal(q.take(2)["input_ids"], first["input_ids"][4:]) and len(counting.texts) == 2


def test_a_process_tokenizes_only_its_own_sequences_of_the_papers_stream(tmp_path, tokenizer):
    """``take(n, keep)``: the paper's stream (one document a sequence) passes over the other processes' documents
    without tokenizing them; the kept rows are those of the whole batch, and the stream goes on in step."""
    from train.data import PaperStream

    src = str(tmp_path / "d.jsonl")
    with open(src, "w") as f:
        for i in range(30):
            f.write(json.dumps({"text": f"doc{i} the man was good " * (1 + i % 3)}) + "\n")
    whole = PaperStream(src, tokenizer, 12, seed=1, skip=2, buffer_size=4)
    batches = [whole.take(6) for _ in range(2)]
    counting = CountingTokenizer(tokenizer)
    mine = PaperStream(src, counting, 12, seed=1, skip=2, buffer_size=4)
    for b in batches:
        got = mine.take(6, keep=range(2, 4))
        for key in ("input_ids", "attention_mask", "labels"):
            assert torch.equal(got[key], b[key][2:4]), key
    assert len(counting.texts) == 4 and mine.position == 12 and mine.cursor["document"] == 12


def test_tokenize_cost_bench_runs_on_tiny_shapes(tmp_path):
    """bench/tokenize_cost.py at tiny shapes (its figure is taken on idle cores): it times the trainer's own stream,
    inside the step and prefetched beside a simulated step (both bounds), and compares with a step's FLOPs."""
    import sys

    from tiny_models import llama, save_tiny_model

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.tokenize_cost import main

    teacher = save_tiny_model(str(tmp_path / "t"), llama(4))
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": "the man was good " * (3 + i % 7)}) + "\n" for i in range(50)))
    out = main(["--teacher_model_name_or_path", teacher, "--dataset", str(data), "--max_length", "16",
                "--global_batch_size", "4", "--per_device_train_batch_size", "1", "--nproc", "2", "--steps", "2",
                "--output", str(tmp_path / "o.json")])
    assert out["global_batch"] == 4 and out["rank_sequences"] == 2 and out["step_seconds"] > 0
    assert len(out["tokenize_seconds"]) == len(out["whole_batch_tokenize_seconds"]) == 2
    assert out["share_of_step"] == out["tokenize_seconds_median"] / out["step_seconds"]
    assert out["whole_batch_share_of_step"] == out["whole_batch_tokenize_seconds_median"] / out["step_seconds"]
    waits = out["prefetched_wait_seconds"]
    assert set(waits) == {"sleeping", "python"} and all(len(w["all"]) == 2 for w in waits.values())
    worst = max(w["mean"] for w in waits.values())
    assert out["prefetched_wait_share_of_step"] == worst / out["step_seconds"]
    assert out["under_limit"] == (worst / out["step_seconds"] < out["limit"])
    assert json.loads((tmp_path / "o.json").read_text())["under_limit"] == out["under_limit"]
    with pytest.raises(SystemExit):  # 4 sequences cannot be split over 3 processes
        main(["--teacher_model_name_or_path", teacher, "--dataset", str(data), "--global_batch_size", "4",
              "--per_device_train_batch_size", "1", "--nproc", "3"])


# ----------------------------------------------------------------------------- the slotted training stream
def unique_docs(path, n=300):
    """``n`` documents of distinct texts (so a tokenized text names its document within the first epoch)."""
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"text": f"doc{i} " + " ".join(["the", "man", "was", "good"][: 1 + i % 4] * (1 + i % 3))})
                    + "\n")
    return str(path)


def owners(slots, world):
    """The rows of a global batch each of ``world`` processes trains on (the trainer's ``process_indices``)."""
    from train.train import process_indices

    return [process_indices("improved", 1, slots // world, world, r) for r in range(world)]


def test_slotted_stream_gives_every_layout_the_same_global_batches_each_process_tokenizing_only_its_slots(
        tmp_path, tokenizer):
    """Slot j packs the documents numbered j modulo the global batch. The rows each process of a 2- or 3-process
    layout makes are exactly those rows of the one-process batches; a process tokenizes only its own slots'
    documents (each text is one document here), together exactly what one process tokenizes, so each of 2 tokenizes
    about half. One process is deterministic for a seed, and another seed gives other data."""
    from collections import Counter

    from train.data import SlottedStream, document_stream

    src = unique_docs(tmp_path / "d.jsonl")
    order = [d for d, _ in zip(document_stream(src, seed=3), range(300))]  # epoch 0: the text names its number
    G = 6
    counting = CountingTokenizer(tokenizer)
    one = SlottedStream(src, counting, 8, G, seed=3)
    batches = [one.take(G) for _ in range(4)]
    assert len(set(map(order.index, counting.texts))) == len(counting.texts) < 300  # no epoch boundary crossed
    again = SlottedStream(src, tokenizer, 8, G, seed=3)
    assert all(torch.equal(again.take(G)["input_ids"], b["input_ids"]) for b in batches)
    assert not torch.equal(SlottedStream(src, tokenizer, 8, G, seed=4).take(G)["input_ids"], batches[0]["input_ids"])
    assert (batches[0]["input_ids"] == tokenizer.eos_token_id).any() and one.position == 4 * G
    for world in (2, 3):
        seen = Counter()
        for own in owners(G, world):
            mine = CountingTokenizer(tokenizer)
            stream = SlottedStream(src, mine, 8, G, own=own, seed=3)
            for b in batches:
                got = stream.take(G, keep=own)
                for key in ("input_ids", "doc_ids"):
                    assert torch.equal(got[key], b[key][own]), (world, own, key)
            assert {order.index(t) % G for t in mine.texts} <= set(own), (world, own)  # only its slots' documents
            if world == 2:
                assert 0.3 < len(mine.texts) / len(counting.texts) < 0.7
            seen.update(mine.texts)
        assert seen == Counter(counting.texts), world  # together: what one process tokenizes, nothing more


def test_slotted_stream_resumes_every_slot_on_any_layout_without_tokenizing_what_it_consumed(tmp_path, tokenizer):
    """Cut after any batch, a stream made with ``start`` = ``resume_state()`` gives the same rows on one process and
    on each process of 2 and 3, and tokenizes exactly the documents of its slots that the uninterrupted stream
    tokenizes from each slot's cursor on (the one a slot's cursor stands in, and the later ones)."""
    from train.data import SlottedStream, document_stream

    src = unique_docs(tmp_path / "d.jsonl")
    order = [d for d, _ in zip(document_stream(src, seed=3), range(300))]
    G, N = 6, 5
    counting = CountingTokenizer(tokenizer)
    reference = SlottedStream(src, counting, 8, G, seed=3)
    batches = [reference.take(G) for _ in range(N)]
    tokenized = set(map(order.index, counting.texts))
    for cut in range(N):
        a = SlottedStream(src, tokenizer, 8, G, seed=3)
        for _ in range(cut):
            a.take(G)
        start = a.resume_state()
        assert start["sequences"] == cut * G and len(start["slots"]) == G
        assert json.loads(json.dumps(start)) == start  # what state.json holds
        cursors = [c["document"] for c in start["slots"]]
        for world in (1, 2, 3):
            for own in owners(G, world):
                mine = CountingTokenizer(tokenizer)
                b = SlottedStream(src, mine, 8, G, own=own, seed=3, start=start)
                for batch in batches[cut:]:
                    got = b.take(G, keep=own)
                    for key in ("input_ids", "doc_ids"):
                        assert torch.equal(got[key], batch[key][own]), (cut, world, own, key)
                assert b.position == N * G
                expected = {d for d in tokenized if d % G in own and d >= cursors[d % G]}
                assert sorted(map(order.index, mine.texts)) == sorted(expected), (cut, world, own)


def test_slotted_stream_without_packing_keeps_the_single_streams_order(tmp_path, tokenizer):
    """One padded document a sequence: slot j's k-th sequence is document j + k x slots, so global batch k holds the
    documents k x slots .. k x slots + slots - 1, in the single stream's order."""
    from train.data import SlottedStream

    src = unique_docs(tmp_path / "d.jsonl", 40)
    single = SequenceStream(src, tokenizer, 8, packing=False, seed=2).take(12)
    slotted = SlottedStream(src, tokenizer, 8, 4, packing=False, seed=2)
    got = [slotted.take(4) for _ in range(3)]
    for key in ("input_ids", "doc_ids"):
        assert torch.equal(torch.cat([g[key] for g in got]), single[key]), key
    assert slotted.resume_state()["slots"] == [{"document": 12 + j, "token": 0} for j in range(4)]


def test_slotted_stream_refuses_a_start_it_cannot_go_on_from(tmp_path, tokenizer):
    """Another global batch than the checkpoint's (its slots) and a cursor outside its slot are refused with the
    fix; a checkpoint of the single stream (one cursor) goes on as a single stream, exactly where it was."""
    from train.data import SlottedStream
    from train.train import build_parser, make_stream

    src = unique_docs(tmp_path / "d.jsonl", 40)
    start = SlottedStream(src, tokenizer, 8, 4, seed=2).resume_state()
    with pytest.raises(DataError, match="--global_batch_size 4"):
        SlottedStream(src, tokenizer, 8, 6, seed=2, start=start)
    start["slots"][2] = {"document": 3, "token": 0}
    with pytest.raises(DataError, match="slot 2 .*damaged"):
        SlottedStream(src, tokenizer, 8, 4, seed=2, start=start)
    args = build_parser().parse_args(["--max_length", "8", "--seed", "2"])
    single = SequenceStream(src, tokenizer, 8, seed=2)
    single.take(5)
    old = single.resume_state()
    assert set(old) == {"document", "token", "sequences"}
    legacy = make_stream(args, tokenizer, src, "train", "--dataset", training=True, start=old, slots=4, own=[0, 1])
    assert isinstance(legacy, SequenceStream) and legacy.position == 5
    assert torch.equal(legacy.take(4, keep=[0, 1])["input_ids"], single.take(4)["input_ids"][:2])
    assert isinstance(make_stream(args, tokenizer, src, "train", "--dataset", training=True, slots=4, own=[0, 1]),
                      SlottedStream)


class FileCountingTokenizer(CountingTokenizer):
    """A CountingTokenizer that also appends each text to a file, so that the texts a worker process tokenizes
    are counted too."""

    def __init__(self, tokenizer, path):
        super().__init__(tokenizer)
        self.path = str(path)

    def __call__(self, text, **kw):
        with open(self.path, "a") as f:
            f.writelines(json.dumps(t) + "\n" for t in ([text] if isinstance(text, str) else text))
        return super().__call__(text, **kw)

    def logged(self) -> list[str]:
        with open(self.path) as f:
            return [json.loads(line) for line in f]


@pytest.mark.parametrize("kind", ["slotted", "paper"])
def test_prefetcher_hands_out_the_streams_batches_and_resumes_at_the_last_one_handed_out(tmp_path, tokenizer, kind):
    """Batches made ahead in the worker process are the stream's own, in order; while the worker has made batches
    ahead, ``position`` and ``resume_state`` are those of the last batch handed out, so a stream started there gives
    the next batch; the worker tokenizes nothing beyond ``takes`` batches (the same texts as the stream alone);
    depth 0 makes them in the caller."""
    import time

    from train.data import PaperStream, Prefetcher, SlottedStream

    src = unique_docs(tmp_path / "d.jsonl")
    G, keep, N = 6, [2, 3], 5

    def make(start=None, tok=tokenizer):
        if kind == "paper":
            return PaperStream(src, tok, 8, skip=3, buffer_size=10, start=start)
        return SlottedStream(src, tok, 8, G, own=keep, seed=3, start=start)

    plain = make()
    expected, states = [], [plain.resume_state()]
    for _ in range(N):
        expected.append(plain.take(G, keep=keep))
        states.append(plain.resume_state())
    reference = FileCountingTokenizer(tokenizer, tmp_path / "reference.jsonl")
    stream = make(tok=reference)
    for _ in range(N):
        stream.take(G, keep=keep)
    for depth in (0, 1, 3):
        counting = FileCountingTokenizer(tokenizer, tmp_path / f"depth{depth}.jsonl")
        fetch = Prefetcher(make(tok=counting), G, keep, depth=depth, takes=N)
        assert fetch.resume_state() == states[0] and fetch.position == 0
        for i in range(N):
            time.sleep(0.2 if i == 0 else 0.0)  # the worker makes its batches ahead meanwhile
            got = fetch.take(G, keep=keep)
            for key in expected[i]:
                assert torch.equal(got[key], expected[i][key]), (depth, i, key)
            assert fetch.resume_state() == states[i + 1] and fetch.position == states[i + 1]["sequences"]
            resumed = make(start=fetch.resume_state())
            if i + 1 < N:
                assert torch.equal(resumed.take(G, keep=keep)["input_ids"], expected[i + 1]["input_ids"])
        with pytest.raises(ValueError, match="all handed out"):
            fetch.take(G, keep=keep)
        fetch.close()
        assert counting.logged() == reference.logged(), depth  # nothing tokenized beyond the last batch asked for


def test_prefetcher_raises_the_streams_error_at_the_batch_that_needs_it(tmp_path, tokenizer):
    """A stream that runs out while the worker works ahead: every batch before is handed out, the DataError comes
    with the first one it could not make, and the worker has stopped."""
    from train.data import Prefetcher, SlottedStream

    src = unique_docs(tmp_path / "d.jsonl", 12)
    plain = SlottedStream(src, tokenizer, 8, 4, seed=1, repeat=False)
    made = 0
    with pytest.raises(DataError):
        while True:
            plain.take(4)
            made += 1
    fetch = Prefetcher(SlottedStream(src, tokenizer, 8, 4, seed=1, repeat=False), 4, depth=2)
    assert fetch.depth == 2
    for _ in range(made):
        fetch.take(4)
    with pytest.raises(DataError, match="ran out"):
        fetch.take(4)
    assert fetch._batches is None
    with pytest.raises(ValueError, match="rows"):
        Prefetcher(SlottedStream(src, tokenizer, 8, 4, seed=1), 4, depth=0).take(4, keep=[0, 1])


class _WorkerProbe:
    """A stream for the Prefetcher's worker: its batches say whether the worker's tokenizer is single-threaded;
    the third take raises an exception that cannot be pickled."""

    position = 0

    def snapshot(self):
        return {"sequences": self.position}

    def take(self, n, keep=None):
        self.position += n
        if self.position > 2 * n:
            class Local(Exception):  # a local class: pickling it fails
                pass

            raise Local("the source broke")
        return {"single": torch.tensor([os.environ.get("TOKENIZERS_PARALLELISM") == "false"])}


def test_prefetchers_worker_is_single_threaded_and_its_errors_arrive_whole(monkeypatch):
    """The worker sets the fast tokenizer single-threaded for itself (a thread pool used before the fork would hang
    it), whatever the user set, and leaves the parent's setting alone; an error that cannot be pickled arrives as a
    RuntimeError naming it with the worker's traceback; a closed prefetcher refuses to go on."""
    from train.data import Prefetcher

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    fetch = Prefetcher(_WorkerProbe(), 2, depth=2)
    assert fetch.take(2)["single"].item() and fetch.take(2)["single"].item()
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
    with pytest.raises(RuntimeError, match="Local: the source broke(.|\n)*in the worker(.|\n)*raise Local"):
        fetch.take(2)
    with pytest.raises(ValueError, match="closed"):
        fetch.take(2)
