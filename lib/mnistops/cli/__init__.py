"""The command line: ``mnistops`` (Typer) and ``run_notebooks.py`` (:mod:`mnistops.cli.notebooks`),
one framework and one way errors become a line and an exit code (:func:`mnistops.cli.common.run_guarded`).

Commands are thin: they build the config, call a stage, and render its result as a rich table or
(``--json``) one JSON object on stdout. A module per group of commands registers them on the app
(:mod:`mnistops.cli.app`); importing this package imports them, in the order ``--help`` lists them.
"""

from __future__ import annotations

import importlib

from mnistops.cli.app import app
from mnistops.cli.common import run_guarded

# The modules whose commands register on the app, in the order `mnistops --help` lists them.
COMMANDS = ("data", "train", "serve", "sweep", "team", "monitor", "runs", "notebooks")
for _name in COMMANDS:
    importlib.import_module(f"mnistops.cli.{_name}")


def main() -> None:
    """Console-script entry point of ``mnistops``."""
    run_guarded(app)
