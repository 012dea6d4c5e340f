"""Provenance: the code version and the environment a run used.

* :func:`git_info`: commit, branch, dirty flag and diff of a folder's git repository (via the
  ``git`` command; nothing when the folder is not in a repository or git is missing).
* :func:`environment`: Python, OS, CPU count and the versions of the packages that decide a
  model's numbers; :func:`environment_lock` lists every installed distribution,
  ``pip freeze``-style, from package metadata (no subprocess).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata as md
import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mnistops

KEY_PACKAGES = ("mnistops", "numpy", "scipy", "scikit-learn", "joblib", "pandas", "mlflow", "torch")


@dataclass(frozen=True)
class GitInfo:
    """Where a repository stands."""

    root: str
    commit: str
    branch: str
    dirty: bool
    diff: str

    def tags(self, prefix: str) -> dict[str, str]:
        """MLflow tags ``<prefix>.commit``, ``.branch``, ``.dirty``, ``.root``."""
        return {
            f"{prefix}.commit": self.commit,
            f"{prefix}.branch": self.branch,
            f"{prefix}.dirty": str(self.dirty).lower(),
            f"{prefix}.root": self.root,
        }


def _git(folder: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_info(folder: Path) -> GitInfo | None:
    """The git state of the repository holding ``folder``; None outside a repository."""
    root = _git(folder, "rev-parse", "--show-toplevel")
    commit = _git(folder, "rev-parse", "HEAD")
    if root is None or commit is None:
        return None
    branch = (_git(folder, "rev-parse", "--abbrev-ref", "HEAD") or "").strip()
    status = _git(folder, "status", "--porcelain") or ""
    diff = ""
    if status.strip():
        diff = (_git(folder, "diff", "HEAD") or "") + "\n# git status --porcelain\n" + status
    return GitInfo(root.strip(), commit.strip(), branch, bool(status.strip()), diff)


def source_dir() -> Path:
    """The folder of the mnistops package itself."""
    return Path(mnistops.__file__).resolve().parent


def code_versions(workdir: Path | None = None) -> dict[str, GitInfo]:
    """Git state of the mnistops source (``code``) and, when another repository, of the
    working directory (``workdir``)."""
    out: dict[str, GitInfo] = {}
    code = git_info(source_dir())
    if code is not None:
        out["code"] = code
    work = git_info(workdir or Path.cwd())
    if work is not None and (code is None or work.root != code.root):
        out["workdir"] = work
    return out


def installed() -> dict[str, tuple[str, str]]:
    """Every installed distribution: normalised name -> (name, version), in one scan.

    ``importlib.metadata.version`` walks ``sys.path`` on every call; one walk for all
    packages is ten times faster than one per package. A process scans once (a notebook batch
    asks three times: its tags, its notebooks' keys and its environment lock); the caller gets
    its own copy.
    """
    return dict(_installed())


@functools.cache
def _installed() -> dict[str, tuple[str, str]]:
    seen: dict[str, tuple[str, str]] = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name:
            seen.setdefault(_normalise(name), (name, dist.version))
    return seen


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def package_versions(
    names: tuple[str, ...] = KEY_PACKAGES, dists: dict[str, tuple[str, str]] | None = None
) -> dict[str, str]:
    """Installed versions of ``names`` (absent packages are left out)."""
    dists = installed() if dists is None else dists
    return {n: dists[_normalise(n)][1] for n in names if _normalise(n) in dists}


def environment(dists: dict[str, tuple[str, str]] | None = None) -> dict[str, Any]:
    """Python, OS, CPU count and key package versions."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu_count": os.cpu_count() or 1,
        "packages": package_versions(KEY_PACKAGES, dists),
    }


def environment_hash(env: dict[str, Any]) -> str:
    """SHA-256 of the Python version and key package versions (what the run cache keys on)."""
    key = {"python": env["python"], "packages": env["packages"]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def environment_lock(dists: dict[str, tuple[str, str]] | None = None) -> str:
    """Every installed distribution as ``name==version`` lines, sorted (``pip freeze``-style)."""
    dists = installed() if dists is None else dists
    return "".join(f"{name}=={version}\n" for _, (name, version) in sorted(dists.items()))


def unmet_requirements(requirements: list[str], dists: dict[str, tuple[str, str]] | None = None) -> list[str]:
    """The requirements (``pip`` lines, as in a logged model's ``requirements.txt``) that the
    installed distributions do not plainly meet: a package not installed, a version outside the
    specifier, or a line that is not a plain requirement (a path, a URL, an option, extras whose
    own requirements this does not follow), which is listed rather than guessed at."""
    from packaging.requirements import InvalidRequirement, Requirement

    dists = installed() if dists is None else dists
    unmet = []
    for line in (ln.split("#", 1)[0].strip() for ln in requirements):
        if not line:
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            unmet.append(line)
            continue
        if req.extras:
            unmet.append(line)
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        have = dists.get(_normalise(req.name))
        if have is None or not req.specifier.contains(have[1], prereleases=True):
            unmet.append(line)
    return unmet


def as_dict(info: GitInfo) -> dict[str, Any]:
    """A GitInfo as a plain dict, without the diff."""
    d = asdict(info)
    d.pop("diff")
    return d


def tags(env: dict[str, Any] | None = None, code: dict[str, GitInfo] | None = None) -> dict[str, str]:
    """The tags every run mnistops makes carries (a training run, a notebook batch, a sweep): the
    mnistops version, the environment (Python, OS, machine, cores, package versions, their hash)
    and the git state of each repository (``git.<role>.*``).

    Args:
        env: :func:`environment`'s answer (default: this process's).
        code: role to :class:`GitInfo` (default: :func:`code_versions`).
    """
    import mnistops
    from mnistops import record

    env = env if env is not None else environment()
    out = {
        record.VERSION: mnistops.__version__,
        record.ENV_HASH: environment_hash(env),
        "env.python": env["python"],
        "env.os": env["os"],
        "env.machine": env["machine"],
        "env.cpu_count": str(env["cpu_count"]),
    }
    out.update({f"env.pkg.{k}": v for k, v in env["packages"].items()})
    for role, info in (code if code is not None else code_versions()).items():
        out.update(info.tags(f"git.{role}"))
    if record.GIT_CODE_COMMIT in out:
        out[record.SOURCE_GIT_COMMIT] = out[record.GIT_CODE_COMMIT]
    return out
