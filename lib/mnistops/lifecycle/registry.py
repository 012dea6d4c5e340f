"""The model registry: versions, the promotion gate, and rollback (aliases, not stages).

Every successful ``train`` registers a version under ``tracking.registered_model``.
:func:`promote` scores the candidate and the current ``@champion`` on the same held-out split,
freshly (logged numbers are not trusted), and moves ``@champion`` only if the candidate clears
the floor and is not worse than the champion by more than the tolerance. Alias moves are
ordered so that a failure between them leaves ``@champion`` on a valid version:
``@previous`` is set first, then ``@champion`` is re-pointed in one atomic update.

The history of ``@champion`` is kept on the versions themselves: each champion's tag
``mnistops.gate.previous_champion`` names the version it replaced, so :func:`rollback` can walk
back any number of steps; a version that was rolled back carries ``mnistops.gate.rolled_back``,
and the gate refuses to promote it again unless asked with ``force``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mnistops import processes, record
from mnistops.config import Config, GateConfig
from mnistops.errors import GateError, RunNotFoundError, TrackingError
from mnistops.lifecycle import shadow, versions
from mnistops.lifecycle.alias_lock import alias_lock
from mnistops.tracking import store
from mnistops.tracking.logdb import Target
from mnistops.tracking.runs import alias_version, feedback_ids, run_config

log = logging.getLogger(__name__)

VERSION_TAGS = (record.DATA_FINGERPRINT, record.SPLIT_FINGERPRINT, record.CONFIG_HASH, record.GIT_CODE_COMMIT)


def register(uri: str, name: str, model_uri: str, run_id: str, tags: dict[str, str], metrics: dict[str, float]) -> str:
    """Register ``model_uri`` as a new version of ``name``; return the version number."""
    import mlflow

    version_tags = {k.split(".")[-1]: tags[k] for k in VERSION_TAGS if k in tags}
    version_tags.update({k: f"{metrics[k]:.6f}" for k in ("accuracy", "f1_macro", "log_loss") if k in metrics})
    version_tags["run_id"] = run_id
    mlflow.set_tracking_uri(uri)
    said = io.StringIO()
    try:
        # MLflow prints "Created version ..." to stderr itself: into the log, not the terminal.
        with contextlib.redirect_stderr(said):
            mv = mlflow.register_model(model_uri, name, tags=version_tags)
    except Exception as exc:
        raise TrackingError(f"cannot register model {name!r} in {uri}: {str(exc).splitlines()[0]}") from None
    finally:
        for line in said.getvalue().splitlines():
            log.info("registry: %s", line)
    return str(mv.version)


def version_for_run(uri: str, name: str, run_id: str) -> Any:
    """The model version of ``name`` registered from ``run_id``."""
    versions = store.client(uri).search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if not versions:
        raise RunNotFoundError(f"run {run_id} has no version of model {name!r}: train it again, or check the run id")
    return max(versions, key=lambda v: int(v.version))


@dataclass
class Check:
    """One row of the decision table."""

    rule: str
    metric: str
    candidate: float
    champion: float | None
    threshold: float
    passed: bool

    @property
    def delta(self) -> float | None:
        """Candidate minus champion."""
        return None if self.champion is None else self.candidate - self.champion


@dataclass
class Decision:
    """What the gate decided, and why."""

    model: str
    candidate_version: str
    candidate_run: str
    champion_version: str | None
    promoted: bool
    dry_run: bool
    reason: str
    checks: list[Check] = field(default_factory=list)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    replay: shadow.Replay | None = None

    @property
    def verdict(self) -> str:
        """``PROMOTED`` / ``NOT PROMOTED``, or for a dry run ``WOULD PROMOTE`` / ``WOULD NOT PROMOTE``."""
        if self.dry_run:
            passes = bool(self.checks) and all(c.passed for c in self.checks)
            return "WOULD PROMOTE" if passes else "WOULD NOT PROMOTE"
        return "PROMOTED" if self.promoted else "NOT PROMOTED"

    def table(self) -> Any:
        """The decision table as a ``pandas.DataFrame``: one row per check."""
        import pandas as pd

        rows = [
            {
                "check": c.rule,
                "metric": c.metric,
                "candidate": round(c.candidate, 4),
                "champion": None if c.champion is None else round(c.champion, 4),
                "delta": None if c.delta is None else round(c.delta, 4),
                "threshold": round(c.threshold, 4),
                "result": "pass" if c.passed else "fail",
            }
            for c in self.checks
        ]
        columns = ["check", "metric", "candidate", "champion", "delta", "threshold", "result"]
        return pd.DataFrame(rows, columns=columns).set_index("check")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready decision, with each check's delta, the replay and the verdict."""
        d = asdict(self)
        d["replay"] = self.replay.to_dict() if self.replay else None
        d["verdict"] = self.verdict
        for row, check in zip(d["checks"], self.checks, strict=True):
            row["delta"] = check.delta
        return d


def _score(
    model_uris: dict[str, str], cfg: Config, production: dict[str, np.ndarray] | None
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Score registered models (role -> URI) on the one held-out split ``cfg`` defines; with
    ``production`` inputs, each model's class probabilities on them too."""
    from mnistops.data import sources
    from mnistops.data.dataset import to_features
    from mnistops.data.split import make_split
    from mnistops.evaluate.metrics import evaluate

    ds = sources.load(cfg.data.dataset, source=cfg.data.source)  # the base: extras are never held out
    split = make_split(ds, cfg.split.strategy, cfg.split.test_size, cfg.seed)
    x, y = ds.features(split.test), ds.labels[split.test]
    columns = [f"prob_{i}" for i in range(10)]
    scores, probas = {}, {}
    for role, uri in model_uris.items():
        # From a server, MLflow downloads the model into a temporary folder it never removes: ours is.
        with processes.temporary_directory("model") as tmp:
            model = versions.load_pyfunc(uri, tmp)
            scores[role] = evaluate(y, model.predict(x)[columns].to_numpy(), ds.class_names).metrics
            if production is not None:
                probas[role] = model.predict(to_features(production["images"]))[columns].to_numpy()
    return scores, probas


def promote(
    uri: str,
    run_id: str,
    gate: GateConfig,
    name: str,
    dry_run: bool = False,
    force: bool = False,
    production_log: Target | None = None,
) -> Decision:
    """Run the gate for ``run_id``'s model version; move aliases if it passes (unless dry run).

    With a ``production_log``, the last ``gate.replay_last`` inputs it holds are replayed through
    candidate and champion (:mod:`mnistops.lifecycle.shadow`): the decision shows the replay, and
    with ``gate.production_metric`` set the candidate must not be worse on the labeled ones.

    A version that was rolled back is refused without scoring unless ``force``. All but a dry run
    hold the alias lock (:mod:`mnistops.lifecycle.alias_lock`) from reading the champion to moving
    it, so promotions and rollbacks of the same model take turns.
    """
    if dry_run:
        return _promote(uri, run_id, gate, name, dry_run, force, production_log)
    with alias_lock(uri, name, gate.lock_wait_s):
        return _promote(uri, run_id, gate, name, dry_run, force, production_log)


def _promote(
    uri: str, run_id: str, gate: GateConfig, name: str, dry_run: bool, force: bool, production_log: Target | None
) -> Decision:
    client = store.client(uri)
    candidate = version_for_run(uri, name, run_id)
    champion = alias_version(uri, name, record.CHAMPION)
    decision = Decision(
        name,
        str(candidate.version),
        run_id,
        str(champion.version) if champion else None,
        promoted=False,
        dry_run=dry_run,
        reason="",
    )
    if champion is not None and str(champion.version) == str(candidate.version):
        decision.reason = f"version {candidate.version} is already @{record.CHAMPION}"
        return decision
    rolled_back = (candidate.tags or {}).get(record.ROLLED_BACK)
    if rolled_back and not force:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(int(rolled_back))) if rolled_back.isdigit() else ""
        decision.reason = (
            f"version {candidate.version} was rolled back{' on ' + when if when else ''}: "
            "promote it again only on purpose, with --force"
        )
        return decision
    different = _different_data(uri, run_id, champion)
    if different:
        decision.reason = different
        _record(client, name, candidate.version, decision)
        return decision
    uris = {"candidate": f"models:/{name}/{candidate.version}"}
    if champion is not None:
        uris["champion"] = f"models:/{name}/{champion.version}"
    production = None
    if production_log is not None:
        production = shadow.production_inputs(production_log, gate.replay_last, feedback_ids(uri, run_id))
        if not len(production["truth"]):
            production = None  # nothing logged that the candidate has not trained on
    decision.scores, probas = _score(uris, run_config(uri, run_id), production)
    if production_log is not None and production is not None:
        decision.replay = shadow.replay(probas, production["truth"], production_log, int(production["seen"]))
    decision.checks = _checks(gate, decision.scores["candidate"], decision.scores.get("champion"), decision.replay)
    failed = [c for c in decision.checks if not c.passed]
    decision.promoted = not failed and not dry_run
    if failed:
        decision.reason = "; ".join(f"{c.metric} {c.candidate:.4f} < {c.threshold:.4f} ({c.rule})" for c in failed)
    else:
        decision.reason = "passes every check" + (" (dry run: nothing moved)" if dry_run else "")
    if dry_run:
        return decision
    _record(client, name, candidate.version, decision)
    if decision.promoted:
        move_champion(client, name, str(candidate.version), champion)
        client.set_model_version_tag(name, candidate.version, record.GATE_PROMOTED_AT, str(int(time.time())))
        if rolled_back:
            client.delete_model_version_tag(name, candidate.version, record.ROLLED_BACK)
    return decision


def _different_data(uri: str, run_id: str, champion: Any | None) -> str | None:
    """Why candidate and champion cannot be compared (other data or split), or None."""
    if champion is None:
        return None
    cand_tags, champ_tags = store.get_run(uri, run_id).data.tags, store.get_run(uri, champion.run_id).data.tags
    # Production extras (data.extra) are training rows only: the base data decides the held-out rows.
    pairs = (
        ("data", base_fingerprint(cand_tags), base_fingerprint(champ_tags)),
        ("split", cand_tags.get(record.SPLIT_FINGERPRINT), champ_tags.get(record.SPLIT_FINGERPRINT)),
    )
    for what, a, b in pairs:
        if a != b:
            return (
                f"candidate and champion were trained on different {what}: "
                f"{what} fingerprint {a} (candidate) vs {b} (champion); "
                "retrain the candidate on the champion's data and split"
            )
    return None


def base_fingerprint(tags: dict[str, str]) -> str | None:
    """The fingerprint of the base data a run trained on (its own data's, without extras)."""
    return tags.get(record.DATA_BASE_FINGERPRINT) or tags.get(record.DATA_FINGERPRINT)


def _checks(
    gate: GateConfig, cand: dict[str, float], champ: dict[str, float] | None, replayed: shadow.Replay | None = None
) -> list[Check]:
    """The gate's rows: the floor, and (with a champion) not worse than it beyond the tolerance, on
    the held-out split and (``gate.production_metric``) on the labeled production inputs."""
    m = gate.floor_metric
    checks = [Check("floor", m, cand[m], champ[m] if champ else None, gate.floor, cand[m] >= gate.floor)]
    if champ is None:
        return checks
    threshold = champ[gate.metric] - gate.tolerance
    checks.append(
        Check(
            "not worse than champion",
            gate.metric,
            cand[gate.metric],
            champ[gate.metric],
            threshold,
            cand[gate.metric] >= threshold,
        )
    )
    if gate.production_metric:
        checks.append(_production_check(gate, replayed))
    return checks


def _production_check(gate: GateConfig, replayed: shadow.Replay | None) -> Check:
    """Not worse than the champion on the labeled production inputs; failed when none were."""
    rule, metric = "not worse on labeled production inputs", f"production_{gate.production_metric}"
    cand = replayed.accuracy.get("candidate") if replayed else None
    champ = replayed.accuracy.get("champion") if replayed else None
    if cand is None or champ is None:
        return Check(rule + " (none labeled: label some through POST /feedback)", metric, 0.0, None, 0.0, False)
    threshold = champ - gate.production_tolerance
    return Check(rule, metric, cand, champ, threshold, cand >= threshold)


def move_champion(client: Any, name: str, version: str, old_champion: Any | None) -> None:
    """Point ``@champion`` at ``version``; the old champion becomes ``@previous`` first.

    The new champion's tag ``mnistops.gate.previous_champion`` names the version it replaces
    (the history :func:`rollback` walks). If the store fails between the updates, ``@champion``
    still names the old champion, a valid version: nothing is ever left unset.
    """
    old = str(old_champion.version) if old_champion is not None else "none"
    if old_champion is not None:
        client.set_registered_model_alias(name, record.PREVIOUS, old)
    client.set_model_version_tag(name, version, record.PREVIOUS_CHAMPION, old)
    client.set_registered_model_alias(name, record.CHAMPION, version)


def _record(client: Any, name: str, version: Any, decision: Decision) -> None:
    tags = {
        record.GATE_DECISION: "promoted" if decision.promoted else "refused",
        record.GATE_REASON: decision.reason[:5000],
        record.GATE_CHAMPION_VERSION: decision.champion_version or "none",
    }
    for check in decision.checks:
        tags[record.gate_metric(check.metric)] = f"{check.candidate:.6f}"
    if decision.replay is not None:
        tags[record.GATE_REPLAY] = json.dumps(decision.replay.to_dict())
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def rollback(uri: str, name: str, wait_s: float = GateConfig().lock_wait_s) -> tuple[str, str]:
    """Move ``@champion`` back to the version it replaced; return ``(from_version, to_version)``.

    Repeated, it walks further back. The version moved away from is tagged rolled back (the gate
    then refuses it without ``--force``); ``@previous`` follows, naming the new champion's own
    predecessor, or is removed when there is none. Holds the alias lock, as :func:`promote` does.
    """
    with alias_lock(uri, name, wait_s):
        return _rollback(uri, name)


def _rollback(uri: str, name: str) -> tuple[str, str]:
    client = store.client(uri)
    champion = alias_version(uri, name, record.CHAMPION)
    if champion is None:
        raise GateError(f"model {name!r} has no @{record.CHAMPION}: there is nothing to roll back")
    target = (champion.tags or {}).get(record.PREVIOUS_CHAMPION)
    if target is None:  # promoted before the history was kept: @previous is all there is
        previous = alias_version(uri, name, record.PREVIOUS)
        target = str(previous.version) if previous is not None else "none"
    if target == "none":
        raise GateError(
            f"{name}@{record.CHAMPION} is version {champion.version}, the first champion: "
            "there is no earlier one to roll back to"
        )
    client.set_registered_model_alias(name, record.CHAMPION, target)
    client.set_model_version_tag(name, champion.version, record.ROLLED_BACK, str(int(time.time())))
    before = (client.get_model_version(name, target).tags or {}).get(record.PREVIOUS_CHAMPION, "none")
    if before != "none":
        client.set_registered_model_alias(name, record.PREVIOUS, before)
    elif alias_version(uri, name, record.PREVIOUS) is not None:
        client.delete_registered_model_alias(name, record.PREVIOUS)
    return str(champion.version), target
