"""The stage plan of iterative objectives: iteration *k* trains from iteration *k-1*'s saved model.

An objective that is several trainings returns :func:`iteration_stages` from
:meth:`alignx.objectives.Objective.stages`; the job runs them in order as nested MLflow runs, with
the stage cache (:mod:`alignx.job.pipeline`). Used by ``objective=online_dpo``; a plugin's
iterative method (self-play, ...) can use it too.
"""

from __future__ import annotations

from typing import Callable, Sequence

#: the stage name of iteration k
STAGE_NAME = "iteration_{k}"


def previous_model(k: int, adapter: str) -> str:
    """The ``stage:`` reference to the model iteration ``k`` (>= 2) starts from: iteration k-1's
    saved model, or with an adapter its merged copy (a plain model, so the next iteration trains a
    fresh adapter on top of it and its reference, the adapter switched off, is that iterate)."""
    return f"stage:{STAGE_NAME.format(k=k - 1)}" + ("/../merged" if adapter != "none" else "")


def iteration_stages(
    iterations: int, adapter: str = "none", extra: Callable[[int], Sequence[str]] | None = None
) -> list[dict]:
    """``iteration_1`` .. ``iteration_N`` as pipeline stages (``[{name, overrides}]``).

    Iteration 1 starts from the job's model; iteration k from iteration k-1's
    (:func:`previous_model`). With an adapter every iteration saves its merged model
    (``save.merge_adapter=true``). ``extra(k)`` adds iteration k's own overrides (e.g. its number).
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    stages = []
    for k in range(1, iterations + 1):
        overrides = ["save.merge_adapter=true"] if adapter != "none" else []
        if k > 1:
            overrides += ["model=hf", f"model.name_or_path={previous_model(k, adapter)}"]
        overrides += list(extra(k)) if extra is not None else []
        stages.append({"name": STAGE_NAME.format(k=k), "overrides": overrides})
    return stages
