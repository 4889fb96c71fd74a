"""Small file-system helpers: writes that never leave a half-written file behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


@contextmanager
def atomic_directory(final_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary folder beside ``final_dir``; on success it is renamed to ``final_dir``.

    A crash leaves ``final_dir`` untouched (the temporary folder is removed). An existing ``final_dir`` is replaced
    only when ``overwrite`` is true, else ``FileExistsError``."""
    final_dir = os.path.abspath(os.fspath(final_dir))
    if os.path.exists(final_dir) and not overwrite:
        raise FileExistsError(f"{final_dir} already exists; choose another folder or pass --overwrite")
    os.makedirs(os.path.dirname(final_dir), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(final_dir)}-", dir=os.path.dirname(final_dir))
    try:
        yield tmp
        if os.path.exists(final_dir):
            old = final_dir + ".old"
            if os.path.exists(old):
                shutil.rmtree(old)
            os.replace(final_dir, old)
            os.replace(tmp, final_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_model_folder(model, tokenizer, save_directory: str | os.PathLike, metadata_name: str, metadata: dict,
                      overwrite: bool = False) -> str:
    """Write a loadable model folder atomically: ``save_pretrained`` weights and config, the tokenizer (when
    given) and ``metadata`` as the JSON file ``metadata_name``; a crash leaves no half-written folder."""
    with atomic_directory(save_directory, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        atomic_write_json(os.path.join(tmp, metadata_name), metadata)
    return os.fspath(save_directory)


def markdown_table(rows: list, columns: list[str] | None = None) -> str:
    """The one markdown table writer of every report: ``rows`` (lists, or dicts keyed by column) laid out by
    pandas; cells are written as given (text already formatted is never re-parsed as a number)."""
    import pandas as pd  # lazy: only where a table is written

    return pd.DataFrame(rows, columns=columns).to_markdown(index=False, disable_numparse=True) + "\n"
