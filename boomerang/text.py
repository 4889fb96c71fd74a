"""Reading text: the one home for every command's data flag (training data, held-out text, calibration text).

A source is a local file (``.txt``: documents separated by blank lines; ``.jsonl``/``.json``: one object a line,
the text in ``text_field``; ``.parquet``: the column ``text_field``), a local folder (every such file inside it,
recursively, in sorted order), or otherwise a Hugging Face dataset name. Errors are ``DataError`` and name the flag
the source came from and the fix.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Iterator

from boomerang.errors import BoomerangError

LOCAL_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")


class DataError(BoomerangError):
    pass


def is_local(source: str) -> bool:
    return os.path.exists(source) or source.startswith((".", "/", "~")) or source.endswith(LOCAL_SUFFIXES)


def local_files(source: str, flag: str = "--dataset") -> list[str]:
    """The data files a local ``source`` names, or a DataError that names the flag and the fix."""
    path = os.path.expanduser(source)
    if os.path.isfile(path):
        if not path.endswith(LOCAL_SUFFIXES):
            raise DataError(f"{flag} {source}: unsupported file type; use .txt, .jsonl, .json or .parquet")
        return [path]
    if os.path.isdir(path):
        files = sorted(f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True)
                       if os.path.isfile(f) and f.endswith(LOCAL_SUFFIXES))
        if not files:
            raise DataError(f"{flag} {source}: folder holds no .txt/.jsonl/.json/.parquet file")
        return files
    raise DataError(f"{flag} {source}: no such file or folder (give a local .txt/.jsonl/.parquet file or folder, "
                    "or a Hugging Face dataset name)")


def check_source(source: str | None, flag: str = "--dataset") -> None:
    """Fail early (before any model loads) on a missing local data file."""
    if source is not None and is_local(source):
        local_files(source, flag)


def read_jsonl(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSON-lines file; a line that is not a JSON object is a
    DataError naming the file and the line."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}, line {n}: expected a JSON object, got {type(obj).__name__}")
            yield n, obj


def _read_file(path: str, text_field: str, lines: bool = False) -> Iterator[str]:
    if path.endswith(".txt") and lines:
        with open(path, encoding="utf-8") as f:
            yield from (line.strip() for line in f)
    elif path.endswith(".txt"):
        with open(path, encoding="utf-8") as f:
            block: list[str] = []
            for line in f:
                if line.strip():
                    block.append(line)
                elif block:
                    yield "".join(block).strip("\n")
                    block = []
            if block:
                yield "".join(block).strip("\n")
    elif path.endswith((".jsonl", ".json")):
        for n, obj in read_jsonl(path):
            if text_field not in obj:
                raise DataError(f"{path} line {n}: no field {text_field!r} (fields: {sorted(obj)}); set --text_field")
            yield obj[text_field]
    else:
        import pyarrow.parquet as pq  # only for .parquet sources

        table = pq.read_table(path, columns=[text_field])
        yield from table.column(text_field).to_pylist()


def read_local_documents(source: str, text_field: str = "text", flag: str = "--dataset",
                         lines: bool = False) -> list[str]:
    """Every non-blank document of a local file or folder, in file order (``lines``: one a line of a .txt file)."""
    docs = []
    for path in local_files(source, flag):
        docs.extend(d for d in _read_file(path, text_field, lines) if d and d.strip())
    if not docs:
        raise DataError(f"{flag} {source}: no non-empty documents")
    return docs


def load_texts(source: str, split: str = "train", text_field: str = "text", dataset_config: str | None = None,
               flag: str = "--data", lines: bool = False) -> list[str]:
    """The documents of a local source, or of a ``datasets`` name (``split``, ``dataset_config``) read whole."""
    if is_local(source):
        return read_local_documents(source, text_field, flag, lines)
    try:
        import datasets  # only for hub sources

        ds = datasets.load_dataset(source, dataset_config, split=split)
    except Exception as e:
        raise DataError(
            f"{flag} {source!r} is not a local file and the dataset could not be loaded ({type(e).__name__}: "
            f"{str(e)[:200]}); offline, pass a local .jsonl/.txt file such as ../shared/data/corpus/brown_train.jsonl"
        ) from None
    if text_field not in ds.column_names:
        raise DataError(f"{flag} {source}: no column {text_field!r} (columns: {ds.column_names}); set --text_field")
    texts = [t for t in ds[text_field] if t and t.strip()]
    if not texts:
        raise DataError(f"{flag} {source}: no non-empty documents")
    return texts
