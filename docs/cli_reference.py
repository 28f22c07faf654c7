"""Writes docs/cli.md, the command line's reference, from the parser itself.

    python docs/cli_reference.py        # rewrite docs/cli.md
    python docs/cli_reference.py --check   # exit 1 if docs/cli.md is not what the parser says

``tests/test_readme.py`` runs the check, so the page never drifts from the code.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parent / "cli.md"

INTRO = """# The command line

`python -m densflow` (or the installed `densflow` script) trains, evaluates and samples DenseFlow,
converts the authors' checkpoints, and checks and downloads datasets and weights. Every command
below is the `--help` of the command itself; this page is generated from the parser by
`python docs/cli_reference.py`, and a test checks that it is current.

Exit status, by cause: 0 when done; 2 for a mistake in the input (a bad option, a missing or
malformed dataset or checkpoint, an output that is one of the inputs, a missing optional package, a
diverged run) or a refusal of the environment (a full disk, no permission, a read-only file system,
a path that does not exist, not enough memory for the requested size), with one `error:` line
naming the path and the cause and saying how to fix it; 130 after Ctrl-C or SIGTERM (which
`torchrun` and batch schedulers send), with one line saying what was kept; 1 for a bug in densflow
(any other exception). `--debug` (or `DENSFLOW_DEBUG=1`) shows the full traceback instead. Options
shown as `--root` or `--official` in older scripts still work, with a one-line deprecation warning.
"""


def _help(parser: argparse.ArgumentParser) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        parser.print_help()
    return out.getvalue().rstrip() + "\n"


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for the parser and every sub-command, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def render() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: the page must not depend on it
    from densflow.cli import build_parser

    parts = [INTRO]
    for path, parser in _commands(build_parser()):
        parser.prog = " ".join(["python -m densflow", *path])
        parts.append(f"\n## `{parser.prog}`\n\n```text\n{_help(parser)}```\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (sys.argv[1:] if argv is None else argv)
    text = render()
    if check:
        if PAGE.read_text() != text:
            print(f"{PAGE} is stale: run python docs/cli_reference.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
