"""Entry point of the ``cattune`` command.

Each subcommand lives in its own module under ``cattune.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int``. Library errors
that describe bad input (files, configs, options) are shown as one clear line, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from cattune import __version__

# Order is the order of the pipeline, which is also the order shown by --help.
SUBCOMMAND_MODULES = ("data", "annotate", "train", "evaluate", "experiment", "report")


class UserError(Exception):
    """A problem the user can fix (bad option, missing file); printed without a traceback."""


def _user_error_types() -> tuple[type[BaseException], ...]:
    from cattune.data.records import DataError

    types: list[type[BaseException]] = [UserError, DataError]
    try:
        from cattune.config import ConfigError

        types.append(ConfigError)
    except ImportError:
        pass
    try:
        from cattune.models import ModelLoadError

        types.append(ModelLoadError)
    except ImportError:
        pass
    return tuple(types)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cattune",
        description=(
            "Causal Attention Tuning: fine-tune a causal LM while teaching its attention which "
            "earlier tokens each answer should depend on. Stages: data -> annotate -> train -> "
            "evaluate; 'experiment' runs a baseline-vs-CAT comparison end to end."
        ),
    )
    parser.add_argument("--version", action="version", version=f"cattune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"cattune.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"cattune.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # No hub is reachable on most of our users' training boxes; never wait on it by default.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "urllib3", "filelock", "datasets"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        status = int(args.func(args) or 0)
        _end_distributed()
        return status
    except _user_error_types() as exc:
        print(f"cattune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cattune {args.command}: interrupted", file=sys.stderr)
        return 130


def _end_distributed() -> None:
    """Destroy the process group a launcher (torchrun, accelerate) had the Trainer create.

    Left to interpreter exit, gloo's worker threads can be torn down mid-flight and abort a run
    that succeeded (SIGABRT, "terminate called without an active exception"). Only after success:
    destroying it while another rank is still in a collective can deadlock.
    """
    dist = sys.modules.get("torch.distributed")  # a command that never imported torch has no group
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
