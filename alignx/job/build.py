"""Building a job's parts from config: the policy (model, tokenizer, adapter), the objective and the Trainer."""

from __future__ import annotations

import logging
import math
import shutil
import warnings
from pathlib import Path
from typing import Any, Sequence

import lightning as L
from hydra.utils import get_class, instantiate
from lightning.fabric.utilities.rank_zero import _get_rank
from omegaconf import DictConfig, OmegaConf

from alignx.checkpoint import checkpoint_io, model_checkpoint
from alignx.errors import ConfigError
from alignx.evaluation.periodic import periodic_evaluation
from alignx.job.console import ShortRunValidation, StepProgressBar
from alignx.models.adapters import HEAD_ONLY_ADAPTERS
from alignx.models.compute import enable_gradient_checkpointing
from alignx.models.loading import save_pretrained_atomic
from alignx.objectives.base import Objective
from alignx.objectives.guards import DivergenceGuard
from alignx.registry import Registry
from alignx.tracking import Tracker
from alignx.tracking.logger import TrackerLogger

log = logging.getLogger("alignx")


def is_rank_zero() -> bool:
    """True in the process that tracks and writes outputs (rank 0 of a data-parallel job)."""
    # Lightning's DDP launcher starts the other ranks with RANK/LOCAL_RANK set in the environment
    return (_get_rank() or 0) == 0


def build_policy(
    cfg: DictConfig, registry: Registry, output_dir: Path, objective_cls: type[Objective] | None = None
) -> tuple[Any, Any, Path | None]:
    """Model (adapted by the objective, e.g. a reward head; then the adapter) and tokenizer.
    Returns (model, tokenizer, base_dir).

    A base model built in code is saved before adapters are injected, so the saved adapter has
    a base that plain transformers/peft can load.
    """
    model, tokenizer = registry.get("model", str(cfg.model.kind))(cfg.model)
    if objective_cls is not None:
        model = objective_cls.prepare_model(model, tokenizer, cfg.objective)
    if cfg.model.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    adapter_name = str(cfg.adapter.name)
    base_dir = None
    if adapter_name != "none":
        if adapter_name not in HEAD_ONLY_ADAPTERS and cfg.save.model and str(cfg.model.kind) != "hf" and is_rank_zero():
            base_dir = save_pretrained_atomic(output_dir / "base", model, tokenizer)
        try:
            model = registry.get("adapter", adapter_name)(model, cfg.adapter)
        except BaseException:
            # a bad adapter config (targets that match no layer) leaves nothing behind
            if base_dir is not None:
                shutil.rmtree(base_dir, ignore_errors=True)
            raise
    return model, tokenizer, base_dir


def build_objective(
    cfg: DictConfig, objective_cls: type[Objective], model: Any, tokenizer: Any, num_train_items: int
) -> Objective:
    """The objective (a LightningModule) around ``model``, with the optimizer and schedule of ``optim``/``scheduler``."""
    return objective_cls(
        model,
        tokenizer,
        cfg.objective,
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        total_steps=total_optimizer_steps(cfg, math.ceil(num_train_items / int(cfg.data.batch_size))),
    )


def total_optimizer_steps(cfg: DictConfig, n_batches: int) -> int:
    """Optimizer steps the job will take (what a schedule decays over): max_steps, else epochs x batches."""
    if int(cfg.trainer.max_steps or -1) > 0:
        return int(cfg.trainer.max_steps)
    epochs = int(cfg.trainer.max_epochs or 1)
    return max(1, epochs * math.ceil(n_batches / int(cfg.trainer.accumulate_grad_batches)))


def build_trainer(
    cfg: DictConfig, tracker: Tracker, output_dir: Path, callbacks: Sequence[Any] = (), *, manual_optimization: bool = False,
    model: Any = None,
) -> L.Trainer:
    """The Lightning Trainer of a job: config's trainer args, the tracker as logger, progress bar, checkpoints,
    the divergence guard and evaluation during training (``eval.every_n_steps``).

    Objectives that optimise manually (online RL) clip gradients themselves, so
    ``trainer.gradient_clip_val`` is read by the objective rather than passed to Lightning.
    """
    targs = OmegaConf.to_container(cfg.trainer, resolve=True)
    targs.pop("compile")  # alignx's own key: Objective.bind compiles the policy
    if manual_optimization:
        _quiet_manual_optimization(targs)
    every = cfg.checkpoint.every_n_steps
    # evaluation after the guard: a step whose weights diverged stops before it is evaluated
    callbacks = [*callbacks, DivergenceGuard(), *periodic_evaluation(cfg, tracker, rank_zero=is_rank_zero()),
                 *instantiate_callbacks(cfg)]
    if every:
        callbacks.append(model_checkpoint(output_dir / "checkpoints", int(every)))
    if targs["enable_progress_bar"]:
        callbacks.append(StepProgressBar())
    if targs.get("val_check_interval") is None and not manual_optimization:
        callbacks.append(ShortRunValidation(int(targs.get("max_steps") or -1), int(targs.get("accumulate_grad_batches") or 1)))
    if isinstance(targs.get("strategy"), dict):
        targs["strategy"] = build_strategy(targs["strategy"], model)
    plugins = list(targs.pop("plugins", None) or [])
    if not _is_deepspeed(targs.get("strategy")):
        # DeepSpeed writes its own sharded checkpoint directories; everything else goes through alignx's
        plugins.append(checkpoint_io())
    log.debug("Trainer arguments: %s; callbacks: %s", targs, [type(c).__name__ for c in callbacks])
    return L.Trainer(
        **targs,
        plugins=plugins,
        logger=TrackerLogger(tracker),
        callbacks=callbacks,
        default_root_dir=str(output_dir),
        enable_checkpointing=bool(every),
        use_distributed_sampler=False,  # BucketBatchSampler shards by rank itself
        enable_model_summary=False,
    )


def _quiet_manual_optimization(targs: dict) -> None:
    targs.pop("gradient_clip_val", None)
    targs.pop("accumulate_grad_batches", None)
    # checkpoints after a step's updates are what resume needs (global_step counts finished steps)
    warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
    # online objectives are judged by evaluation at the end; they have no validation loop
    warnings.filterwarnings("ignore", message=".*`validation_step` but have no `val_dataloader`.*")
    # their prompts are a function of the step, so a mid-epoch resume picks up the right ones
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")


def instantiate_callbacks(cfg: DictConfig) -> list[Any]:
    """Extra Lightning callbacks from the ``callbacks`` node: ``{name: {_target_: ..., **kwargs}}``."""
    out = []
    for name, spec in (cfg.callbacks or {}).items():
        if spec is None:  # `~callbacks.name` or `callbacks.name=null` switches one off
            continue
        if "_target_" not in spec:
            raise ConfigError(f"callbacks.{name} needs a _target_ (the callback's class path), got keys {sorted(spec)}")
        try:
            out.append(instantiate(spec))
        except Exception as exc:
            raise ConfigError(f"callbacks.{name}: cannot instantiate {spec._target_}: {str(exc).splitlines()[0]}") from None
    return out


def _is_deepspeed(strategy: Any) -> bool:
    return "deepspeed" in (strategy if isinstance(strategy, str) else type(strategy).__name__).lower()


def build_strategy(spec: dict, model: Any = None) -> Any:
    """A Lightning strategy object from a ``_target_`` node (e.g. ``trainer=fsdp``).

    ``auto_wrap_policy: transformer_layers`` (FSDP) wraps each of the model's repeated blocks,
    read from transformers' ``_no_split_modules`` (LlamaDecoderLayer, ...), so one preset shards
    any architecture; ``activation_checkpointing_policy: transformer_layers`` likewise.
    """
    spec = dict(spec)
    cls = get_class(spec.pop("_target_"))
    for key in ("auto_wrap_policy", "activation_checkpointing_policy"):
        if spec.get(key) == "transformer_layers":
            spec[key] = transformer_layer_classes(model) if model is not None else None
    return cls(**spec)


def transformer_layer_classes(model: Any) -> set[type]:
    """The classes of a transformers model's repeated blocks (its ``_no_split_modules``), found in the model."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    found = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not found:
        raise ConfigError(
            f"auto_wrap_policy=transformer_layers: {type(model).__name__} declares no _no_split_modules; "
            "set trainer.strategy.auto_wrap_policy to null or to a policy object"
        )
    return found
