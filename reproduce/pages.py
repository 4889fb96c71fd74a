"""The results pages, written from the committed result files: no figure on them is typed by hand.

    python -m reproduce.pages                          # rewrite every generated block from the committed results
    python -m reproduce.pages --check                  # exit 1, naming each block, where a page differs (CI)
    python -m reproduce.pages --collect runs/exp       # copy a run's result files into the committed data, then write
    python -m reproduce.pages --collect_main runs/main-cpu   # the same for a main job's results

Generated blocks sit between ``<!-- NAME: start -->`` and ``<!-- NAME: end -->`` markers:

- docs/results/experiments/README.md, block ``report``: the experiments' whole report (``reproduce.claims``) from
  docs/results/experiments/data (every seed's result records, training summaries and stage ledger);
- README.md, block ``claims``: the claims table of that same report;
- README.md, blocks ``ladder`` and ``budget-claims``: the main job's family by size and the paper's claims at its
  budget (``reproduce.main_report``) from docs/results/main-cpu/data, when that folder holds results.

``--collect RUN`` copies from an experiments folder (``reproduce.experiments --output_dir RUN``) what the report
reads and nothing else (no weights): ``chance.json``, ``answer_bias.json``, and per seed ``students.json``,
``training.json``, ``stage_times.json`` and ``eval/<sweep>/results/*.json``. A seed or a result already committed is
replaced by the run's copy; others are kept, and so is each seed's ``stage_notes.json`` (what else ran during a
stage, written by whoever ran it; the page prints it beside the stage). The same copy, put back as a run folder,
resumes the experiments without their students (``reproduce.experiments`` skips a student whose evaluations are
recorded). ``--collect_main RUN`` copies a main job's result records, search result and ``report.json``
(``reproduce.main_report.MAIN_FILES``), replacing what was committed before.
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
from reproduce.main_report import MAIN_FILES, MainReport

EXPERIMENTS_PAGE = os.path.join(REPO, "docs", "results", "experiments", "README.md")
EXPERIMENTS_DATA = os.path.join(REPO, "docs", "results", "experiments", "data")
MAIN_DATA = os.path.join(REPO, "docs", "results", "main-cpu", "data")
MAIN_PLOTS = os.path.join(REPO, "docs", "results", "main-cpu", "plots-by-size")
README = os.path.join(REPO, "README.md")
RESAMPLES = 2000
HELDOUT = "the first 25 documents, each cut to 512 tokens"  # the experiments' defaults (--heldout_docs, --max_tokens)
COLLECTED = ("students.json", "training.json", "stage_times.json")


class PageError(Exception):
    pass


def blocks(data: str = EXPERIMENTS_DATA, figures: str | None = None, main_data: str | None = None,
           main_plots: str | None = None) -> dict[tuple[str, str], str]:
    """{(page, block name): the text the block must hold}; ``figures`` and ``main_plots``: folders to draw the
    pages' plots into (their own, when writing; None when checking: the plot lines are the same, the PNGs are not
    compared)."""
    report = ClaimsReport.load(data, RESAMPLES, HELDOUT)
    main_data = main_data or MAIN_DATA
    with tempfile.TemporaryDirectory() as tmp:
        text = report.markdown(report.plots(figures or tmp))
        body = text.split("\n", 2)[2].lstrip("\n")  # the page has its own title
        out = {(EXPERIMENTS_PAGE, "report"): body, (README, "claims"): report.claims_table()}
        if glob.glob(os.path.join(main_data, "eval", "results", "*.json")):
            main = MainReport.load(main_data, RESAMPLES)
            # the link names the page's own plot folder, wherever a check draws them
            out[(README, "ladder")] = main.ladder_block(main_plots or os.path.join(tmp, "main-plots"),
                                                        os.path.relpath(MAIN_PLOTS, REPO))
            out[(README, "budget-claims")] = main.claims_block()
    return out


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
    for (page, name), body in blocks(data, os.path.dirname(EXPERIMENTS_PAGE), None, MAIN_PLOTS).items():
        new = render(page, name, body)
        if new != open(page, encoding="utf-8").read():
            atomic_write_text(page, new)
            changed.append(page) if page not in changed else None
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

    for name in ("chance.json", "answer_bias.json"):
        if os.path.isfile(os.path.join(run, name)):
            put(os.path.join(run, name))
    for sd in seeds:
        for name in COLLECTED:
            if os.path.isfile(os.path.join(sd, name)):
                put(os.path.join(sd, name))
        for f in sorted(glob.glob(os.path.join(sd, "eval", "*", "results", "*.json"))):
            put(f)
    return copied


def collect_main(run: str, data: str | None = None) -> list[str]:
    """Copy the result files of main-job folder RUN into DATA (default docs/results/main-cpu/data; ``MAIN_FILES``;
    what was there is replaced)."""
    data = data or MAIN_DATA
    found = sorted(f for pattern in MAIN_FILES for f in glob.glob(os.path.join(run, pattern)))
    if not any(f.startswith(os.path.join(run, "eval", "results")) for f in found):
        raise PageError(f"--collect_main {run}: no eval/results/*.json there; pass a main job's --output_dir "
                        "(runs/main-cpu), after the job has finished")
    staging = data + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    for f in found:
        dst = os.path.join(staging, os.path.relpath(f, run))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(f, dst)
    shutil.rmtree(data, ignore_errors=True)
    os.replace(staging, data)
    return [os.path.join(data, os.path.relpath(f, run)) for f in found]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.pages", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 where a page differs")
    p.add_argument("--collect", metavar="RUN", default=None, help="an experiments folder whose results to commit")
    p.add_argument("--collect_main", metavar="RUN", default=None, help="a main job's folder whose results to commit")
    p.add_argument("--data", default=EXPERIMENTS_DATA, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        if args.collect:
            print(f"copied {len(collect(args.collect, args.data))} files into {args.data}")
        if args.collect_main:
            print(f"copied {len(collect_main(args.collect_main))} files into {os.path.relpath(MAIN_DATA, REPO)}")
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
