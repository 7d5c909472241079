"""train(cfg): one job, from composed config to saved model, tracked in MLflow.

The data path, one function per arrow:
    load_plugins -> load_rows -> build_policy -> encode -> start_tracking -> fit -> evaluate -> save
No Hydra decorator here: tests and other programs call ``train(cfg)`` directly.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from alignx.config import validate
from alignx.errors import ConfigError, DataError
from alignx.registry import Registry, load_plugins

log = logging.getLogger("alignx")


@dataclass
class Job:
    """What a job produced: final metrics, where outputs went, and the MLflow run."""

    metrics: dict[str, float] = field(default_factory=dict)
    output_dir: Path | None = None
    model_dir: Path | None = None
    run_id: str | None = None
    tracking_uri: str | None = None
    samples: list[dict] = field(default_factory=list)
    #: MLflow calls that failed after the run started (e.g. the server went away)
    tracking_errors: list[str] = field(default_factory=list)
    #: False in the extra processes of a data-parallel job, which neither track nor write outputs
    rank_zero: bool = True
    #: a pipeline's stages by name (see alignx.pipeline); empty for a single-stage job
    stages: dict[str, Any] = field(default_factory=dict)


# -- paths -----------------------------------------------------------------------------------


def resolve_paths(cfg: DictConfig) -> tuple[Path, Path]:
    """(output_dir, outputs_root): explicit config values, else Hydra's run dir and ./outputs."""
    output_dir = cfg.get("output_dir")
    if not output_dir:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            raise ConfigError("output_dir is not set and no Hydra run dir exists; pass output_dir=/some/dir")
        output_dir = HydraConfig.get().runtime.output_dir
    return Path(output_dir).resolve(), resolve_outputs_root(cfg)


def resolve_outputs_root(cfg: DictConfig) -> Path:
    """Where the embedded MLflow store and caches live: ``outputs_root``, $ALIGNX_OUTPUTS or ./outputs."""
    root = cfg.get("outputs_root") or os.environ.get("ALIGNX_OUTPUTS") or (_launch_dir() / "outputs")
    return Path(root).resolve()


def _launch_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.cwd) if HydraConfig.initialized() else Path.cwd()


def _overrides(cfg: DictConfig) -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


# -- steps -----------------------------------------------------------------------------------


def load_rows(cfg: DictConfig, registry: Registry, kind: str, test_kind: str | None = "sft") -> dict[str, list[dict]]:
    """Rows for train/val (of ``kind``) and test (of ``test_kind``, for evaluation; None = none), validated.

    ``data.invalid_rows`` applies to every loader, plugins' too (a context variable, see
    :func:`alignx.data.formats.collect_invalid_rows`): under ``drop`` each split's invalid rows
    are left out, counted in ``rows[split].invalid_dropped`` and reported in a warning. Each
    split comes back as a :class:`~alignx.data.sources.SplitRows` (a list that knows its split).
    """
    from alignx.data.formats import collect_invalid_rows
    from alignx.data.sources import SplitRows

    loader = registry.get("dataset", str(cfg.dataset.source))
    seed = int(cfg.seed)
    kinds = {"train": kind, "val": kind, "test": test_kind if cfg.eval.enabled else None}
    rows: dict[str, list[dict]] = {}
    with collect_invalid_rows(str(cfg.data.get("invalid_rows", "error"))) as invalid:
        for split, split_kind in kinds.items():
            invalid.split = split
            dataset = cfg.dataset
            if split == "test" and cfg.dataset.get("label_noise"):
                # held-out evaluation compares with the truth: builtin tasks' test labels stay noise-free
                dataset = OmegaConf.merge(cfg.dataset, {"label_noise": 0.0})
            loaded = loader(dataset, split_kind, split, seed) if split_kind else []
            rows[split] = SplitRows(
                loaded, locations=getattr(loaded, "locations", None), split=split, invalid_dropped=invalid.count(split)
            )
    for split in rows:
        if invalid.count(split):
            log.warning("data %s: %s (data.invalid_rows=drop)", split, invalid.summary(split))
    if not rows["train"]:
        source = str(cfg.dataset.get("path") or cfg.dataset.name)
        if invalid.count("train"):
            raise DataError(f"every training row is invalid: {invalid.summary('train')}", source=source)
        raise DataError("no training rows", source=source)
    return rows


def _is_rank_zero() -> bool:
    # Lightning's DDP launcher starts the other ranks with RANK/LOCAL_RANK set in the environment
    from lightning.fabric.utilities.rank_zero import _get_rank

    return (_get_rank() or 0) == 0


def build_policy(
    cfg: DictConfig, registry: Registry, output_dir: Path, objective_cls: Any = None
) -> tuple[Any, Any, Path | None]:
    """Model (adapted by the objective, e.g. a reward head; then the adapter) and tokenizer.
    Returns (model, tokenizer, base_dir).

    A base model built in code is saved before adapters are injected, so the saved adapter has
    a base that plain transformers/peft can load.
    """
    builder = registry.get("model", str(cfg.model.kind))
    model, tokenizer = builder(cfg.model)
    if objective_cls is not None:
        model = objective_cls.prepare_model(model, tokenizer, cfg.objective)
    adapter_name = str(cfg.adapter.name)
    base_dir = None
    if adapter_name != "none":
        if cfg.save.model and str(cfg.model.kind) != "hf" and _is_rank_zero():
            from alignx.models.loading import save_pretrained_atomic

            base_dir = save_pretrained_atomic(output_dir / "base", model, tokenizer)
        model = registry.get("adapter", adapter_name)(model, cfg.adapter)
    return model, tokenizer, base_dir


def encode_split(
    objective_cls: Any, rows: Sequence[dict], tokenizer: Any, data_cfg: Any, cache_dir: Path | None = None, label: str = ""
) -> tuple[list[dict], Any, bool]:
    """Encode rows for ``objective_cls``; returns (items, stats, cache_hit).

    With ``cache_dir``, identical work (same rows, tokenizer, encoding and formatting settings)
    is done once and shared, e.g. by every job of a sweep.
    """
    from alignx.data.cache import cache_key, cached_encode
    from alignx.data.tokenize import encode_rows

    def encode() -> tuple[list[dict], Any]:
        return encode_rows(rows, lambda r: objective_cls.encode(r, tokenizer, data_cfg))

    if cache_dir is None:
        return (*encode(), False)
    encoder = f"{objective_cls.__module__}.{objective_cls.__qualname__}.encode"
    return cached_encode(cache_dir, cache_key(rows, tokenizer, encoder, data_cfg), encode, label)


def start_tracking(
    cfg: DictConfig,
    outputs_root: Path,
    overrides: Sequence[str],
    *,
    run_name: str | None = None,
    extra_tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    resume_run_id: str | None = None,
) -> Any:
    """Create the job's MLflow run (or a no-op tracker for ``tracking=none``); with
    ``resume_run_id``, continue that run instead."""
    from alignx.tracking import MlflowTracker, Tracker

    uri = tracking_uri(cfg, outputs_root)
    if uri is None:
        return Tracker()
    local = uri.startswith("sqlite:") or uri.startswith("file:")
    outputs_root.mkdir(parents=True, exist_ok=True)
    tags = {
        "alignx.objective": str(cfg.objective.name),
        "alignx.model": str(cfg.model.name),
        "alignx.adapter": str(cfg.adapter.name),
        "alignx.dataset": str(cfg.dataset.name),
        "alignx.overrides": " ".join(overrides),
        **(extra_tags or {}),
    }
    name = run_name or cfg.tracking.get("run_name") or "-".join(
        [str(cfg.objective.name), str(cfg.model.name).split("/")[-1], str(cfg.adapter.name), str(cfg.dataset.name).split("/")[-1]]
    )
    return MlflowTracker(
        uri,
        str(cfg.tracking.experiment),
        run_name=name,
        tags=tags,
        artifact_location=(outputs_root / "mlartifacts").as_uri() if local else None,
        parent_run_id=parent_run_id,
        resume_run_id=resume_run_id,
    )


def tracking_uri(cfg: DictConfig, outputs_root: Path) -> str | None:
    """The job's MLflow tracking URI (``tracking.uri``, else the embedded store); None for ``tracking=none``."""
    from alignx.tracking import default_tracking_uri

    if cfg.tracking.name == "none":
        return None
    return cfg.tracking.get("uri") or default_tracking_uri(outputs_root)


def sweep_job(overrides: Sequence[str]) -> tuple[str | None, str | None, dict[str, str]]:
    """For a job of a multirun: (parent run id, readable unique run name, extra tags)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from alignx.tracking.sweep import read_parent

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None, None, {}
    hc = HydraConfig.get()
    record = read_parent(Path(hc.sweep.dir).resolve()) or {}
    swept = set(record.get("swept_keys", []))
    # name the job by what varies across the sweep; the job number keeps names unique
    shown = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in swept] or list(overrides)
    name = f"{hc.job.num}: {' '.join(shown)}" if shown else f"job {hc.job.num}"
    return record.get("parent_run_id"), name, {"alignx.job_num": str(hc.job.num)}


def build_trainer(
    cfg: DictConfig, tracker: Any, output_dir: Path, callbacks: Sequence[Any] = (), *, manual_optimization: bool = False,
    model: Any = None,
) -> Any:
    """The Lightning Trainer of a job: config's trainer args, the tracker as logger, progress bar and checkpoints.

    Objectives that optimise manually (online RL) clip gradients themselves, so
    ``trainer.gradient_clip_val`` is read by the objective rather than passed to Lightning.
    """
    import lightning as L

    from alignx.tracking import TrackerLogger

    targs = OmegaConf.to_container(cfg.trainer, resolve=True)
    if manual_optimization:
        import warnings

        targs.pop("gradient_clip_val", None)
        targs.pop("accumulate_grad_batches", None)
        # checkpoints after a step's updates are what resume needs (global_step counts finished steps)
        warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
        # online objectives are judged by evaluation at the end; they have no validation loop
        warnings.filterwarnings("ignore", message=".*`validation_step` but have no `val_dataloader`.*")
        # their prompts are a function of the step, so a mid-epoch resume picks up the right ones
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
    callbacks = list(callbacks)
    every = (cfg.get("checkpoint") or {}).get("every_n_steps")
    if every:
        from alignx.checkpoint import model_checkpoint

        callbacks.append(model_checkpoint(output_dir / "checkpoints", int(every)))
    callbacks.extend(instantiate_callbacks(cfg))
    if targs.get("enable_progress_bar", True):
        from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

        try:
            callbacks.append(RichProgressBar(leave=True))
        except ModuleNotFoundError:
            callbacks.append(TQDMProgressBar())
    strategy = targs.get("strategy")
    if isinstance(strategy, dict):
        targs["strategy"] = build_strategy(strategy, model)
    plugins = list(targs.pop("plugins", None) or [])
    if not _is_deepspeed(targs.get("strategy")):
        # DeepSpeed writes its own sharded checkpoint directories; everything else goes through alignx's
        from alignx.checkpoint import checkpoint_io

        plugins.append(checkpoint_io())
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


def instantiate_callbacks(cfg: DictConfig) -> list[Any]:
    """Extra Lightning callbacks from the ``callbacks`` node: ``{name: {_target_: ..., **kwargs}}``."""
    from hydra.utils import instantiate

    node = cfg.get("callbacks") or {}
    out = []
    for name, spec in node.items():
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
    from hydra.utils import get_class

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


def load_auxiliary_rows(cfg: DictConfig, registry: Registry, kinds: Mapping[str, str]) -> dict[str, list[dict]]:
    """Training rows an objective needs besides its own kind (e.g. PPO-ptx's demonstrations), by name."""
    if not kinds:
        return {}
    from alignx.data.formats import collect_invalid_rows

    loader = registry.get("dataset", str(cfg.dataset.source))
    out = {}
    with collect_invalid_rows(str(cfg.data.get("invalid_rows", "error"))) as invalid:
        invalid.split = "train"
        for name, kind in kinds.items():
            out[name] = list(loader(cfg.dataset, kind, "train", int(cfg.seed)))
    return out


def total_optimizer_steps(cfg: DictConfig, n_batches: int) -> int:
    if int(cfg.trainer.get("max_steps") or -1) > 0:
        return int(cfg.trainer.max_steps)
    epochs = int(cfg.trainer.get("max_epochs") or 1)
    return max(1, epochs * math.ceil(n_batches / int(cfg.trainer.get("accumulate_grad_batches") or 1)))


def evaluate(
    cfg: DictConfig, registry: Registry, model: Any, tokenizer: Any, objective: Any, test_rows: list[dict],
    *, reference: Any = None,
) -> tuple[dict, list]:
    """Gold reward (when the dataset names a task), perplexity and, for objectives with a
    reference policy (or an explicit ``reference`` context-manager factory), the KL from it and
    the win rate against it, on held-out rows; a reward model's ranking accuracy on held-out pairs."""
    from alignx.data.tokenize import prompt_is_templated, prompt_text
    from alignx.evaluation import evaluate_policy, reference_rows
    from alignx.objectives.sft import SFT

    if not cfg.eval.enabled or not test_rows:
        return {}, []
    if getattr(objective, "eval_kind", None) == "pairs" and not getattr(objective, "generates_text", True):
        # a reward model: how often it ranks held-out chosen completions above rejected ones
        from alignx.evaluation import pair_accuracy
        from alignx.rewards.model import RewardModelScorer

        rows = [r for r in test_rows if isinstance(r.get("prompt"), str)][: int(cfg.eval.num_prompts)]
        scorer = RewardModelScorer.from_model(model, tokenizer, batch_size=int(cfg.data.eval_batch_size))
        return ({"eval/rm_accuracy": pair_accuracy(scorer, rows)} if rows else {}), []
    test_rows = reference_rows(test_rows)
    if not test_rows:
        return {}, []
    task = cfg.dataset.get("task")
    reward_fn = registry.get("reward", str(task)) if task and ("reward", str(task)) in registry else None
    chat = bool(cfg.data.chat_template)
    # held-out rows in order, repeats included: a task with few distinct prompts (sentiment has a
    # handful of review openings) still gets eval.num_prompts independent samples
    prompts = [prompt_text(r, tokenizer, chat) for r in test_rows][: int(cfg.eval.num_prompts)]
    templated = any(prompt_is_templated(r, chat) for r in test_rows)
    items, _, _ = encode_split(SFT, test_rows, tokenizer, cfg.data)
    collate = SFT.collate_fn(tokenizer)
    bs = int(cfg.data.eval_batch_size)
    batches = [collate(items[i : i + bs]) for i in range(0, len(items), bs)]
    return evaluate_policy(
        model,
        tokenizer,
        prompts,
        cfg.eval,
        reward_fn=reward_fn,
        ppl_batches=batches,
        seed=int(cfg.seed),
        prompt_is_templated=templated,
        reference=reference if reference is not None else _eval_reference(cfg, registry, objective),
        reward_models=_eval_reward_models(cfg),
    )


def _eval_reference(cfg: DictConfig, registry: Registry, objective: Any) -> Any:
    """A context-manager factory yielding the objective's reference policy, or None if it has none.

    Full fine-tuning with precomputed reference log-probs keeps no reference in memory; it is
    rebuilt here (deterministically, from the same model config) only for the KL measurement.
    """
    from contextlib import contextmanager

    from alignx.objectives.base import ReferenceObjective

    if not isinstance(objective, ReferenceObjective) or not objective.needs_reference():
        return None

    @contextmanager
    def reference() -> Any:
        with objective.reference() as ref:
            if ref is not None:
                yield ref
                return
        rebuilt, tok = registry.get("model", str(cfg.model.kind))(cfg.model)
        rebuilt = type(objective).prepare_model(rebuilt, tok, cfg.objective)
        yield rebuilt.to(objective.device).eval()

    return reference


def _eval_reward_models(cfg: DictConfig) -> dict[str, Any]:
    """Learned reward models that score evaluation samples next to the gold reward (eval.reward_model)."""
    path = cfg.eval.get("reward_model")
    if not path:
        return {}
    from alignx.rewards.model import RewardModelScorer

    return {"rm": RewardModelScorer(_abs_if_local(str(path)))}


def save_outputs(
    cfg: DictConfig, model: Any, tokenizer: Any, output_dir: Path, base_dir: Path | None, *, merge: bool = False
) -> Path | None:
    """Save the model (or adapter) with its tokenizer in HF format; a merged copy when
    ``save.merge_adapter`` or ``merge`` (objectives whose artifact must be one model) ask."""
    from alignx.models.adapters import is_peft
    from alignx.models.loading import save_pretrained_atomic

    if not cfg.save.model:
        return None
    model_dir = output_dir / "model"
    if is_peft(model):
        base_ref = str(base_dir) if base_dir else _abs_if_local(str(cfg.model.get("name_or_path", "")))
        for peft_cfg in model.peft_config.values():
            peft_cfg.base_model_name_or_path = base_ref
        save_pretrained_atomic(model_dir, model, tokenizer)
        if cfg.save.merge_adapter or merge:
            merged = model.merge_and_unload()
            save_pretrained_atomic(output_dir / "merged", merged, tokenizer)
    else:
        save_pretrained_atomic(model_dir, model, tokenizer)
    return model_dir


def _abs_if_local(name: str) -> str:
    p = Path(name).expanduser()
    return str(p.resolve()) if p.is_dir() else name


# -- the job ---------------------------------------------------------------------------------


def run_job(cfg: DictConfig, overrides: Sequence[str] | None = None) -> Job:
    """Run everything a composed config describes; what ``alignx [train]`` does.

    A ``pipeline`` runs its stages; an objective whose :meth:`~alignx.objectives.Objective.stages`
    returns stages (an iterative method like SPIN) runs them as a pipeline; anything else is one
    :func:`train` run. ``overrides`` are the job's own overrides (stages are composed from them;
    default: Hydra's command line).
    """
    overrides = list(overrides) if overrides is not None else _overrides(cfg)
    if cfg.get("pipeline"):
        from alignx.pipeline import run_pipeline

        return run_pipeline(cfg, overrides)
    registry = load_plugins()
    validate(cfg)
    objective_cls = registry.get("objective", str(cfg.objective.name))
    objective_cls.check_config(cfg)
    stages = objective_cls.stages(cfg)
    if stages:
        from omegaconf import open_dict

        from alignx.pipeline import run_pipeline

        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.pipeline = {"name": str(cfg.objective.name), "stages": stages}
        return run_pipeline(cfg, overrides)
    return train(cfg, overrides)



def train(
    cfg: DictConfig,
    overrides: Sequence[str] | None = None,
    *,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    extra_tags: Mapping[str, str] | None = None,
) -> Job:
    """Run one training job described by a composed ``train`` config; return what it produced.

    Everything that can be checked before work starts (config keys, plugin names, every data
    row) is checked before the MLflow run is created. Once it exists, the run ends FINISHED
    only if training, evaluation and saving all succeeded, and FAILED (or KILLED) otherwise.
    ``parent_run_id`` nests the run (a pipeline's stage under its job); else a sweep job nests
    under its sweep's parent run.
    """
    import lightning as L

    t0 = time.time()
    registry = load_plugins()
    validate(cfg)
    objective_cls = registry.get("objective", str(cfg.objective.name))
    objective_cls.check_config(cfg)
    for group in ("model", "adapter"):
        registry.get(group, str(cfg[group].get("kind", cfg[group].name)))
    registry.get("dataset", str(cfg.dataset.source))
    output_dir, outputs_root = resolve_paths(cfg)
    from alignx.resume import (
        ENV_CHECKPOINT,
        fingerprint,
        resolve_resume,
        write_run_record,
    )

    resume = resolve_resume(cfg, output_dir, tracking_uri(cfg, outputs_root))
    resume_from = resume.checkpoint if resume else None
    if resume and resume.run_id and resume.output_dir != output_dir:
        # continuing an interrupted run: its dir keeps its checkpoints and gets its model
        log.info("resuming the job in %s (its checkpoints and model are written there)", resume.output_dir)
        output_dir = resume.output_dir
    if resume:
        log.info("resuming from %s (step %d)%s", resume.checkpoint, resume.step,
                 f" into MLflow run {resume.run_id}" if resume.run_id else "")
    overrides = list(overrides) if overrides is not None else _overrides(cfg)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)

    generates = getattr(objective_cls, "generates_text", True)
    kind = objective_cls.row_kind(cfg.objective)
    # Evaluation reads held-out demonstrations where a builtin task has them (so perplexity is
    # comparable across objectives), else held-out rows of the trained kind: a pairs-only file
    # has no sft rows, and its chosen completions serve as the reference completions.
    test_kind = ("sft" if str(cfg.dataset.source) == "builtin" else kind) if generates else getattr(objective_cls, "eval_kind", None)
    rows = load_rows(cfg, registry, kind, test_kind)
    aux_rows = load_auxiliary_rows(cfg, registry, objective_cls.auxiliary_kinds(cfg.objective))
    output_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer, base_dir = build_policy(cfg, registry, output_dir, objective_cls)
    cache_dir = outputs_root / "cache" / "tokenized" if cfg.data.cache else None
    train_items, train_stats, train_hit = encode_split(objective_cls, rows["train"], tokenizer, cfg.data, cache_dir, "train")
    val_items, val_stats, val_hit = encode_split(objective_cls, rows["val"], tokenizer, cfg.data, cache_dir, "val")
    train_items = objective_cls.prepare_items(train_items, cfg.objective, int(cfg.seed))
    val_items = objective_cls.prepare_items(val_items, cfg.objective, int(cfg.seed))
    from alignx.objectives.sft import SFT

    aux_items = {name: encode_split(SFT, r, tokenizer, cfg.data, cache_dir, name)[0] for name, r in aux_rows.items()}
    if not train_items:
        raise DataError(
            f"every training row was dropped by data.truncation={cfg.data.truncation} at data.max_length={cfg.data.max_length}",
            source=str(cfg.dataset.name),
        )
    for split, stats in (("train", train_stats), ("val", val_stats)):
        log.info(
            "data %s: %d rows kept whole, %d truncated, %d dropped (max_length=%d, policy=%s)",
            split, stats.counts["kept"], stats.counts["truncated"], stats.counts["dropped"],
            cfg.data.max_length, cfg.data.truncation,
        )

    rank_zero = _is_rank_zero()
    if rank_zero:
        if parent_run_id is None:
            parent_run_id, job_name, job_tags = sweep_job(overrides)
        else:
            job_name, job_tags = None, {}
        job_name = run_name or job_name
        job_tags = {**job_tags, **(extra_tags or {})}
        job_tags = {**job_tags, "alignx.fingerprint": fingerprint(cfg), "alignx.output_dir": str(output_dir)}
        if resume:
            job_tags = {**job_tags, "alignx.resumed_from": str(resume.checkpoint), "alignx.resumed_at_step": str(resume.step)}
        tracker = start_tracking(
            cfg, outputs_root, overrides, run_name=job_name, extra_tags=job_tags, parent_run_id=parent_run_id,
            resume_run_id=resume.run_id if resume else None,
        )
        if tracker.run_id:
            write_run_record(output_dir, run_id=tracker.run_id, tracking_uri=tracker.uri,
                             experiment_id=tracker.experiment_id, fingerprint=job_tags["alignx.fingerprint"])
        # the processes Lightning starts for DDP inherit this: they resume from the same checkpoint
        os.environ[ENV_CHECKPOINT] = str(resume_from or "")
    else:
        from alignx.tracking import Tracker

        tracker = Tracker()  # one job, one run: only rank 0 records it
    job = Job(output_dir=output_dir, run_id=tracker.run_id, tracking_uri=tracker.uri, rank_zero=rank_zero)
    from alignx.tracking import finishing

    with finishing(tracker):
        from alignx.tracking import config_params

        resolved = OmegaConf.to_container(cfg, resolve=True)
        # how a job was resumed is not a parameter of the experiment (it is in the run's tags)
        tracker.log_params(config_params({k: v for k, v in resolved.items() if k != "resume"}))
        config_yaml = OmegaConf.to_yaml(OmegaConf.create(resolved))
        if rank_zero:
            (output_dir / "config.yaml").write_text(config_yaml)
        tracker.log_text(config_yaml, "config/resolved.yaml")
        data_metrics = {
            **train_stats.as_metrics("data/train"),
            **val_stats.as_metrics("data/val"),
            "data/train/cache_hit": float(train_hit),
            "data/val/cache_hit": float(val_hit),
            # rows left out by data.invalid_rows=drop (0 under error: the job stops instead)
            **{f"data/{split}/invalid_dropped": float(getattr(r, "invalid_dropped", 0)) for split, r in rows.items()},
        }
        tracker.log_metrics(data_metrics, step=0)
        job.metrics.update(data_metrics)

        datamodule = objective_cls.datamodule(train_items, val_items, tokenizer, cfg)
        from hydra.utils import instantiate

        n_batches = math.ceil(len(train_items) / int(cfg.data.batch_size))
        objective = objective_cls(
            model,
            tokenizer,
            cfg.objective,
            optimizer=instantiate(cfg.optim),
            scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
            total_steps=total_optimizer_steps(cfg, n_batches),
        )
        from alignx.objectives.base import JobContext

        objective.attach(JobContext(cfg, registry, train_items, val_items, output_dir, auxiliary=aux_items))
        callbacks = []
        if getattr(objective, "precompute_ref", False):
            from alignx.models.reference import PrecomputeReferenceLogps

            callbacks.append(PrecomputeReferenceLogps(
                outputs_root / "cache" / "ref_logps" if cfg.data.cache else None,
                int(cfg.data.eval_batch_size),
                progress=bool(cfg.trainer.get("enable_progress_bar", True)),
            ))
        trainer = build_trainer(cfg, tracker, output_dir, callbacks, manual_optimization=not objective.automatic_optimization,
                                model=model)
        trainer.fit(objective, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)
        job.metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        job.metrics.update(getattr(objective, "step_metrics", {}) or {})
        final = dict(getattr(objective, "final_metrics", {}) or {})
        for cb in callbacks:
            final.update({f"data/{split}/ref_logps_cache_hit": float(hit) for split, hit in getattr(cb, "hits", {}).items()})
        if final:
            job.metrics.update(final)
            tracker.log_metrics(final, step=int(trainer.global_step))

        if trainer.is_global_zero:
            eval_metrics, job.samples = evaluate(cfg, registry, objective.model, tokenizer, objective, rows["test"])
            job.metrics.update(eval_metrics)
            tracker.log_metrics(eval_metrics, step=int(trainer.global_step))
            if job.samples:
                tracker.log_table(job.samples, "samples/generations.json")
            job.model_dir = save_outputs(
                cfg, objective.model, tokenizer, output_dir, base_dir,
                merge=bool(getattr(objective_cls, "merge_adapter_on_save", False)),
            )
            if job.model_dir and cfg.tracking.get("log_model", True):
                tracker.log_artifact(job.model_dir, "model")
                if base_dir:
                    tracker.log_artifact(base_dir, "base")
            job.metrics["time/total_s"] = time.time() - t0
            tracker.log_metrics({"time/total_s": job.metrics["time/total_s"]}, step=int(trainer.global_step))
    job.tracking_errors = list(tracker.errors)
    if job.tracking_errors:
        log.warning(
            "MLflow logging failed %d time(s) during this job (first: %s); the model was saved to %s, "
            "but the MLflow run may be incomplete or not marked finished",
            len(job.tracking_errors), job.tracking_errors[0], job.output_dir,
        )
    return job
