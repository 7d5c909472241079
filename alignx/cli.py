"""The ``alignx`` command: ``train`` (the default), ``plugins``, ``compare``.

``alignx [train] [overrides]`` is a plain Hydra app (``--help``, ``--cfg job``, ``-m``,
``hydra.run.dir=...`` all work); the other subcommands are ordinary argparse commands.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any, Sequence

SUBCOMMANDS = ("train", "plugins", "compare", "eval")
log = logging.getLogger("alignx")


def _print_error(message: str) -> None:
    from alignx.secrets import redact_text

    # one line, secrets masked: a tracking URL's password or a token must not reach a terminal or a log
    print(f"alignx: error: {redact_text(message)}", file=sys.stderr)


def _log_to_file(exc: BaseException) -> None:
    """Record an error in the job's log file only: the console gets it once, as ``alignx: error: ...``."""
    from alignx.secrets import redact_text

    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, redact_text(str(exc)), None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _preflight(argv: Sequence[str]) -> str | None:
    """Problems Hydra would report as a traceback or a page of text, as alignx's one line (None: all good).

    Checked before Hydra composes anything: a missing launcher install, a mistyped group option
    (with the valid options and the closest one), a mistyped key, an unparsable override.
    """
    from hydra.errors import OverrideParseException

    from alignx.config import check_group_choices, check_override_keys, missing_extra
    from alignx.errors import AlignxError

    overrides = [a for a in argv if not a.startswith("-") and "=" in a]
    if "-m" in argv or "--multirun" in argv:
        # a launcher is only used by a multirun; name its missing install before Hydra fails to import it
        for o in overrides:
            need = missing_extra(o.split("=", 1)[1]) if o.startswith("hydra/launcher=") else None
            if need:
                return f"{o} needs a launcher plugin that is not installed: {need}"
    try:
        check_group_choices(overrides)
        check_override_keys(overrides)
    except AlignxError as exc:
        return str(exc)
    except OverrideParseException as exc:
        return f"{str(exc).splitlines()[0]} (quote values holding '=' or spaces, e.g. '[\"objective=sft\"]')"
    return None


def _optimized_value(cfg: Any, metrics: dict[str, float]) -> float | list[float] | None:
    """What a sweeper optimises (Optuna): the job's value of ``optimized_metric``, or a list of
    values for a multi-objective study; None when ``optimized_metric`` is null (the default)."""
    from omegaconf import ListConfig

    from alignx.errors import ConfigError

    wanted = cfg.optimized_metric
    if wanted is None:
        return None
    names = [str(n) for n in wanted] if isinstance(wanted, ListConfig) else [str(wanted)]
    missing = [n for n in names if n not in metrics]
    if missing:
        hint = ""
        if any(n.startswith("val/") for n in missing) and not any(k.startswith("val/") for k in metrics):
            hint = " (no validation ran: max_steps ended training before trainer.val_check_interval)"
        raise ConfigError(
            f"optimized_metric={', '.join(missing)} is not a metric of this job{hint}. "
            f"Available metrics: {', '.join(sorted(metrics))}"
        )
    values = [float(metrics[n]) for n in names]
    return values if isinstance(wanted, ListConfig) else values[0]


def _hydra_train(argv: Sequence[str]) -> int:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig

    from alignx.config import PRIMARY_CONFIG, register_search_path
    from alignx.errors import AlignxError
    from alignx.paths import register_resolvers
    from alignx.registry import conf_dirs

    register_search_path()
    register_resolvers()
    problem = _preflight(argv)
    if problem:
        _print_error(problem)
        return 2

    @hydra.main(config_path=str(conf_dirs()[0][2]), config_name=PRIMARY_CONFIG, version_base="1.3")
    def task(cfg: DictConfig) -> float | list[float] | None:
        from alignx.config import validate
        from alignx.config.early import check_objective_keys_static, check_targets_static
        from alignx.data.sources import check_files
        from alignx.errors import JobInterrupted, TrainingDiverged
        from alignx.registry import load_plugins

        if not cfg.get("pipeline") and HydraConfig.get().mode == RunMode.RUN:
            # the checks that need no library first: a typo answers before torch and Lightning load.
            # What needs the objective's class or a _target_'s module is read from their source;
            # anything the source does not decide is left to the job's own checks after importing
            try:
                validate(cfg, imports=False)
                registry = load_plugins()
                check_targets_static(cfg)
                check_objective_keys_static(cfg, registry)
                check_files(cfg.dataset)
                _check_rows(cfg, registry)
            except AlignxError as exc:
                _log_to_file(exc)
                _print_error(str(exc))
                sys.exit(2)
        from alignx.job.console import quiet_third_party
        from alignx.job import run_job
        from alignx.secrets import install_secret_filter

        quiet_third_party()
        install_secret_filter()
        try:
            job = run_job(cfg, list(HydraConfig.get().overrides.task))
            if job.rank_zero:
                _print_summary(job)
            return _optimized_value(cfg, job.metrics)
        except JobInterrupted as exc:
            # the run is KILLED; the exit status tells a scheduler the job did not complete
            _log_to_file(exc)
            _print_error(f"{exc} (MLflow run marked KILLED)")
            sys.exit(exc.exit_code)
        except AlignxError as exc:
            if HydraConfig.get().mode == RunMode.RUN:
                _log_to_file(exc)
                _print_error(str(exc))
                # 2: the input was refused before training; 1: training ran and stopped (diverged)
                sys.exit(1 if isinstance(exc, TrainingDiverged) else 2)
            raise

    sys.argv = [sys.argv[0], *argv]
    task()
    return 0


#: files up to this size are validated row by row before the training stack loads (about a second
#: of reading); the job validates bigger ones as it loads them, so they are not read twice up front
EARLY_ROW_CHECK_BYTES = 32 * 2**20


def _check_rows(cfg: Any, registry: Any) -> None:
    """Row-level data errors of a ``jsonl``/``parquet`` dataset before torch and Lightning load:
    the dataset loader's own validation of the train (and ``val_path``) rows, in the order the job
    reads them, when the objective's row kind is known from its source
    (:func:`alignx.config.early.static_row_kind`), ``data.invalid_rows=error`` and the files are
    small; otherwise the job finds them as it loads the rows."""
    from alignx.config.early import static_row_kind
    from alignx.data.formats import collect_invalid_rows
    from alignx.data.sources import dataset_files

    source = str(cfg.dataset.get("source"))
    if source not in ("jsonl", "parquet") or str(cfg.data.get("invalid_rows")) != "error":
        return
    files = dataset_files(cfg.dataset, ("train", "val"))
    if sum(p.stat().st_size for p in files if p.is_file()) > EARLY_ROW_CHECK_BYTES:
        return
    kind = static_row_kind(cfg, registry)
    if kind is None:
        return
    loader = registry.get("dataset", source)
    with collect_invalid_rows("error"):
        loader(cfg.dataset, kind, "train", int(cfg.seed))
        if cfg.dataset.get("val_path") is not None:
            loader(cfg.dataset, kind, "val", int(cfg.seed))


def _print_summary(job) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if job.stages:
        # before / after: each stage's evaluation on the same held-out prompts with the same seed
        stages = Table(title="alignx: pipeline stages (held-out prompts)", show_header=True)
        columns = {"gold (greedy)": "eval/gold_reward_greedy", "gold (sampled)": "eval/gold_reward_sampled",
                   "win rate vs start": "eval/win_rate", "KL to start": "eval/kl_to_reference"}
        stages.add_column("stage")
        stages.add_column("cache")
        for col in columns:
            stages.add_column(col, justify="right")
        for name, st in job.stages.items():
            m = st.metrics
            stages.add_row(name, "hit" if st.cache_hit else "trained",
                           *(f"{m[k]:.3f}" if k in m else "-" for k in columns.values()))
        console.print(stages)
    table = Table(title="alignx: results", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in sorted(job.metrics):
        if key.startswith("eval/") or key in ("train/loss", "val/loss"):
            table.add_row(key, f"{job.metrics[key]:.4f}")
    console.print(table)
    # plain prints: paths and commands must stay copy-pasteable, never wrapped
    print(f"outputs:     {job.output_dir}")
    if job.model_dir:
        print(f"model:       {job.model_dir}")
    if job.run_id:
        print(f"MLflow run:  {job.run_id} in {job.tracking_uri}")
        for line in job.mlflow_links():
            print(line)
    if job.tracking_errors:
        gaps = job.tracking.get("gaps") or "none"
        print(
            f"WARNING: {len(job.tracking_errors)} MLflow call(s) failed (first: {job.tracking_errors[0]}); "
            f"metric steps still missing in MLflow: {gaps}. Outputs on disk are complete (see run.json).",
            file=sys.stderr,
        )
    if job.tracking.get("pending_finish"):
        print(f"WARNING: the MLflow run is not yet marked {job.tracking['pending_finish']}; "
              "the next job on this outputs_root finishes it.", file=sys.stderr)


def _plugins(argv: Sequence[str]) -> int:
    import argparse

    from rich.console import Console
    from rich.table import Table

    from alignx.errors import AlignxError
    from alignx.registry import KINDS, conf_dirs, load_plugins

    parser = argparse.ArgumentParser(prog="alignx plugins", description="List everything registered with alignx.")
    parser.add_argument("--kind", choices=list(KINDS), help="only this kind")
    args = parser.parse_args(list(argv))
    try:
        registry = load_plugins()
    except AlignxError as exc:  # e.g. two plugins registering the same name
        _print_error(str(exc))
        return 2
    table = Table(title="alignx registry")
    for col in ("kind", "name", "provided by", "object"):
        table.add_column(col)
    for e in registry.entries():
        if args.kind and e.kind != args.kind:
            continue
        # the import path, not the object: listing must not import what an entry names
        table.add_row(e.kind, e.name, e.provider, e.target)
    console = Console(width=160)
    console.print(table)
    for name, dist, directory in conf_dirs():
        console.print(f"config package '{name}' from {dist}: {directory}")
    if registry.failures:
        failed = Table(title="plugins that failed to load (skipped)")
        for col in ("entry point", "distribution", "failed in", "error"):
            failed.add_column(col)
        for f in registry.failures:
            failed.add_row(f.entry_point, f.provider, f.stage, f.error)
        console.print(failed)
    return 0


def _compare(argv: Sequence[str]) -> int:
    import argparse

    from alignx.compare import (
        DEFAULT_CURVE,
        DEFAULT_EXPERIMENT,
        DEFAULT_METRICS,
        CompareError,
        compare,
        print_result,
    )

    parser = argparse.ArgumentParser(
        prog="alignx compare",
        description="Table, CSV and plots of the jobs of one sweep (alignx -m ...), logged to its parent MLflow run.",
    )
    parser.add_argument("sweep", nargs="?", help="parent run id or sweep dir (default: the latest sweep)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: the embedded one under $ALIGNX_OUTPUTS or ./outputs)")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="where to find the latest sweep (default: %(default)s)")
    parser.add_argument("--metric", nargs="+", action="extend", help=f"metrics to show, the first ranks (default: {' '.join(DEFAULT_METRICS)})")
    parser.add_argument("--curve", default=DEFAULT_CURVE, help="metric to plot per step for every job (default: %(default)s)")
    parser.add_argument("--mode", choices=["min", "max"], help="best = min or max of the first metric (default: min for loss/perplexity, else max)")
    parser.add_argument("--out", help="output dir (default: <sweep dir>/compare)")
    parser.add_argument("--frontier", nargs=2, metavar=("X", "Y"),
                        help="also plot every job at (X, Y), e.g. eval/kl_to_reference eval/gold_reward_sampled")
    parser.add_argument("--by", help="swept param naming the frontier's series (default: the first non-numeric one)")
    parser.add_argument("--per-job", action="store_true",
                        help="one row per job even when seed is swept (default: one row per setting, mean ± 95%% CI over its seeds)")
    args = parser.parse_args(list(argv))
    try:
        result = compare(
            args.sweep, tracking_uri=args.tracking_uri, experiment=args.experiment, metrics=args.metric,
            curve=args.curve, mode=args.mode, out=args.out, frontier=args.frontier, by=args.by,
            group_seeds=not args.per_job,
        )
    except CompareError as exc:
        _print_error(str(exc))
        return 2
    print_result(result)
    return 0


def _eval(argv: Sequence[str]) -> int:
    import argparse

    from rich.console import Console
    from rich.table import Table

    from alignx.errors import AlignxError

    parser = argparse.ArgumentParser(
        prog="alignx eval",
        description="The evaluation suite on a saved model: gold reward, win rate and KL against a reference, "
        "learned-RM score, best-of-N, perplexity; RM accuracy for a reward model. Logged as an MLflow run.",
    )
    parser.add_argument("model", help="a saved model directory (e.g. outputs/.../model) or runs:/<run_id>/model")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. dataset=arithmetic eval.best_of_n=4 eval.reward_model=<rm dir>")
    parser.add_argument("--reference", help="the reference policy (directory or runs:/ URI) for KL and win rate, e.g. the SFT model")
    parser.add_argument("--no-track", action="store_true", help="do not log an MLflow run")
    args = parser.parse_intermixed_args(list(argv))
    from alignx.evaluation import evaluate_model

    try:
        metrics, _, run_id = evaluate_model(args.model, args.overrides, reference=args.reference, track=not args.no_track)
    except AlignxError as exc:
        _print_error(str(exc))
        return 2
    table = Table(title=f"alignx eval: {args.model}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in sorted(metrics):
        table.add_row(key, f"{metrics[key]:.4f}")
    Console().print(table)
    if run_id:
        print(f"MLflow run:  {run_id}")
    return 0


def _format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 (warnings' hook)
    """alignx's own warnings as ``alignx: warning: ...``: the message names the plugin or key, and the
    source line of alignx's code that happened to emit it would only mislead; others unchanged."""
    from alignx.registry import PluginLoadWarning

    if issubclass(category, PluginLoadWarning):
        return f"alignx: warning: {message}\n"
    return _default_format(message, category, filename, lineno, line)


_default_format = warnings.formatwarning


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``alignx`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.formatwarning = _format_warning
    if argv and argv[0] == "plugins":
        return _plugins(argv[1:])
    if argv and argv[0] == "compare":
        return _compare(argv[1:])
    if argv and argv[0] == "eval":
        return _eval(argv[1:])
    if argv and argv[0] == "train":
        argv = argv[1:]
    return _hydra_train(_verbosity(argv))


#: console verbosity flags of ``alignx [train]``, as the Hydra overrides they stand for
VERBOSITY = {
    "-q": ["hydra/job_logging=quiet", "trainer.enable_progress_bar=false"],
    "--quiet": ["hydra/job_logging=quiet", "trainer.enable_progress_bar=false"],
    "-v": ["hydra.verbose=alignx"],
    "--verbose": ["hydra.verbose=alignx"],
}


def _verbosity(argv: list[str]) -> list[str]:
    """``-q``/``--quiet`` (warnings, errors and the results table only) and ``-v``/``--verbose``
    (alignx's DEBUG lines) are shorthands for Hydra's logging config, so a sweep's jobs inherit them."""
    out: list[str] = []
    for arg in argv:
        out.extend(VERBOSITY.get(arg, [arg]))
    return out


if __name__ == "__main__":
    sys.exit(main())
