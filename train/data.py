"""Training data: documents -> tokens (EOS after each document) -> packed or padded sequences.

Sources (``--dataset`` / ``--eval_dataset``):
  * a local file: ``.txt`` (documents separated by blank lines), ``.jsonl``/``.json`` (one object a line, text in
    ``--text_field``, default ``text``), ``.parquet`` (column ``--text_field``);
  * a local folder: every such file inside it (recursively), in sorted order;
  * otherwise a Hugging Face dataset name, read with ``datasets.load_dataset(..., streaming=True)``.

Each sequence is a dict of ``input_ids`` [S] and ``doc_ids`` [S] (a document number per token, -1 for padding).
From ``doc_ids`` come the position ids (restarting at every document), the attention that keeps documents apart
(``packed_attention``, ``model_inputs``) and the loss mask, so no attention and no loss term crosses a document.

Packing (default): documents are concatenated with EOS and cut into full ``max_length`` sequences (a document can
continue in the next sequence, where it counts as a new document). ``packing=False`` is the paper's recipe: one
document per sequence, truncated to ``max_length`` and right-padded.

Order is deterministic: local documents are shuffled per epoch with ``seed`` (epochs repeat as needed); a streamed
dataset is read in its own order (repeated when exhausted). The improved recipe's training data is a
``SlottedStream``: as many slots as the global batch has sequences, slot j packing the documents numbered j modulo
the global batch, global batch k holding the k-th sequence of every slot. Rank r trains on the rows
``train.train.process_indices`` gives it and makes only those slots, so it tokenizes only the documents it trains on,
and 1 or N processes see the same global batches. A checkpoint records where each slot's next sequence begins
(document number and token offset); resuming reads the documents before it without tokenizing them and
re-tokenizes only the one it begins in. Held-out data is one ``SequenceStream`` (as is the training data of a run
whose checkpoint was written before the slots: it goes on in that order). The paper's recipe: ``PaperStream``.
The trainer takes its batches through a ``Prefetcher``: a worker process makes the next ones while the step computes.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import random
import traceback
from typing import Iterable, Iterator

import torch

# text reading lives in boomerang.text; DataError and check_source are named here too for the trainer's callers
from boomerang.families import UnsupportedModelError, adapter_for_config
from boomerang.text import DataError, check_source, is_local, read_local_documents  # noqa: F401


def _text_of(row: dict, text_field: str, source: str, flag: str) -> str:
    if row.get(text_field) is None:
        raise DataError(f"{flag} {source}: rows have no field {text_field!r} (fields: {sorted(row)}); "
                        "set --text_field")
    return row[text_field]


def document_stream(source: str, split: str = "train", text_field: str = "text", seed: int = 0,
                    shuffle: bool = True, repeat: bool = True, flag: str = "--dataset") -> Iterator[str]:
    """Documents of ``source`` in a deterministic order (shuffled per epoch for local data)."""
    docs = read_local_documents(source, text_field, flag) if is_local(source) else None
    for epoch in itertools.count():
        if docs is not None:
            order = list(range(len(docs)))
            if shuffle:
                random.Random(seed * 1_000_003 + epoch).shuffle(order)
            yield from (docs[i] for i in order)
        else:
            import datasets  # slow to import; only hub datasets need it

            rows = datasets.load_dataset(source, split=split, streaming=True)
            yield from (t for t in (_text_of(r, text_field, source, flag) for r in rows) if t.strip())
        if not repeat:
            return


TOKENIZE_BATCH = 64  # documents tokenized in one call of the (fast, batched) tokenizer


def token_documents(docs: Iterable[str], tokenizer, batch: int | None = None) -> Iterator[list[int]]:
    """Token ids of each document followed by EOS (no BOS: the models here do not need one); ``batch`` documents
    (default ``TOKENIZE_BATCH``) a call."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no eos_token_id; documents cannot be separated")
    docs, batch = iter(docs), batch or TOKENIZE_BATCH
    while chunk := list(itertools.islice(docs, batch)):  # tokenized ``batch`` documents at a time
        for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            yield list(ids) + [eos]


class Packer:
    """Documents (token ids, one ``add`` each, in order) in, sequences out (``pop``, while ``ready``): packed into
    full ``max_length`` sequences (a document can continue in the next sequence, where it counts as a new document),
    or with ``packing=False`` one document a sequence, truncated and right-padded with ``pad_token_id``.

    ``start`` = (document, token): the number of the first document added and how many of its tokens were already
    consumed (a resume). Documents are numbered from it in steps of ``stride`` (a slot of ``SlottedStream`` holds
    every ``stride``-th document of the stream). ``cursor``: where the next sequence begins, (document, token)."""

    def __init__(self, max_length: int, packing: bool = True, pad_token_id: int = 0, start: tuple[int, int] = (0, 0),
                 stride: int = 1):
        if max_length < 2:
            raise DataError(f"--max_length must be >= 2, got {max_length}")
        self.max_length, self.packing, self.pad, self.stride = max_length, packing, pad_token_id, stride
        self._first, self._consumed = start
        self._next = self._first  # the number of the next document added
        self._ids, self._docs, self._toks = [], [], []  # tokens not yet in a sequence: id, document, offset in it

    def add(self, ids: list[int]) -> None:
        doc, self._next = self._next, self._next + self.stride
        if not self.packing:  # one document a sequence (pop comes before the next add): its first max_length tokens
            self._ids, self._docs, self._toks = list(ids[:self.max_length]), [doc], [0]
            return
        skip = self._consumed if doc == self._first else 0
        self._ids.extend(ids[skip:])
        self._docs.extend([doc] * (len(ids) - skip))
        self._toks.extend(range(skip, len(ids)))

    def ready(self) -> bool:
        return len(self._ids) >= self.max_length if self.packing else bool(self._docs)

    def pop(self) -> dict:
        """The next sequence: ``input_ids`` and ``doc_ids`` (LongTensor [max_length]; -1 marks padding)."""
        S = self.max_length
        if not self.packing:
            n = len(self._ids)  # _docs, _toks: the document's number and 0, for the cursor until this pop
            seq = {"input_ids": torch.tensor(self._ids + [self.pad] * (S - n), dtype=torch.long),
                   "doc_ids": torch.tensor([0] * n + [-1] * (S - n), dtype=torch.long)}
            self._ids, self._docs, self._toks = [], [], []
            return seq
        seq = {"input_ids": torch.tensor(self._ids[:S]), "doc_ids": torch.tensor(self._docs[:S])}
        self._ids, self._docs, self._toks = self._ids[S:], self._docs[S:], self._toks[S:]
        return seq

    @property
    def cursor(self) -> dict:
        """``{"document": d, "token": t}``: where the next sequence begins."""
        if self._docs:
            return {"document": self._docs[0], "token": self._toks[0]}
        return {"document": self._next, "token": 0}


def sequences(token_docs: Iterable[list[int]], max_length: int, packing: bool = True, pad_token_id: int = 0,
              start: tuple[int, int] = (0, 0), cursor: dict | None = None) -> Iterator[dict]:
    """Packed (or padded) sequences of one stream of documents (``Packer``): dicts of ``input_ids`` and ``doc_ids``.
    A last partial packed sequence is dropped (training streams repeat; eval streams are long enough).

    ``start`` = (document, token): the number of the first document in ``token_docs`` and how many of its tokens
    were already consumed (a resume: ``token_docs`` then begins at that document). ``cursor``, when given, is set
    before each sequence is yielded to where the next one begins: ``{"document": d, "token": t}``."""
    packer = Packer(max_length, packing, pad_token_id, start)
    for ids in token_docs:
        packer.add(ids)
        while packer.ready():
            seq = packer.pop()
            if cursor is not None:
                cursor.update(packer.cursor)
            yield seq


class Stream:
    """A resumable stream of sequences (dicts of tensors): ``position`` counts those handed out so far, ``cursor``
    says where in the documents the next one begins (``{"document": d, "token": t}``: a checkpoint records it, and
    a stream made with ``start=cursor`` goes on from there without tokenizing the documents before it);
    ``exhausted`` (formatted with ``position``) is the DataError's message when it runs out."""

    def __init__(self, items: Iterator[dict], exhausted: str = "the dataset ran out of sequences",
                 cursor: dict | None = None, position: int = 0):
        self._it, self._exhausted, self.position = items, exhausted, position
        self.cursor = cursor if cursor is not None else {"document": 0, "token": 0}

    def next(self) -> dict:
        try:
            item = next(self._it)
        except StopIteration:
            raise DataError(self._exhausted.format(position=self.position)) from None
        self.position += 1
        return item

    def skip(self, n: int) -> None:
        """Hand out and drop ``n`` sequences (tokenizing them: a checkpoint without a ``cursor`` resumes so)."""
        for _ in range(n):
            self.next()

    def drop(self) -> None:
        """Pass over the next sequence (another process trains on it). A packed single stream tokenizes it even so:
        where a sequence begins depends on every document before it (``SlottedStream`` has no such dependence)."""
        self.next()

    def take(self, n: int, keep=None) -> dict:
        """``n`` sequences stacked into a batch: each field of shape [n, S]; with ``keep`` (indices), only the sequences
        of those indices are made, in ascending order (``drop`` passes over the others: the paper's stream does not
        tokenize them)."""
        keep = set(range(n) if keep is None else keep)
        items = []
        for i in range(n):
            if i in keep:
                items.append(self.next())
            else:
                self.drop()
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    def snapshot(self) -> dict:
        """This process's state now, a copy (``Prefetcher`` keeps the one of the last batch handed out)."""
        return {**self.cursor, "sequences": self.position}

    def resume_state(self, snapshot: dict | None = None) -> dict:
        """What a checkpoint records as ``data_resume`` (``start=`` of a stream that goes on from here): the cursor
        and ``sequences`` (the position), now or at ``snapshot``. Every process holds the same."""
        return dict(snapshot) if snapshot is not None else self.snapshot()


def resume_point(start: dict | None) -> tuple[dict, int]:
    """(cursor, position) of a stream that starts at a checkpoint's ``data_resume`` (None: the beginning)."""
    start = dict(start or {})
    return {"document": int(start.get("document", 0)), "token": int(start.get("token", 0))}, int(start.get("sequences", 0))


class SequenceStream(Stream):
    """One stream of packed (or padded) sequences, ``input_ids`` and ``doc_ids``: held-out data, and the training
    data of a run whose checkpoint was written before ``SlottedStream``. ``start``: a checkpoint's ``data_resume``
    (document, token, sequences): the documents before it are read but not tokenized."""

    def __init__(self, source: str, tokenizer, max_length: int, packing: bool = True, split: str = "train",
                 text_field: str = "text", seed: int = 0, shuffle: bool = True, repeat: bool = True,
                 flag: str = "--dataset", start: dict | None = None):
        requested_packed_attention()  # a bad $BOOMERANG_PACKED_ATTENTION fails with the data checks, before models load
        cursor, position = resume_point(start)
        docs = itertools.islice(document_stream(source, split, text_field, seed, shuffle, repeat, flag),
                                cursor["document"], None)
        super().__init__(sequences(token_documents(docs, tokenizer), max_length, packing, pad_id(tokenizer),
                                   (cursor["document"], cursor["token"]), cursor), cursor=cursor, position=position)


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def slot_cursors(start: dict | None, slots: int) -> list[dict]:
    """Every slot's cursor (``{"document": d, "token": t}``, d counted in the whole document stream) from a
    checkpoint's ``data_resume`` written by ``SlottedStream.resume_state``; None: the beginning (slot j at document
    j). A DataError names what does not fit: another global batch (the slots are the global batch) or a cursor that
    is not one of its slot's documents."""
    if start is None:
        return [{"document": j, "token": 0} for j in range(slots)]
    if "slots" not in start:
        raise DataError("the checkpoint's data_resume holds one cursor of a single stream (written before the slotted "
                        "stream), not one per slot: it goes on in a SequenceStream (train.train.make_stream does so)")
    saved = start["slots"]
    if len(saved) != slots:
        raise DataError(f"the checkpoint's data is {len(saved)} slots (one sequence of each in every global batch: it "
                        f"was written with a global batch of {len(saved)} sequences) but this run's global batch is "
                        f"{slots}; resume with --global_batch_size {len(saved)} (any number of processes), or "
                        "--overwrite to start again")
    cursors = [{"document": int(c["document"]), "token": int(c["token"])} for c in saved]
    for j, c in enumerate(cursors):
        if c["document"] < 0 or c["document"] % slots != j or c["token"] < 0:
            raise DataError(f"the checkpoint's data_resume gives slot {j} the cursor {c}, which is not one of its "
                            f"documents (those numbered {j} modulo {slots}): its state.json is damaged or was edited; "
                            "resume from another checkpoint or use --overwrite to start again")
    return cursors


class SlottedStream:
    """The improved recipe's training sequences (packed or padded), built so that each process tokenizes only the
    sequences it trains on, and a global batch holds the same data on any number of processes.

    The stream has ``slots`` (= the global batch) independent slots. Slot j holds the documents whose number in the
    (shuffled, repeated) document stream is j modulo ``slots``, packs (or pads) them with its own ``Packer`` and
    has its own cursor; global batch k is the k-th sequence of every slot, slot j at row j. A process makes only the
    slots it trains on (``own``, default all: one process), so it tokenizes only their documents; it still reads
    every document's text (reading is cheap, tokenizing is the cost), once, handing each to the slot it belongs to.
    ``take`` tokenizes the documents its slots need in one batched tokenizer call per round, nothing ahead.

    ``start``: a checkpoint's ``data_resume`` from ``resume_state`` (every slot's cursor and the sequence count):
    each slot goes on from its cursor, the documents before it read but not tokenized, on any number of processes
    with the same global batch."""

    def __init__(self, source: str, tokenizer, max_length: int, slots: int, own: Iterable[int] | None = None,
                 packing: bool = True, split: str = "train", text_field: str = "text", seed: int = 0,
                 shuffle: bool = True, repeat: bool = True, flag: str = "--dataset", start: dict | None = None):
        requested_packed_attention()  # a bad $BOOMERANG_PACKED_ATTENTION fails with the data checks, before models load
        if slots < 1:
            raise DataError(f"a slotted stream needs at least one slot (the global batch), got {slots}")
        self.slots, self.own = slots, sorted(set(range(slots) if own is None else own))
        if not self.own or not 0 <= self.own[0] <= self.own[-1] < slots:
            raise ValueError(f"own must be slots among 0..{slots - 1}, got {self.own}")
        self._cursors = slot_cursors(start, slots)  # every slot's; this process advances only its own
        self.position = int((start or {}).get("sequences", 0))
        self._tokenizer, self._flag = tokenizer, flag
        self._packers = {j: Packer(max_length, packing, pad_id(tokenizer),
                                   (self._cursors[j]["document"], self._cursors[j]["token"]), slots) for j in self.own}
        self._pending = {j: collections.deque() for j in self.own}  # texts read for slot j, not yet tokenized
        self._wanted = {j: self._cursors[j]["document"] for j in self.own}  # the first document each slot reads
        first = min(self._wanted.values())
        self._docs = enumerate(itertools.islice(document_stream(source, split, text_field, seed, shuffle, repeat, flag),
                                                first, None), start=first)

    def _text_for(self, j: int) -> str:
        """Slot j's next document, reading the stream on as far as it (texts of this process's other slots met on
        the way are kept for them; the rest are dropped untokenized)."""
        while not self._pending[j]:
            try:
                d, text = next(self._docs)
            except StopIteration:
                raise DataError(f"{self._flag}: the dataset ran out of documents after {self.position} sequences") \
                    from None
            slot = d % self.slots
            if slot in self._pending and d >= self._wanted[slot]:
                self._pending[slot].append(text)
        return self._pending[j].popleft()

    def take(self, n: int, keep=None) -> dict:
        """The next global batch (``n`` must be ``slots``): this process's rows, those of ``keep`` (default: its own
        slots; it must be exactly them), stacked in ascending order, each field of shape [len(keep), S]."""
        if n != self.slots:
            raise ValueError(f"this stream's global batch is {self.slots} sequences (its slots), not {n}")
        if keep is not None and sorted(set(keep)) != self.own:
            raise ValueError(f"keep {sorted(set(keep))} is not this stream's own slots {self.own}")
        need = [j for j in self.own if not self._packers[j].ready()]
        while need:  # one document more for every slot still short of a sequence, tokenized in one batch
            texts = [self._text_for(j) for j in need]
            for j, ids in zip(need, token_documents(texts, self._tokenizer)):
                self._packers[j].add(ids)
            need = [j for j in need if not self._packers[j].ready()]
        items = []
        for j in self.own:
            items.append(self._packers[j].pop())
            self._cursors[j] = self._packers[j].cursor
        self.position += n
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    def snapshot(self) -> dict:
        """This process's state now, a copy: its own slots' cursors and the position (``resume_state`` gathers the
        other processes' slots)."""
        return {"own": {j: dict(self._cursors[j]) for j in self.own}, "sequences": self.position}

    def resume_state(self, snapshot: dict | None = None) -> dict:
        """``data_resume`` for a checkpoint, now or at ``snapshot``: every slot's cursor (``slots``, a list of
        ``slots`` cursors) and ``sequences`` (the position). Each process knows only its own slots' cursors: under
        torch.distributed this is a collective that gathers them (every process calls it, every one gets the whole
        list)."""
        import torch.distributed as dist  # the process group, when the trainer made one

        snapshot = snapshot if snapshot is not None else self.snapshot()
        parts = [snapshot["own"]]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, snapshot["own"])
        cursors = [{"document": j, "token": 0} for j in range(self.slots)]  # every slot is some process's own
        for part in parts:
            for j, c in part.items():
                cursors[int(j)] = dict(c)
        return {"slots": cursors, "sequences": snapshot["sequences"]}


class _AheadBatches(torch.utils.data.IterableDataset):
    """The stream's next ``takes`` global batches (rows ``keep``), each with the stream's state after it, made in
    ``Prefetcher``'s worker process; an error the stream raises is handed on as an item and ends the batches."""

    def __init__(self, stream, n: int, keep, takes: int | None):
        super().__init__()
        self.stream, self.n, self.keep, self.takes = stream, n, keep, takes

    def __iter__(self):
        made = 0
        while self.takes is None or made < self.takes:
            made += 1
            try:  # numpy arrays: pickled through the worker's pipe, cheaper than tensors in shared memory
                batch = {k: v.numpy() for k, v in self.stream.take(self.n, keep=self.keep).items()}
                yield batch, self.stream.snapshot(), None
            except Exception as e:  # raised by the take that asks for this batch: its kind, message and traceback
                # as text (an exception object may not survive pickling), a DataError kept as one
                yield None, None, (isinstance(e, DataError), type(e).__name__, str(e), traceback.format_exc())
                return


def _as_made(item):
    """The worker's items as they are (the DataLoader's default would turn the arrays into shared-memory tensors)."""
    return item


def _worker_start(_worker_id: int) -> None:
    """In the worker: the fast tokenizer single-threaded. Its thread pool, used by the parent before the fork, would
    hang the worker's first call (whatever TOKENIZERS_PARALLELISM the user set); the parent's setting is untouched."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


class Prefetcher:
    """A training stream whose next global batches are read, tokenized and packed ahead, in a worker process (a
    ``torch.utils.data.DataLoader`` worker, forked so that it goes on from the stream's state), while the current
    step computes: the data leave the step, and the worker needs neither the GPU nor the trainer's Python lock.
    ``take(n, keep)`` hands out the batches in the stream's own order, the same values as the stream's ``take``
    called in a loop (the trainer logs how long each step waited for its batch: ``data_wait_s``).

    ``depth``: batches made ahead (0, or no ``fork`` on this platform: none, the stream's ``take`` in the caller).
    ``takes``: how many batches will be asked for at most; nothing is made beyond them. ``position`` and
    ``resume_state`` are the stream's as of the last batch handed out, not of those made ahead: a checkpoint goes on
    with the first batch not trained on. An error the stream raises making a batch (the data ran out) is raised by
    the ``take`` that asks for it. ``close`` stops the worker."""

    def __init__(self, stream, n: int, keep=None, depth: int = 2, takes: int | None = None):
        import multiprocessing

        self.stream, self._n, self._keep = stream, n, None if keep is None else list(keep)
        self.depth = depth if "fork" in multiprocessing.get_all_start_methods() else 0
        self._state, self.position = stream.snapshot(), stream.position
        self._left, self._handed, self._batches, self._closed = takes, 0, None, False
        if self.depth > 0 and (takes is None or takes > 0):
            loader = torch.utils.data.DataLoader(
                _AheadBatches(stream, n, self._keep, takes), batch_size=None, num_workers=1, collate_fn=_as_made,
                prefetch_factor=self.depth, multiprocessing_context="fork", worker_init_fn=_worker_start,
                generator=torch.Generator())  # its seed drawn from its own generator, not torch's global one
            self._batches = iter(loader)

    def take(self, n: int, keep=None) -> dict:
        if n != self._n or (None if keep is None else list(keep)) != self._keep:
            raise ValueError(f"this prefetcher makes batches of {self._n} sequences, rows {self._keep}; asked for "
                             f"{n}, rows {keep}")
        if self._closed:
            raise ValueError("this prefetcher is closed (its worker stopped): make a new one from a checkpoint's state")
        if self._left is not None and self._handed >= self._left:
            raise ValueError(f"this prefetcher was made for {self._left} batches, all handed out")
        self._handed += 1
        if self._batches is None:
            batch, state, error = self.stream.take(n, keep=keep), self.stream.snapshot(), None
        else:
            try:
                batch, state, error = next(self._batches)
            except StopIteration:  # the worker ended without this batch (it could not send it)
                self.close()
                raise DataError("the data worker stopped without making the next batch; run again with "
                                "--prefetch_batches 0 to see the error in the training process") from None
            batch = batch and {k: torch.from_numpy(v) for k, v in batch.items()}
        if error is not None:  # from the worker: (a DataError?, its kind, message, traceback)
            self.close()
            data_error, kind, message, trace = error
            if data_error:
                raise DataError(message)
            raise RuntimeError(f"the data worker failed making the next batch: {kind}: {message}\nin the worker:\n"
                               f"{trace}")
        self._state, self.position = state, state["sequences"]
        return batch

    def resume_state(self) -> dict:
        return self.stream.resume_state(self._state)

    def close(self) -> None:
        """Stop the worker (the batches it made ahead are dropped)."""
        self._closed = True
        if self._batches is not None:
            self._batches._shutdown_workers()
            self._batches = None


def position_ids_from_docs(doc_ids: torch.Tensor) -> torch.Tensor:
    """Positions restarting at 0 at the start of every document (padding counts on from its run)."""
    idx = torch.arange(doc_ids.shape[1], device=doc_ids.device).expand_as(doc_ids)
    start = torch.ones_like(doc_ids, dtype=torch.bool)
    start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return idx - torch.cummax(torch.where(start, idx, torch.zeros_like(idx)), dim=1).values


def document_attention_mask(doc_ids: torch.Tensor, dtype: torch.dtype, sliding_window: int | None = None) -> torch.Tensor:
    """Additive 4D mask [B, 1, S, S]: 0 where query i may attend key j (j <= i, same document), else -inf-ish.
    Padding tokens attend only to themselves (no row is fully masked, so no NaN); their outputs are excluded from
    every loss term. Works with the sdpa and eager attention implementations."""
    S = doc_ids.shape[1]
    ids = torch.where(doc_ids < 0, -1 - torch.arange(S, device=doc_ids.device), doc_ids)
    allowed = torch.ones(S, S, dtype=torch.bool, device=ids.device).tril()
    if sliding_window:  # key j visible from query i only when i - j < window (Hugging Face's convention)
        allowed = allowed & ~torch.ones(S, S, dtype=torch.bool, device=ids.device).tril(-sliding_window)
    allowed = allowed & (ids[:, :, None] == ids[:, None, :])  # every padding token is its own document
    mask = torch.zeros(doc_ids.shape[0], 1, S, S, dtype=dtype, device=ids.device)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


# ------------------------------------------------------------------------------------ packed attention
PACKED_ATTENTION_ENV = "BOOMERANG_PACKED_ATTENTION"
PACKED_ATTENTION_CHOICES = ("auto", "position_ids", "dense_mask")
# Families whose transformers modeling code hands ``position_ids`` to its mask builders (create_causal_mask,
# create_sliding_window_causal_mask), so that packed positions separate the documents; each is checked
# against the dense mask in tests/test_packing.py. Encoders (bert, distilbert) are not packed.
POSITION_IDS_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gpt_neox", "gpt2")
_logged_choices: set = set()


def _library_packing(attn: str) -> str | None:
    """Why the installed transformers cannot separate packed documents from ``position_ids`` under the
    attention implementation ``attn``, or None when it can."""
    try:  # older transformers have no masking_utils: checked here, not at import
        from transformers import masking_utils  # lazy: only for families whose masks transformers builds
    except ImportError:
        return "this transformers has no masking_utils"
    if not hasattr(masking_utils, "find_packed_sequence_indices"):
        return "this transformers does not detect packed sequences from position_ids"
    known = getattr(masking_utils.ALL_MASK_ATTENTION_FUNCTIONS, "_global_mapping", {})
    if attn not in known:
        return f"attention implementation {attn!r} has no transformers mask builder (known: {sorted(known)})"
    if attn.startswith("flash_attention"):
        from transformers import modeling_flash_attention_utils as fa  # as masking_utils: may be missing

        if not hasattr(fa, "prepare_fa_kwargs_from_position_ids"):
            return "this transformers cannot derive flash-attention sequence lengths from position_ids"
    return None


def requested_packed_attention(requested: str | None = None) -> str:
    """``requested``, else $BOOMERANG_PACKED_ATTENTION, else ``auto``; a DataError for anything else."""
    requested = requested or os.environ.get(PACKED_ATTENTION_ENV) or "auto"
    if requested not in PACKED_ATTENTION_CHOICES:
        raise DataError(f"{PACKED_ATTENTION_ENV}={requested!r}: choose one of {', '.join(PACKED_ATTENTION_CHOICES)}")
    return requested


def packed_attention(device, config, attn_implementation: str | None = None, requested: str | None = None) -> str:
    """How packed documents are kept apart in attention: ``"position_ids"`` or ``"dense_mask"``.

    ``position_ids``: positions restart at 0 at every document and no mask is passed; transformers finds the
    documents from the positions (masking_utils.find_packed_sequence_indices) and builds what the attention
    implementation needs: a FlexAttention BlockMask, flash-attention varlen lengths (``model_inputs`` passes
    them), a boolean mask (sdpa, eager). ``dense_mask``: our additive block-diagonal 4D mask
    (``document_attention_mask``), which every implementation that takes a 4D mask follows.

    ``requested`` (default: $BOOMERANG_PACKED_ATTENTION, else ``auto``): ``auto`` chooses ``position_ids`` on CUDA,
    or for a flash-attention implementation (which takes no 4D mask), when the family and the installed transformers
    support it, else ``dense_mask`` (the CPU fallback). Asking for ``position_ids`` where it is not
    supported is a DataError. The choice is logged once per (device, family, attention implementation)."""
    requested = requested_packed_attention(requested)
    attn = attn_implementation or getattr(config, "_attn_implementation", None) or "eager"
    device_type = torch.device(device).type
    try:
        family = adapter_for_config(config).name if config is not None else None
    except UnsupportedModelError:
        family = None
    why_not = (f"family {family or type(config).__name__} is not among {', '.join(POSITION_IDS_FAMILIES)}"
               if family not in POSITION_IDS_FAMILIES else _library_packing(attn))
    if requested != "auto":
        if requested == "position_ids" and why_not:
            raise DataError(f"{PACKED_ATTENTION_ENV}=position_ids: {why_not}; use dense_mask or auto")
        choice, reason = requested, f"{PACKED_ATTENTION_ENV}={requested}"
    elif why_not:
        if attn.startswith("flash_attention"):
            raise DataError(f"attention {attn!r} takes no 4D mask and {why_not}: packed documents cannot be "
                            "separated; use --attn_implementation sdpa or --no_packing")
        choice, reason = "dense_mask", why_not
    elif device_type == "cuda" or attn.startswith("flash_attention"):
        choice, reason = "position_ids", f"{attn} on {device_type}: transformers builds the document masks"
    else:
        choice, reason = "dense_mask", f"{device_type}: the dense mask is the CPU fallback"
    if (device_type, family, attn, choice) not in _logged_choices:
        _logged_choices.add((device_type, family, attn, choice))
        logging.getLogger("boomerang.data").info("packed attention: %s (%s; %s, %s)", choice, reason, family, attn)
    return choice


def model_inputs(batch: dict, device, mask_dtype: torch.dtype, config=None, attention: str | None = None) -> dict:
    """Keyword arguments for a Hugging Face causal LM: ids, per-document positions and attention.

    ``attention``: ``"position_ids"`` or ``"dense_mask"``; default: ``packed_attention(device, config)``.
    position_ids: no ``attention_mask``; for flash attention the varlen sequence lengths as transformers derives them
    from the positions (its own derivation only covers batch size 1). dense_mask: for a model with sliding-window
    layers (``config.layer_types`` holding ``"sliding_attention"``) a dict of masks per layer type, as Hugging Face
    models accept; a config with ``sliding_window`` and no ``layer_types`` (Mistral) slides in every layer."""
    doc_ids = batch["doc_ids"].to(device)
    position_ids = position_ids_from_docs(doc_ids)
    inputs = {"input_ids": batch["input_ids"].to(device), "position_ids": position_ids}
    attention = attention or packed_attention(device, config)
    if attention == "position_ids":
        inputs["use_cache"] = False  # transformers looks for packed documents only when no cache is passed
        if (getattr(config, "_attn_implementation", None) or "").startswith("flash_attention"):
            # flash attention only; _library_packing has checked that this transformers has it
            from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

            (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(position_ids)
            inputs.update(cu_seq_lens_q=cu_q, cu_seq_lens_k=cu_k, max_length_q=int(max_q), max_length_k=int(max_k))
        return inputs
    if attention != "dense_mask":
        raise DataError(f"model_inputs: attention must be 'position_ids' or 'dense_mask', got {attention!r}")
    layer_types = getattr(config, "layer_types", None) or ()
    window = getattr(config, "sliding_window", None)
    mask = document_attention_mask(doc_ids, mask_dtype, None if layer_types else window)  # no layer_types: all slide
    if window and "sliding_attention" in layer_types:
        mask = {"full_attention": mask, "sliding_attention": document_attention_mask(doc_ids, mask_dtype, window)}
    inputs["attention_mask"] = mask
    return inputs


# ------------------------------------------------------------------------------------ the paper's recipe
PAPER_SKIP = 50_000  # the paper's train.py: train_dataset.skip(50000) before shuffling
PAPER_SHUFFLE_BUFFER = 100_000  # ... then .shuffle(buffer_size=100_000, seed=args.seed)


def paper_order(items: Iterable, skip: int = PAPER_SKIP, buffer_size: int = PAPER_SHUFFLE_BUFFER, seed: int = 0):
    """The order in which the paper's code reads a stream: ``datasets`` 3.6.0's ``IterableDataset.skip(skip)``
    followed by ``.shuffle(buffer_size=buffer_size, seed=seed)``, one process, epoch 0, written out here so that it
    holds whatever ``datasets`` is installed (5.x rewrote the buffer: it permutes the buffer and emits half).

    In 3.6.0 a ``skip`` before ``shuffle`` freezes the order of the source's shards (``SkipExamplesIterable`` is
    built with ``block_sources_order_when_shuffling``), so the items come in source order, the first ``skip``
    dropped. The buffer (``BufferShuffledExamplesIterable.__iter__``) fills to ``buffer_size``; from then on each
    new item replaces the one it yields, at a slot drawn from ``numpy.random.default_rng(seed)`` in batches of 1000
    (``rng.integers(0, buffer_size, size=1000)``, drawn when the previous batch is used up); at the end of the
    stream what is left in the buffer is shuffled with the same generator (``rng.shuffle``) and emitted.
    Checked against the paper's run under datasets 3.6.0 (tests/test_paper_reference.py)."""
    import numpy as np  # a dependency of torch and datasets; only the paper recipe needs it

    rng = np.random.default_rng(seed)
    buffer, slots = [], iter(())
    for item in itertools.islice(items, skip, None):
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        slot = next(slots, None)
        if slot is None:
            slots = iter(rng.integers(0, buffer_size, size=1000).tolist())
            slot = next(slots)
        yield buffer[slot]
        buffer[slot] = item
    rng.shuffle(buffer)
    yield from buffer


def paper_documents(source: str, split: str = "train", text_field: str = "text", seed: int = 0,
                    skip: int = PAPER_SKIP, buffer_size: int = PAPER_SHUFFLE_BUFFER, flag: str = "--dataset"):
    """The paper's documents in the paper's order (``paper_order``): a local source's documents in file order
    (files sorted, as ``datasets`` lists a folder), a hub dataset streamed in its own order. One pass, no repetition."""
    if is_local(source):
        docs = iter(read_local_documents(source, text_field, flag))
    else:
        import datasets  # slow to import; only hub sources need it

        docs = (_text_of(row, text_field, source, flag)
                for row in datasets.load_dataset(source, split=split, streaming=True))
    yield from paper_order(docs, skip, buffer_size, seed)


def paper_sequence(tokenizer, text: str, max_length: int) -> dict:
    """One document as the paper's code makes it: the tokenizer's own special tokens (a BOS where it adds one),
    truncated and right-padded with EOS to ``max_length``; ``labels`` = ``input_ids`` with every EOS (the pad
    token) set to -100, as ``DataCollatorForLanguageModeling(mlm=False)`` does with ``pad_token = eos_token``."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no eos_token_id; the paper's recipe pads with it")
    ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
    input_ids = torch.full((max_length,), eos, dtype=torch.long)
    input_ids[:len(ids)] = torch.tensor(ids, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": (torch.arange(max_length) < len(ids)).long(),
            "labels": input_ids.masked_fill(input_ids == eos, -100)}


class PaperStream(Stream):
    """The paper's sequences (``paper_documents`` + ``paper_sequence``): ``input_ids``, ``attention_mask``, ``labels``."""

    def __init__(self, source: str, tokenizer, max_length: int, split: str = "train", text_field: str = "text",
                 seed: int = 0, skip: int = PAPER_SKIP, buffer_size: int = PAPER_SHUFFLE_BUFFER,
                 flag: str = "--dataset", start: dict | None = None):
        cursor, position = resume_point(start)  # one sequence a document: the documents before it are not tokenized
        self._docs = itertools.islice(paper_documents(source, split, text_field, seed, skip, buffer_size, flag),
                                      cursor["document"], None)
        self._tokenizer, self._max_length = tokenizer, max_length

        def items():
            for text in self._docs:
                cursor["document"] += 1
                yield paper_sequence(tokenizer, text, max_length)

        super().__init__(items(), f"{flag}: the paper's stream ran out of documents after {{position}} (it skips the "
                         f"first {skip}; lower --paper_skip_documents for a small dataset)", cursor, position)

    def drop(self) -> None:
        """Pass over the next document without tokenizing it (one document is one sequence)."""
        try:
            next(self._docs)
        except StopIteration:
            raise DataError(self._exhausted.format(position=self.position)) from None
        self.cursor["document"] += 1
        self.position += 1
