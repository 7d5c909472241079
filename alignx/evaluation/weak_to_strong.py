"""Performance gap recovered (PGR, Burns et al. 2023): how much of the gap between a weak supervisor
and a strong model trained on the truth a strong student closes when trained on the weak labels.

A pipeline reports it when its config has a ``pgr`` node naming three of its stages and the
metric compared (``experiment=weak_to_strong`` sets one)::

    pipeline:
      pgr: {metric: eval/rm_accuracy, weak: weak, student: student, ceiling: ceiling}
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from alignx.errors import AlignxError, ConfigError

#: the keys of a pipeline's ``pgr`` node
PGR_KEYS = ("metric", "weak", "student", "ceiling")
#: the roles of the stages, in the order they are named
ROLES = ("weak", "student", "ceiling")


class NoPerformanceGap(AlignxError):
    """PGR is undefined: the strong ceiling scored exactly what the weak supervisor did."""


def performance_gap_recovered(weak: float, student: float, ceiling: float) -> float:
    """``(student - weak) / (ceiling - weak)``: 0 = the student only matches its weak supervisor,
    1 = it matches the strong model trained on the truth; below 0 or above 1 are possible.

    Raises :class:`NoPerformanceGap` when ``ceiling == weak`` (there is no gap to recover).
    """
    gap = ceiling - weak
    if gap == 0:
        raise NoPerformanceGap(
            f"PGR is undefined: the strong ceiling scores {ceiling:.4f}, exactly the weak supervisor's {weak:.4f}, "
            "so there is no gap to recover (give the weak model less capacity, data or steps, or the ceiling more)"
        )
    return (student - weak) / gap


def check_pgr_spec(node: Any, stages: Sequence[str]) -> dict[str, str] | None:
    """The pipeline's ``pgr`` node as ``{metric, weak, student, ceiling}`` (None when absent), checked
    against the pipeline's stage names before anything runs."""
    if node is None:
        return None
    if not isinstance(node, Mapping):
        raise ConfigError(f"pipeline.pgr must be a mapping with keys {', '.join(PGR_KEYS)}, got {node!r}")
    keys = set(node)
    if keys != set(PGR_KEYS):
        raise ConfigError(f"pipeline.pgr has keys {sorted(keys)}; it needs exactly {', '.join(PGR_KEYS)}")
    spec = {k: str(node[k]) for k in PGR_KEYS}
    for role in ROLES:
        if spec[role] not in stages:
            raise ConfigError(f"pipeline.pgr.{role}='{spec[role]}' is not a stage of this pipeline. Stages: {', '.join(stages)}")
    return spec


def pgr_of_stages(spec: Mapping[str, str], metrics: Mapping[str, Mapping[str, float]]) -> tuple[float, str]:
    """PGR of the stages ``spec`` names, from each stage's final ``metrics``; returns (PGR, a summary line).

    Raises :class:`NoPerformanceGap` (ceiling == weak) or :class:`ConfigError` when a stage did
    not report the metric (e.g. its evaluation was off).
    """
    metric = spec["metric"]
    values = {}
    for role in ROLES:
        stage = spec[role]
        if metric not in metrics[stage]:
            raise ConfigError(f"pipeline.pgr: stage '{stage}' ({role}) reported no '{metric}' "
                              f"(it has: {', '.join(sorted(metrics[stage])) or 'no metrics'})")
        values[role] = float(metrics[stage][metric])
    pgr = performance_gap_recovered(values["weak"], values["student"], values["ceiling"])
    line = (f"weak-to-strong on {metric}: weak {values['weak']:.4f}, student {values['student']:.4f}, "
            f"ceiling {values['ceiling']:.4f} -> PGR {pgr:.3f}")
    return pgr, line
