"""One MLflow parent run per Hydra multirun, with every job a child run.

The parent is created in ``on_multirun_start`` (in the launching process) and its id written
to ``<sweep dir>/.alignx/sweep.json``; each job reads it from there, whatever launcher runs it
(basic, joblib, submitit: all share the sweep dir). Nothing is exported through environment
variables such as MLFLOW_RUN_ID, which would leak into unrelated runs.

The parent describes the sweep, not the first job: a param per swept key holding every value it
takes (``objective.name = dpo,kto``, ``optim.lr = 1e-3,1e-2``: the column the children's values
are in), tags ``alignx.sweep.<key>`` with the same values, and ``alignx.swept_keys``. When the
sweep ends it names the winner (:func:`alignx.tracking.summary.summarize_sweep`): ``best/<metric>``
metrics, ``best.<key>`` params, ``alignx.best_run_id`` and the table ``sweep/jobs.csv``, then
prints where to look (the MLflow runs view, ``mlflow ui``, ``alignx compare``).

Hydra skips ``on_multirun_end`` when a job fails, so the parent is also finalised at process
exit: it never stays RUNNING. Its status is FINISHED only if every job finished; otherwise
FAILED, with ``alignx.failed_jobs`` counting the jobs that did not.
"""

from __future__ import annotations

import atexit
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from alignx.paths import resolve_outputs_root
from alignx.secrets import redact_overrides
from alignx.tracking.params import config_params
from alignx.tracking.start import start_tracking
from alignx.tracking.summary import log_sweep_summary, summarize_sweep
from alignx.tracking.sweep_state import STATE_DIR, read_parent, sweep_state_dir
from alignx.tracking.views import sweep_links

log = logging.getLogger("alignx")


def swept_keys(overrides: list[str]) -> list[str]:
    """Keys of the command-line overrides that sweep over several values."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return sorted(o.get_key_element() for o in parsed if o.is_sweep_override())


#: the groups whose choice is an ``alignx.<group>`` tag on every run
TAGGED_GROUPS = ("objective", "model", "adapter", "dataset")


def swept_group_tags(overrides: list[str]) -> dict[str, str]:
    """``alignx.<group>`` tags of a sweep's parent: the swept options (``dpo,kto``), not the default's."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    tags = {}
    for ov in OverridesParser.create().parse_overrides(overrides):
        if ov.key_or_group in TAGGED_GROUPS and ov.is_sweep_override():
            tags[f"alignx.{ov.key_or_group}"] = ",".join(str(v) for v in ov.sweep_string_iterator())
    return tags


def swept_values(overrides: list[str], sweeper_params: Any = None) -> dict[str, str]:
    """Each swept key -> the values it takes, comma-joined (``objective -> dpo,kto``); a search
    space that is not a list (Optuna's ``interval(1e-4, 1e-2)``) as written."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    given = list(overrides)
    given += [f"{k}={v}" for k, v in (sweeper_params or {}).items()]
    out: dict[str, str] = {}
    for line in given:
        try:
            (ov,) = parser.parse_overrides([line])
        except Exception:  # a sweeper's own syntax: keep it as written
            key, _, value = line.partition("=")
            out.setdefault(key, value)
            continue
        if not ov.is_sweep_override():
            continue
        try:
            values = ",".join(str(v) for v in ov.sweep_string_iterator())
        except Exception:  # interval(...), glob(...): not a list of values
            values = line.partition("=")[2]
        out.setdefault(ov.get_key_element(), values)
    return out


def _param_name(key: str, config: DictConfig) -> str:
    """Where the children hold a swept key's value: ``objective.name`` for a config group, else the key."""
    choices = OmegaConf.select(config, "hydra.runtime.choices") or {}
    bare = key.lstrip("+~")
    if bare in choices and OmegaConf.select(config, f"{bare}.name") is not None:
        return f"{bare}.name"
    return bare


class MlflowSweepCallback(Callback):
    """Hydra callback (configured under ``hydra.callbacks``) that owns a sweep's parent run."""

    def __init__(self) -> None:
        self._parent: Any = None
        self._sweep_dir: Path | None = None
        self._optimized_metric: Any = None
        self._direction: str | None = None
        self._swept: list[str] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.tracking.name == "none":
            return
        overrides = list(config.hydra.overrides.task)
        # swept on the command line (a=1,2) or in the sweeper's config (Optuna's hydra.sweeper.params)
        keys = sorted(set(swept_keys(overrides)) | set(sweeper_param_keys(config)))
        values = swept_values(overrides, OmegaConf.select(config, "hydra.sweeper.params"))
        self._sweep_dir = Path(config.hydra.sweep.dir).resolve()
        fixed = {k: v for k, v in OmegaConf.to_container(config, resolve=False).items() if k != "hydra"}
        tracker = start_tracking(
            config,
            resolve_outputs_root(config),
            redact_overrides(overrides),  # the parent's alignx.overrides tag
            run_name=f"sweep {self._sweep_dir.parent.name}/{self._sweep_dir.name}",
            extra_tags={"alignx.sweep": "true", "alignx.sweep_dir": str(self._sweep_dir), **swept_group_tags(overrides),
                        **{f"alignx.sweep.{k.lstrip('+~')}": v for k, v in values.items()}},
        )
        # a swept key, or any key inside a swept group (objective.name when objective=dpo,kto), varies by
        # job: the parent holds all its values, in the column the children hold theirs
        bare = {k.lstrip("+~") for k in keys}
        params = {k: v for k, v in config_params(_resolvable(fixed)).items()
                  if k not in bare and k.split(".", 1)[0] not in bare}
        params.update({_param_name(k, config): v for k, v in values.items()})
        params["alignx.swept_keys"] = ",".join(keys)
        tracker.log_params(params)
        self._swept = keys
        state = sweep_state_dir(self._sweep_dir)
        (state / "jobs").mkdir(parents=True, exist_ok=True)
        (state / "sweep.json").write_text(json.dumps({"parent_run_id": tracker.run_id, "tracking_uri": tracker.uri, "swept_keys": keys}))
        self._parent = tracker
        self._optimized_metric = config.get("optimized_metric")
        direction = OmegaConf.select(config, "hydra.sweeper.direction")
        # an optimizing sweeper's direction (minimize/maximize; a list for several objectives)
        if isinstance(direction, str):
            self._direction = "max" if direction.lower().startswith("max") else "min"
        if self._optimized_metric is not None:
            tracker.set_tags({"alignx.optimized_metric": _metric_names(self._optimized_metric)})
        atexit.register(self._finalize)
        log.info("MLflow sweep run %s (%s)", tracker.run_id, tracker.uri)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        # Runs in the job's own process: record its outcome where the parent can read it.
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return
        state = sweep_state_dir(Path(hc.sweep.dir).resolve()) / "jobs"
        if state.is_dir():
            (state / f"{hc.job.num}.json").write_text(
                json.dumps({"status": job_return.status.name, "overrides": redact_overrides(hc.overrides.task)})
            )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finalize()

    def _finalize(self) -> None:
        if self._parent is None or self._sweep_dir is None:
            return
        parent, self._parent = self._parent, None
        jobs = [json.loads(p.read_text()) for p in (sweep_state_dir(self._sweep_dir) / "jobs").glob("*.json")]
        children = parent.client.search_runs(
            [parent.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}'"
        )
        failed_jobs = sum(j["status"] != "COMPLETED" for j in jobs)
        failed_runs = sum(r.info.status != "FINISHED" for r in children)
        failed = max(failed_jobs, failed_runs)
        parent.set_tags({"alignx.jobs": str(max(len(jobs), len(children))), "alignx.failed_jobs": str(failed)})
        try:
            optimized = (self._sweep_dir / "optimization_results.yaml").is_file()
            best_run_id = self._record_best(parent, children)
            # several optimized metrics: a Pareto front, no one best job (the table is still written)
            several = self._optimized_metric is not None and "," in _metric_names(self._optimized_metric)
            summary = summarize_sweep(children, self._swept, self._optimized_metric, mode=self._direction,
                                      best_run_id=best_run_id, rank=not several and (best_run_id is not None or not optimized))
            # an optimizer's best params are already there (best.<key> as it reported them)
            log_sweep_summary(parent, summary, params=not optimized)
            if summary.best_run_id:
                log.info("MLflow sweep run %s: best job %s (%s %s = %s)", parent.run_id,
                         summary.tags["alignx.best_run_name"], summary.mode, summary.metric,
                         summary.tags.get("alignx.best_value", "?"))
        except Exception as exc:  # the sweep's status matters more than its summary
            log.warning("could not record the best job on MLflow sweep run %s: %s", parent.run_id, exc)
        status = "FINISHED" if failed == 0 and jobs else "FAILED"
        parent.finish(status)
        log.info("MLflow sweep run %s: %s (%d failed of %d jobs)", parent.run_id, status, failed, len(jobs))
        # plain prints: URLs and commands must stay copy-pasteable
        for line in sweep_links(parent.uri, parent.experiment_id, parent.run_id, self._sweep_dir):
            print(line, flush=True)

    def _record_best(self, parent: Any, children: list) -> str | None:
        """Put an optimizing sweeper's result (Optuna's optimization_results.yaml) on the parent run.

        Params ``best.<key>`` for the best trial's parameters, metric ``best/<optimized_metric>``
        for its value, tag ``alignx.best_run_id`` naming the child run of that trial, which is
        returned (the rest of the summary is the same as a grid sweep's). Absent file (a grid
        sweep, or a sweep that failed before the sweeper wrote it): nothing to record, None.
        """
        path = self._sweep_dir / "optimization_results.yaml"
        if not path.is_file():
            return None
        results = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        metric = _metric_names(self._optimized_metric) if self._optimized_metric is not None else "objective"
        tags = {"alignx.optimized_metric": metric, "alignx.optimizer": str(results.get("name", ""))}
        if "best_params" in results and "best_value" in results:
            best_value = float(results["best_value"])
            parent.log_params({f"best.{k}": str(v) for k, v in results["best_params"].items()})
            parent.log_metrics({f"best/{metric}": best_value})
            tags["alignx.best_value"] = repr(best_value)
            best = _child_with_value(children, metric, best_value)
            if best is not None:
                tags["alignx.best_run_id"] = best.info.run_id
        elif "solutions" in results:  # multi-objective: a Pareto front, not one best trial
            tags["alignx.pareto_solutions"] = str(len(results["solutions"]))
        parent.set_tags(tags)
        log.info("MLflow sweep run %s: best trial %s", parent.run_id, results.get("best_params", tags))
        return tags.get("alignx.best_run_id")


def sweeper_param_keys(config: DictConfig) -> list[str]:
    """Keys the sweeper itself varies (``hydra.sweeper.params``: Optuna's search space, or the basic sweeper's)."""
    params = OmegaConf.select(config, "hydra.sweeper.params")
    return [str(k) for k in params.keys()] if isinstance(params, DictConfig) else []


def _metric_names(optimized_metric: Any) -> str:
    if isinstance(optimized_metric, (list, tuple)) or OmegaConf.is_list(optimized_metric):
        return ",".join(str(m) for m in optimized_metric)
    return str(optimized_metric)


def _child_with_value(children: list, metric: str, value: float) -> Any:
    """The finished child run whose ``metric`` is (to float32 rounding) ``value``, if exactly one is."""
    import math

    matches = [
        c for c in children
        if c.info.status == "FINISHED" and metric in c.data.metrics
        and math.isclose(c.data.metrics[metric], value, rel_tol=1e-6, abs_tol=1e-9)
    ]
    return matches[0] if len(matches) == 1 else None


def _resolvable(tree: Any) -> Any:
    """Resolve what can be resolved; ${hydra:...} interpolations stay as text in the parent."""
    try:
        return OmegaConf.to_container(OmegaConf.create(tree), resolve=True)
    except Exception:
        return tree
