"""The CLI answers --help without heavy imports, and lists its commands."""

from __future__ import annotations

import subprocess
import sys

from support import run_cli


def test_import_of_the_cli_loads_no_heavy_library() -> None:
    code = (
        "import sys, mnistops.cli; heavy = [m for m in ('mlflow', 'sklearn', 'pandas', 'torch', 'matplotlib', "
        "'numpy', 'pydantic') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_lists_the_commands() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("data", "train", "runs"):
        assert command in proc.stdout
    data = run_cli("data", "--help").stdout
    for command in ("fetch", "info", "validate", "export"):
        assert command in data
