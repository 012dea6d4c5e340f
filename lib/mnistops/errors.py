"""The exceptions mnistops raises on purpose.

Every error a user can cause is one of these. Each subclasses a built-in (as scikit-learn's
``NotFittedError(ValueError, AttributeError)`` does) so callers may catch either, and each
message is one line: what was wrong, and what to do about it. The CLI prints the message
and exits non-zero; it never shows a traceback for these.
"""

from __future__ import annotations


class MnistopsError(Exception):
    """Base class of every error mnistops raises on purpose."""

    exit_code = 2


class DataError(MnistopsError, ValueError):
    """Data could not be found, read or trusted."""


class ChecksumError(DataError):
    """Bytes did not match their pinned SHA-256 (or our recorded fingerprint)."""


class ValidationError(DataError):
    """A dataset broke one of the rules in :mod:`mnistops.data.validate`."""


class SourceUnavailableError(MnistopsError, OSError):
    """No source could provide a dataset (offline, mirror down, pip failed)."""


class ConfigError(MnistopsError, ValueError):
    """The configuration is invalid: unknown key, wrong type, value out of range."""


class TrackingError(MnistopsError, RuntimeError):
    """The MLflow tracking store could not be reached or used."""


class RunNotFoundError(TrackingError, LookupError):
    """A run id (or model version) named by the user does not exist."""


class StoreNotFoundError(TrackingError, FileNotFoundError):
    """A command that only reads found no tracking store where it looked."""


class GateError(MnistopsError, RuntimeError):
    """The promotion gate could not compare candidate and champion."""


class ReproductionError(MnistopsError, RuntimeError):
    """A run could not be reproduced (data changed, record incomplete)."""


class MissingExtraError(MnistopsError, ImportError):
    """An optional dependency is needed: the message names the extra to install."""


class NoSpaceError(MnistopsError, OSError):
    """The disk filled while writing: ``no space left on device writing PATH``."""


# What a full disk says, through Python (ENOSPC) and through SQLite (MLflow passes its words on).
_NO_SPACE_WORDS = ("No space left on device", "database or disk is full")


def no_space(exc: BaseException, where: object) -> NoSpaceError | None:
    """A :class:`NoSpaceError` if ``exc`` (or what caused it) is a full disk, else None.

    The path is the file the system named, else ``where`` (the store's database, say): SQLite and
    MLflow say that the disk is full, not which file they were writing.
    """
    import errno

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, NoSpaceError):
            return seen
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return NoSpaceError(
                f"no space left on device writing {seen.filename or where}: free some space and run it again"
            )
        if any(words in str(seen) for words in _NO_SPACE_WORDS):
            return NoSpaceError(f"no space left on device writing {where}: free some space and run it again")
        seen = seen.__cause__ or seen.__context__
    return None
