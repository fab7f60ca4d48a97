"""The argument parser, assembled from one ``add_parser`` per command module."""

from __future__ import annotations

import argparse

from lunglens.cli import classify, demo, desktop, models, score, validate
from lunglens.cli.common import EPILOG, Command


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to render ``--help`` in the docs)."""
    from lunglens import __version__
    from lunglens.selftest import add_parser as add_selftest  # installation check

    parser = argparse.ArgumentParser(
        prog="lunglens",
        description="Offline COVID-19 triage aid for chest CT and X-ray.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lunglens {__version__}")
    parser.add_argument(
        "--models-dir",
        help="folder of models (default: $LUNGLENS_MODELS_DIR or the installed models)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Command, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    for module in (desktop, classify, score, validate, models, demo):
        module.add_parser(add)
    add_selftest(add)
    return parser
