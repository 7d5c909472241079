"""What a run missed while its tracking store was unreachable, and what is still waiting to be sent.

:class:`OutageLog` is plain data (no MLflow): the tracker adds every call that failed, re-sends
what it buffered when the store answers again, and writes the result on the run as tags. A run
whose final status could not be set is kept in a small JSON file (:class:`PendingRuns`) so the
next tracker that reaches the same store finishes it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from alignx.store import file_lock

#: tags written on a run that lost calls to an outage
TAG_FAILURES = "alignx.tracking_failures"
TAG_GAPS = "alignx.tracking_gaps"
TAG_OUTAGE_STEPS = "alignx.tracking_outage_steps"
TAG_RESENT = "alignx.tracking_resent"
TAG_LOST = "alignx.tracking_lost"


def step_ranges(steps: Iterable[int]) -> str:
    """``{3, 4, 5, 6, 7, 12}`` -> ``"3-7,12"``; no steps -> ``""``."""
    ordered = sorted(set(steps))
    out: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


@dataclass
class OutageLog:
    """Calls a run lost, and the metrics/params/tags/texts/artifacts buffered to send again.

    Metric points are ``[key, value, timestamp_ms, step]``. At most ``max_points`` are kept;
    the oldest beyond that are dropped and their steps stay in :meth:`gaps` for good.
    """

    max_points: int = 10_000
    max_text_chars: int = 1_000_000
    failures: int = 0
    failed_steps: set[int] = field(default_factory=set)
    lost_steps: set[int] = field(default_factory=set)
    resent_points: int = 0
    metrics: list[list] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    texts: list[list[str]] = field(default_factory=list)  # [text, artifact_file]
    artifacts: list[list[str | None]] = field(default_factory=list)  # [local path, artifact_path]
    lost: list[str] = field(default_factory=list)

    @property
    def buffered(self) -> bool:
        """Something is waiting to be sent."""
        return bool(self.metrics or self.params or self.tags or self.texts or self.artifacts)

    def add_metrics(self, points: Iterable[list]) -> None:
        points = [list(p) for p in points]
        self.failed_steps.update(int(p[3]) for p in points)
        self.metrics.extend(points)
        overflow = len(self.metrics) - self.max_points
        if overflow > 0:
            dropped, self.metrics = self.metrics[:overflow], self.metrics[overflow:]
            self.lose_metrics(dropped)

    def lose_metrics(self, points: Iterable[list]) -> None:
        """Points that will never be sent (buffer full, or rejected by a store that is up)."""
        steps = {int(p[3]) for p in points}
        self.failed_steps |= steps
        self.lost_steps |= steps

    def add_text(self, text: str, artifact_file: str) -> None:
        if sum(len(t) for t, _ in self.texts) + len(text) > self.max_text_chars:
            self.lost.append(artifact_file)
        else:
            self.texts.append([text, artifact_file])

    def gaps(self) -> str:
        """Steps whose metrics are not (or not yet) in the run, as ranges."""
        return step_ranges(self.lost_steps | {int(p[3]) for p in self.metrics})

    def tags_to_set(self) -> dict[str, str]:
        """The run's record of the outage (empty when nothing ever failed)."""
        if not self.failures:
            return {}
        tags = {
            TAG_FAILURES: str(self.failures),
            TAG_GAPS: self.gaps() or "none",
            TAG_OUTAGE_STEPS: step_ranges(self.failed_steps) or "none",
            TAG_RESENT: str(self.resent_points),
        }
        if self.lost:
            tags[TAG_LOST] = ", ".join(self.lost)[:5000]
        return tags

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["failed_steps"] = sorted(self.failed_steps)
        data["lost_steps"] = sorted(self.lost_steps)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "OutageLog":
        log = cls(**{k: v for k, v in data.items() if k not in ("failed_steps", "lost_steps")})
        log.failed_steps = set(data.get("failed_steps", []))
        log.lost_steps = set(data.get("lost_steps", []))
        return log


class PendingRuns:
    """``<dir>/tracking-pending.json``: runs whose final status is still to be set, by run id.

    Each entry: ``uri`` (without credentials), ``status`` to set, ``outage`` (an
    :meth:`OutageLog.to_json`). Read-modify-write under a file lock: concurrent jobs share it.
    """

    FILE = "tracking-pending.json"

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory) / self.FILE

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _write(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)

    def put(self, run_id: str, entry: dict[str, Any]) -> None:
        with file_lock(self.path.with_name(self.FILE + ".lock")):
            data = self._read()
            data[run_id] = entry
            self._write(data)

    def remove(self, run_id: str) -> None:
        with file_lock(self.path.with_name(self.FILE + ".lock")):
            data = self._read()
            if data.pop(run_id, None) is not None:
                self._write(data)

    def for_uri(self, uri: str) -> dict[str, Any]:
        """The pending entries of runs in the store at ``uri``."""
        return {run_id: e for run_id, e in self._read().items() if e.get("uri") == uri}
