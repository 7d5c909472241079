"""The ``alignx`` command: ``train`` (the default), ``plugins``.

``alignx [train] [overrides]`` is a plain Hydra app (``--help``, ``--cfg job``, ``-m``,
``hydra.run.dir=...`` all work); the other subcommands are ordinary argparse commands.
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

SUBCOMMANDS = ("train", "plugins")
log = logging.getLogger("alignx")


def _print_error(message: str) -> None:
    print(f"alignx: error: {message}", file=sys.stderr)


def _hydra_train(argv: Sequence[str]) -> int:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig

    from alignx.config import PRIMARY_CONFIG, check_override_keys, register_search_path
    from alignx.errors import AlignxError
    from alignx.registry import conf_dirs

    register_search_path()
    overrides = [a for a in argv if not a.startswith("-") and "=" in a]
    try:
        check_override_keys(overrides)
    except AlignxError as exc:
        _print_error(str(exc))
        return 2

    @hydra.main(config_path=str(conf_dirs()[0][2]), config_name=PRIMARY_CONFIG, version_base="1.3")
    def task(cfg: DictConfig) -> float | None:
        from alignx.train import train

        # Hydra's root handlers already print and file every record; Lightning's own console
        # handler would print each of its messages twice.
        import lightning.pytorch  # noqa: F401  (its import installs the handler removed below)

        pl_logger = logging.getLogger("lightning.pytorch")
        for handler in list(pl_logger.handlers):
            pl_logger.removeHandler(handler)
        try:
            job = train(cfg)
        except AlignxError as exc:
            if HydraConfig.get().mode == RunMode.RUN:
                log.error("%s", exc)
                _print_error(str(exc))
                sys.exit(2)
            raise
        _print_summary(job)
        return None

    sys.argv = [sys.argv[0], *argv]
    task()
    return 0


def _print_summary(job) -> None:
    from rich.console import Console
    from rich.table import Table

    from alignx.tracking import ui_command

    console = Console()
    table = Table(title="alignx: results", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in sorted(job.metrics):
        if key.startswith(("eval/", "val/", "train/loss")):
            table.add_row(key, f"{job.metrics[key]:.4f}")
    console.print(table)
    # plain prints: paths and commands must stay copy-pasteable, never wrapped
    print(f"outputs:     {job.output_dir}")
    if job.model_dir:
        print(f"model:       {job.model_dir}")
    if job.run_id:
        print(f"MLflow run:  {job.run_id} in {job.tracking_uri}")
        print(f"open MLflow: {ui_command(job.tracking_uri)}")


def _plugins(argv: Sequence[str]) -> int:
    import argparse

    from rich.console import Console
    from rich.table import Table

    from alignx.errors import AlignxError
    from alignx.registry import KINDS, load_plugins, conf_dirs

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
        obj = getattr(e.obj, "__qualname__", None) or type(e.obj).__qualname__
        table.add_row(e.kind, e.name, e.provider, f"{getattr(e.obj, '__module__', '')}.{obj}")
    console = Console(width=160)
    console.print(table)
    for name, dist, directory in conf_dirs():
        console.print(f"config package '{name}' from {dist}: {directory}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``alignx`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "plugins":
        return _plugins(argv[1:])
    if argv and argv[0] == "train":
        argv = argv[1:]
    return _hydra_train(argv)


if __name__ == "__main__":
    sys.exit(main())
