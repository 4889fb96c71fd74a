"""The results pages, written from the committed result files: no figure on them is typed by hand.

    python -m reproduce.pages                          # rewrite every generated block from the committed results
    python -m reproduce.pages --check                  # exit 1, naming each block, where a page differs (CI)
    python -m reproduce.pages --collect runs/exp       # copy a run's result files into the committed data, then write

Generated blocks sit between ``<!-- NAME: start -->`` and ``<!-- NAME: end -->`` markers:

- docs/results/experiments/README.md, block ``report``: the experiments' whole report (``reproduce.claims``) from
  docs/results/experiments/data (every seed's result records, training summaries and stage ledger);
- README.md, block ``claims``: the claims table of that same report.

``--collect RUN`` copies from an experiments folder (``reproduce.experiments --output_dir RUN``) what the report
reads and nothing else (no weights): ``chance.json``, and per seed ``students.json``, ``training.json``,
``stage_times.json`` and ``eval/<sweep>/results/*.json``. A seed or a result already committed is replaced by the
run's copy; others are kept. The same copy, put back as a run folder, resumes the experiments without their
students (``reproduce.experiments`` skips a student whose evaluations are recorded).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile

from boomerang.io import atomic_write_text
from reproduce.claims import ClaimsReport
from reproduce.common import REPO

EXPERIMENTS_PAGE = os.path.join(REPO, "docs", "results", "experiments", "README.md")
EXPERIMENTS_DATA = os.path.join(REPO, "docs", "results", "experiments", "data")
README = os.path.join(REPO, "README.md")
RESAMPLES = 2000
HELDOUT = "the first 25 documents, each cut to 512 tokens"  # the experiments' defaults (--heldout_docs, --max_tokens)
COLLECTED = ("students.json", "training.json", "stage_times.json")


class PageError(Exception):
    pass


def blocks(data: str = EXPERIMENTS_DATA, figures: str | None = None) -> dict[tuple[str, str], str]:
    """{(page, block name): the text the block must hold}; ``figures``: a folder to draw the page's plots into
    (the page's own, when writing; None when checking: the plot lines are the same, the PNGs are not compared)."""
    report = ClaimsReport.load(data, RESAMPLES, HELDOUT)
    if figures is None:
        with tempfile.TemporaryDirectory() as tmp:
            text = report.markdown(report.plots(tmp))
    else:
        text = report.markdown(report.plots(figures))
    body = text.split("\n", 2)[2].lstrip("\n")  # the page has its own title
    return {(EXPERIMENTS_PAGE, "report"): body, (README, "claims"): report.claims_table()}


def _span(page: str, text: str, name: str) -> tuple[int, int]:
    start, end = f"<!-- {name}: start -->", f"<!-- {name}: end -->"
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise PageError(f"{os.path.relpath(page, REPO)}: expected one '{start}' before one '{end}'")
    return text.index(start) + len(start), text.index(end)


def render(page: str, name: str, body: str) -> str:
    """PAGE's text with block NAME holding BODY."""
    text = open(page, encoding="utf-8").read()
    a, b = _span(page, text, name)
    return text[:a] + "\n" + body.strip() + "\n" + text[b:]


def write(data: str = EXPERIMENTS_DATA) -> list[str]:
    """Rewrite every generated block; returns the pages that changed."""
    changed = []
    for (page, name), body in blocks(data, os.path.dirname(EXPERIMENTS_PAGE)).items():
        new = render(page, name, body)
        if new != open(page, encoding="utf-8").read():
            atomic_write_text(page, new)
            changed.append(page)
    return changed


def check(data: str = EXPERIMENTS_DATA) -> list[str]:
    """The blocks whose committed text differs from what ``write`` would put there."""
    return [f"{os.path.relpath(page, REPO)} block '{name}'" for (page, name), body in blocks(data).items()
            if render(page, name, body) != open(page, encoding="utf-8").read()]


def collect(run: str, data: str = EXPERIMENTS_DATA) -> list[str]:
    """Copy the result files of experiments folder RUN into DATA (see the module's docstring); returns the copies."""
    seeds = sorted(glob.glob(os.path.join(run, "seed-*")))
    if not seeds:
        raise PageError(f"--collect {run}: no seed-<S> folders there; pass the --output_dir of reproduce.experiments")
    copied = []

    def put(src: str) -> None:
        dst = os.path.join(data, os.path.relpath(src, run))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(src, dst + ".tmp")
        os.replace(dst + ".tmp", dst)
        copied.append(dst)

    if os.path.isfile(os.path.join(run, "chance.json")):
        put(os.path.join(run, "chance.json"))
    for sd in seeds:
        for name in COLLECTED:
            if os.path.isfile(os.path.join(sd, name)):
                put(os.path.join(sd, name))
        for f in sorted(glob.glob(os.path.join(sd, "eval", "*", "results", "*.json"))):
            put(f)
    return copied


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.pages", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 where a page differs")
    p.add_argument("--collect", metavar="RUN", default=None, help="an experiments folder whose results to commit")
    p.add_argument("--data", default=EXPERIMENTS_DATA, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        if args.collect:
            print(f"copied {len(collect(args.collect, args.data))} files into {args.data}")
        if args.check:
            stale = check(args.data)
            for s in stale:
                print(f"differs from the committed results: {s} (run: python -m reproduce.pages)", file=sys.stderr)
            return 1 if stale else 0
        for page in write(args.data):
            print(f"wrote {os.path.relpath(page, REPO)}")
    except PageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
