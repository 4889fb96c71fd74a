"""Shared command-line plumbing: YAML config files under flags, logging, friendly fatal errors."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import yaml


def parse_with_config(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse ``argv``; a ``--config FILE.yaml`` supplies defaults that explicit flags override.

    Unknown keys in the YAML file are an error that names them (a typo must not be silently ignored).
    """
    parser.add_argument("--config", default=None, help="YAML file of flag values (flags given on the command line win)")
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        if not os.path.isfile(pre.config):
            parser.error(f"--config {pre.config}: no such file")
        with open(pre.config) as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            parser.error(f"--config {pre.config}: expected a mapping of flag names to values")
        known = {a.dest for a in parser._actions}
        unknown = sorted(k for k in values if k not in known)
        if unknown:
            parser.error(f"--config {pre.config}: unknown keys {unknown}; see --help for the flag names")
        parser.set_defaults(**values)
    args = parser.parse_args(argv)
    # which settings the user gave (in the config file or as flags), as opposed to parser defaults
    given = set(values) if pre.config else set()
    words = list(sys.argv[1:] if argv is None else argv)
    for action in parser._actions:
        if any(w == o or w.startswith(o + "=") for o in action.option_strings for w in words):
            given.add(action.dest)
    args.explicit_settings = sorted(given)
    return args


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def fail(message: str, code: int = 2) -> "NoReturn":  # noqa: F821
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)
