"""One training job: composed config -> checked plan -> data -> policy -> MLflow run -> fit -> evaluate -> save.

Everything that can be checked is checked in :func:`plan_job`, before any run, cache entry or
model exists; from :func:`open_run` on, the run ends FINISHED only if training, evaluation and
saving all succeeded, FAILED on an error, KILLED on SIGINT/SIGTERM.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning as L
from omegaconf import DictConfig

from alignx.config import validate
from alignx.data.curriculum import MODEL_CURRICULA, apply_curriculum
from alignx.data.rows import encode_split, load_auxiliary_rows, load_rows
from alignx.data.target_loss import target_nll
from alignx.errors import ConfigError, DataError, JobInterrupted
from alignx.evaluation.judge import check_judge
from alignx.evaluation.prm_best_of_n import check_prm_eval
from alignx.evaluation.suite import StartingModel, evaluate
from alignx.job.build import build_objective, build_policy, build_trainer, is_rank_zero
from alignx.job.outputs import data_metrics, record_config, save_outputs
from alignx.job.result import Job
from alignx.job.signals import StopOnSignal, deferred, interruptible
from alignx.models.adapters import HEAD_ONLY_ADAPTERS
from alignx.objectives.base import JobContext, Objective
from alignx.objectives.sft import SFT
from alignx.paths import hydra_overrides, resolve_paths
from alignx.registry import Registry, load_plugins
from alignx.resume import ENV_CHECKPOINT, ResumePoint, fingerprint, resolve_resume, update_run_record, write_run_record
from alignx.store import check_writable
from alignx.tracking import Tracker, finishing
from alignx.tracking.start import start_tracking, sweep_job, tracking_uri

log = logging.getLogger("alignx")


@dataclass
class Plan:
    """What a job knows once its config passed every check, before anything is created."""

    cfg: DictConfig
    registry: Registry
    objective_cls: type[Objective]
    output_dir: Path
    outputs_root: Path
    overrides: list[str]
    resume: ResumePoint | None = None


@dataclass
class Data:
    """A job's rows and encoded items, per split."""

    rows: dict[str, list[dict]]
    train: list[dict] = field(default_factory=list)
    val: list[dict] = field(default_factory=list)
    auxiliary: dict[str, list[dict]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def train(
    cfg: DictConfig,
    overrides: Sequence[str] | None = None,
    *,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    extra_tags: Mapping[str, str] | None = None,
) -> Job:
    """Run one training job described by a composed ``train`` config; return what it produced.

    ``parent_run_id`` nests the run (a pipeline's stage under its job); else a sweep job nests
    under its sweep's parent run.
    """
    t0 = time.time()
    plan = plan_job(cfg, overrides)
    rows = load_rows(cfg, plan.registry, plan.objective_cls.row_kind(cfg.objective), plan.objective_cls.test_kind(cfg))
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer, base_dir = build_policy(cfg, plan.registry, plan.output_dir, plan.objective_cls)
    # what evaluation compares the trained policy with, recorded before any step
    start = StartingModel(cfg, plan.registry, plan.objective_cls, model)
    if str(cfg.data.curriculum) in MODEL_CURRICULA:
        log.info("data.curriculum=%s: scoring %d training rows with the starting model", cfg.data.curriculum, len(rows["train"]))
        rows["train"] = apply_curriculum(rows["train"], str(cfg.data.curriculum), cfg.dataset, plan.registry, int(cfg.seed),
                                         loss_scores=lambda r: target_nll(r, model, tokenizer, cfg.data))
    data = encode_data(plan, rows, tokenizer)
    tracker = open_run(plan, parent_run_id=parent_run_id, run_name=run_name, extra_tags=extra_tags)
    job = Job(output_dir=plan.output_dir, run_id=tracker.run_id, tracking_uri=tracker.uri, rank_zero=is_rank_zero(),
              experiment_id=tracker.experiment_id if tracker.run_id else None)
    status = "FAILED"
    try:
        with interruptible(), finishing(tracker):
            record_config(cfg, tracker, plan.output_dir, write_file=job.rank_zero)
            tracker.log_metrics(data.metrics, step=0)
            job.metrics.update(data.metrics)
            objective, step = fit(plan, data, model, tokenizer, tracker, job)
            if job.rank_zero:
                finish_outputs(plan, objective, start, tokenizer, base_dir, data.rows["test"], tracker, job, step)
                job.metrics["time/total_s"] = time.time() - t0
                tracker.log_metrics({"time/total_s": job.metrics["time/total_s"]}, step=step)
            status = "FINISHED"
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, (KeyboardInterrupt, JobInterrupted)) else "FAILED"
        raise
    finally:
        report_tracking(plan, tracker, job, status)
    return job


def plan_job(cfg: DictConfig, overrides: Sequence[str] | None = None) -> Plan:
    """Check everything that can be checked without data or a model: keys, values, plugin names,
    the objective's own config, writable output locations; find the checkpoint to resume from."""
    registry = load_plugins()
    validate(cfg)
    objective_cls = registry.get("objective", str(cfg.objective.name))
    objective_cls.check_config(cfg)
    for group in ("model", "adapter"):
        registry.get(group, str(cfg[group].get("kind", cfg[group].name)))
    registry.get("dataset", str(cfg.dataset.source))
    if str(cfg.data.curriculum) in MODEL_CURRICULA and not objective_cls.generates_text:
        raise ConfigError(f"data.curriculum={cfg.data.curriculum} orders rows by the starting model's token loss, and "
                          f"objective={cfg.objective.name} trains a scorer with no token loss: use data.curriculum=length or reward")
    if str(cfg.adapter.name) in HEAD_ONLY_ADAPTERS and objective_cls.generates_text:
        raise ConfigError(f"adapter={cfg.adapter.name} trains only a reward model's scalar head, and objective="
                          f"{cfg.objective.name} trains a policy, which has none: use adapter=lora or adapter=none")
    check_judge(cfg.eval)  # before training, not when the end-of-job evaluation loads it
    check_prm_eval(cfg.eval)
    output_dir, outputs_root = resolve_paths(cfg)
    plan = Plan(cfg, registry, objective_cls, output_dir, outputs_root,
                list(overrides) if overrides is not None else hydra_overrides())
    plan.resume = resolve_resume(cfg, output_dir, tracking_uri(cfg, outputs_root))
    # last: the probe creates the directories, which a config error found earlier must not leave behind
    check_writable(outputs_root, "outputs_root")
    check_writable(output_dir, "output_dir")
    if plan.resume and plan.resume.run_id and plan.resume.output_dir != output_dir:
        # continuing an interrupted run: its dir keeps its checkpoints and gets its model
        log.info("resuming the job in %s (its checkpoints and model are written there)", plan.resume.output_dir)
        plan.output_dir = plan.resume.output_dir
    if plan.resume:
        log.info("resuming from %s (step %d)%s", plan.resume.checkpoint, plan.resume.step,
                 f" into MLflow run {plan.resume.run_id}" if plan.resume.run_id else "")
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    return plan


def encode_data(plan: Plan, rows: dict[str, list[dict]], tokenizer: Any) -> Data:
    """Encode the train/val rows for the objective (through the shared cache) and the auxiliary rows it asked for."""
    cfg, objective_cls = plan.cfg, plan.objective_cls
    cache_dir = plan.outputs_root / "cache" / "tokenized" if cfg.data.cache else None
    data = Data(rows)
    stats, hits = {}, {}
    for split in ("train", "val"):
        items, stats[split], hits[split] = encode_split(objective_cls, rows[split], tokenizer, cfg.data, cache_dir, split,
                                                            objective_cfg=cfg.objective)
        setattr(data, split, objective_cls.prepare_items(items, cfg.objective, int(cfg.seed)))
        st = stats[split].counts
        log.info("data %s: %d rows kept whole, %d truncated, %d dropped (max_length=%d, policy=%s)",
                 split, st["kept"], st["truncated"], st["dropped"], cfg.data.max_length, cfg.data.truncation)
    if not data.train:
        raise DataError(
            f"every training row was dropped by data.truncation={cfg.data.truncation} at data.max_length={cfg.data.max_length}",
            source=str(cfg.dataset.name),
        )
    aux_rows = load_auxiliary_rows(cfg, plan.registry, objective_cls.auxiliary_kinds(cfg.objective))
    data.auxiliary = {name: encode_split(SFT, r, tokenizer, cfg.data, cache_dir, name)[0] for name, r in aux_rows.items()}
    data.metrics = data_metrics(stats, hits, {s: rows[s] for s in ("train", "val", "test")})
    return data


def open_run(plan: Plan, *, parent_run_id: str | None, run_name: str | None, extra_tags: Mapping[str, str] | None) -> Tracker:
    """The job's MLflow run (rank 0 only: one job, one run), nested under a pipeline job or its sweep."""
    if not is_rank_zero():
        return Tracker()
    job_name, job_tags = None, {}
    if parent_run_id is None:
        parent_run_id, job_name, job_tags = sweep_job(plan.overrides)
    tags = {**job_tags, **(extra_tags or {}), "alignx.fingerprint": fingerprint(plan.cfg), "alignx.output_dir": str(plan.output_dir)}
    resume = plan.resume
    if resume:
        tags.update({"alignx.resumed_from": str(resume.checkpoint), "alignx.resumed_at_step": str(resume.step)})
    tracker = start_tracking(plan.cfg, plan.outputs_root, plan.overrides, run_name=run_name or job_name, extra_tags=tags,
                             parent_run_id=parent_run_id, resume_run_id=resume.run_id if resume else None)
    if tracker.run_id:
        write_run_record(plan.output_dir, run_id=tracker.run_id, tracking_uri=tracker.uri,
                         experiment_id=tracker.experiment_id, fingerprint=tags["alignx.fingerprint"])
    # the processes Lightning starts for DDP inherit this: they resume from the same checkpoint
    os.environ[ENV_CHECKPOINT] = str(resume.checkpoint if resume else "")
    return tracker


def fit(plan: Plan, data: Data, model: Any, tokenizer: Any, tracker: Tracker, job: Job) -> tuple[Objective, int]:
    """Train: the objective around the policy, bound to the job, fitted by a Trainer; returns (objective, last step)."""
    cfg = plan.cfg
    objective = build_objective(cfg, plan.objective_cls, model, tokenizer, len(data.train))
    objective.bind(JobContext(cfg, plan.registry, data.train, data.val, plan.output_dir,
                              auxiliary=data.auxiliary, outputs_root=plan.outputs_root))
    trainer = build_trainer(cfg, tracker, plan.output_dir, [StopOnSignal()],
                            manual_optimization=not objective.automatic_optimization, model=model)
    ckpt = str(plan.resume.checkpoint) if plan.resume else None
    with deferred():
        trainer.fit(objective, datamodule=plan.objective_cls.datamodule(data.train, data.val, tokenizer, cfg), ckpt_path=ckpt)
    step = int(trainer.global_step)
    job.metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    job.metrics.update(objective.step_metrics)
    if objective.final_metrics:
        job.metrics.update(objective.final_metrics)
        tracker.log_metrics(objective.final_metrics, step=step)
    return objective, step


def finish_outputs(plan: Plan, objective: Objective, start: StartingModel, tokenizer: Any, base_dir: Path | None,
                   test_rows: list[dict], tracker: Tracker, job: Job, step: int) -> None:
    """Evaluate on held-out rows (against the starting model), save the model in HF format and log both (rank 0)."""
    cfg = plan.cfg
    t0 = time.time()
    metrics, job.samples = evaluate(cfg, plan.registry, objective.model, tokenizer, plan.objective_cls, test_rows,
                                    reference=start.factory(objective))
    if metrics:
        metrics["time/eval_s"] = time.time() - t0
    job.metrics.update(metrics)
    tracker.log_metrics(metrics, step=step)
    if job.samples:
        tracker.log_table(job.samples, "samples/generations.json")
    job.model_dir = save_outputs(cfg, objective.model, tokenizer, plan.output_dir, base_dir,
                                 merge=plan.objective_cls.merge_adapter_on_save)
    if job.model_dir and tracker.enabled and cfg.tracking.log_model:
        tracker.log_artifact(job.model_dir, "model")
        if base_dir:
            tracker.log_artifact(base_dir, "base")


def report_tracking(plan: Plan, tracker: Tracker, job: Job, status: str) -> None:
    """How the run ended and what MLflow missed, in ``run.json`` and the log (a tracking outage leaves a record)."""
    job.tracking_errors = list(tracker.errors)
    job.tracking = tracker.outage_summary()
    if tracker.run_id and job.rank_zero and (plan.output_dir / "run.json").is_file():
        update_run_record(plan.output_dir, status=status, tracking=job.tracking)
    if job.tracking_errors:
        log.warning(
            "MLflow logging failed %d time(s) during this job (first: %s); outputs on disk are complete in %s, "
            "the MLflow run may miss what failed (see run.json and the run's alignx.tracking_* tags)",
            len(job.tracking_errors), job.tracking_errors[0], job.output_dir,
        )
