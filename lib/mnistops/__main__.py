"""``python -m mnistops`` runs the CLI."""

from mnistops.cli import main

main()
