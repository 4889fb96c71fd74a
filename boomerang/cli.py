"""Shared command-line plumbing: YAML config files under flags, logging, friendly fatal errors."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import yaml


BASE_KEY = "base"  # a config's parent: a path relative to the config file; the child's values win


def read_config(path: str, _seen: tuple[str, ...] = ()) -> dict:
    """The flag values of a YAML config file, its ``base:`` chain resolved (each file lists only what differs from
    its base). A missing file, a file that is not a mapping, or a cycle is a ``ValueError`` naming the file."""
    path = os.path.abspath(path)
    if path in _seen:
        raise ValueError(f"{path}: its base chain comes back to itself ({' -> '.join(_seen + (path,))})")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file" + (f" (the base of {_seen[-1]})" if _seen else ""))
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of flag names to values")
    if (parent := values.pop(BASE_KEY, None)) is None:
        return values
    return {**read_config(os.path.join(os.path.dirname(path), parent), _seen + (path,)), **values}


def parse_with_config(parser: argparse.ArgumentParser, argv=None, config: str | None = None,
                      **settings) -> argparse.Namespace:
    """Parse ``argv``; a ``--config FILE.yaml`` (and its ``base:`` chain) supplies defaults that explicit flags
    override. Unknown keys in the YAML files are an error that names them (a typo must not be silently ignored).

    A caller that is a function, not a command line, passes ``config`` and ``settings`` (Python values keyed by
    flag name, winning over the YAML file as flags do) with no ``argv``: ``parse_with_config(p, [], cfg, x=1)``.
    """
    parser.add_argument("--config", default=None, help="YAML file of flag values (flags given on the command line win)")
    known = {a.dest for a in parser._actions}
    if unknown := sorted(k for k in settings if k not in known):
        raise ValueError(f"unknown settings {unknown}; see --help for the flag names")
    config = config or parser.parse_known_args(argv)[0].config
    values = {}
    if config:
        try:
            values = read_config(config)
        except ValueError as e:
            parser.error(f"--config {config}: {e}")
        if unknown := sorted(k for k in values if k not in known):
            parser.error(f"--config {config}: unknown keys {unknown}; see --help for the flag names")
    parser.set_defaults(**{**values, **settings, "config": config})
    args = parser.parse_args(argv)
    # which settings the user gave (in the config files, as flags or as settings), as opposed to parser defaults
    given = set(values) | set(settings)
    words = list(sys.argv[1:] if argv is None else argv)
    for action in parser._actions:
        if any(w == o or w.startswith(o + "=") for o in action.option_strings for w in words):
            given.add(action.dest)
    args.explicit_settings = sorted(given)
    return args


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def fail(message: str, code: int = 2) -> "NoReturn":  # noqa: F821
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)
