#!/usr/bin/env python3
"""Run the notebook suite with papermill: ``python run_notebooks.py --help``.

Thin on purpose: the runner lives in ``mnistops.runner``, its command line in ``mnistops.cli.notebooks``.
"""

from pathlib import Path

from mnistops.cli.notebooks import main

if __name__ == "__main__":
    main(root=Path(__file__).resolve().parent)
