"""Multi-stage pipelines as one job: SFT -> RM -> PPO, SFT -> DPO, ... with a stage cache.

A pipeline is the ``pipeline`` config node (set by an ``experiment=`` preset)::

    pipeline:
      name: sft_dpo
      stages:
        - name: sft
          overrides: [objective=sft, trainer.max_steps=300]
        - name: dpo
          overrides: [objective=dpo, model=hf, model.name_or_path=stage:sft, optim.lr=1e-4]
      cache: true      # reuse a finished stage with the same resolved config and inputs
      force: false     # retrain every stage (and refresh the cache)
      pgr: null        # {metric, weak, student, ceiling}: report weak-to-strong PGR (see alignx.evaluation.weak_to_strong)
      beta: 0.1        # any other key is a variable stages read as ${pipeline.beta}


Each stage is an ordinary ``train`` job composed from the job's own overrides plus the stage's,
run as a nested MLflow run under the job's run. ``stage:<name>`` in a stage override is the
saved model of an earlier stage (a data stage's rows file; ``stage:<name>/<file>`` another file
in a data stage's directory); a path or an MLflow ``runs:/<run_id>/<artifact>`` URI starts a
stage from another run's output.

The cache lives in ``<outputs_root>/cache/stages/<key>.json``; the key hashes the stage's
resolved config (minus where outputs and runs go) and its inputs: an earlier stage by *its*
key, an external model directory by its files. A per-key file lock makes parallel jobs that
share a stage train it once (the others wait, then hit); the entry is written atomically only
after the stage finished, so nobody reads a half-written stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from hydra import compose as hydra_compose
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

import alignx
from alignx.config import PRIMARY_CONFIG, validate
from alignx.config import compose as alignx_compose
from alignx.datagen import generate_dataset
from alignx.errors import ConfigError
from alignx.evaluation.weak_to_strong import (
    NoPerformanceGap,
    check_pgr_spec,
    pgr_of_stages,
)
from alignx.job.result import Job
from alignx.job.single import train
from alignx.labelling import label_dataset
from alignx.paths import resolve_paths
from alignx.store import Store, check_writable
from alignx.tracking import Tracker, finishing
from alignx.tracking.start import resolve_model_reference, start_tracking, sweep_job

log = logging.getLogger("alignx")

STAGE_REF = "stage:"
#: config keys that say where things go, not what is computed: left out of the stage key
NOT_IN_KEY = ("output_dir", "outputs_root", "tracking", "hydra", "pipeline", "resume")
NOT_IN_KEY_TRAINER = ("enable_progress_bar", "log_every_n_steps")
CACHE_VERSION = 1
#: a stage trains a model (``train``), makes data from one (see alignx.datagen) or labels the
#: dataset's pairs with a reward (``label``, see alignx.labelling)
STAGE_KINDS = ("train", "rlaif", "raft", "label")
DATA_OPTIONS = ("num_samples", "num_prompts", "min_margin", "min_score", "skip_rows")
STAGE_KEYS = {"name", "overrides", "kind", *DATA_OPTIONS}


@dataclass
class StageResult:
    """One stage of a pipeline: where its model is, its metrics, whether it came from the cache."""

    name: str
    key: str
    model_dir: Path | None
    output_dir: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    cache_hit: bool = False
    source_run_id: str | None = None


def stage_specs(cfg: DictConfig) -> list[dict]:
    """The pipeline's stages as ``[{name, overrides}]``, checked (names unique, references backwards)."""
    node = cfg.get("pipeline")
    # resolved against the whole config: stages read pipeline variables (${pipeline.beta}), which
    # sweeps then vary like any key
    stages = OmegaConf.to_container(node.stages, resolve=True) if node is not None and "stages" in node else None
    if not stages:
        raise ConfigError("pipeline.stages is empty: list the stages, e.g. [{name: sft, overrides: [objective=sft]}]")
    seen: list[str] = []
    out = []
    for i, stage in enumerate(stages):
        if not isinstance(stage, Mapping) or not stage.get("name"):
            raise ConfigError(f"pipeline.stages[{i}] must be a mapping with a 'name' and 'overrides', got {stage!r}")
        name = str(stage["name"])
        if name in seen:
            raise ConfigError(f"pipeline.stages[{i}]: stage name '{name}' is used twice")
        extra = set(stage) - STAGE_KEYS
        if extra:
            raise ConfigError(
                f"pipeline.stages[{i}] ('{name}'): unknown keys {sorted(extra)}. Valid keys: {', '.join(sorted(STAGE_KEYS))}"
            )
        kind = str(stage.get("kind", "train"))
        if kind not in STAGE_KINDS:
            raise ConfigError(f"pipeline.stages[{i}] ('{name}'): kind '{kind}' is not valid. Valid: {', '.join(STAGE_KINDS)}")
        overrides = [str(o) for o in (stage.get("overrides") or [])]
        for o in overrides:
            ref = _stage_ref(o)
            if ref is not None and ref not in seen:
                raise ConfigError(
                    f"pipeline.stages[{i}] ('{name}'): '{o}' refers to stage '{ref}', which does not run before it. "
                    f"Earlier stages: {', '.join(seen) or 'none'}"
                )
        seen.append(name)
        options = {k: stage[k] for k in DATA_OPTIONS if k in stage}
        out.append({"name": name, "overrides": overrides, "kind": kind, "options": options})
    return out


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _stage_ref(override: str) -> str | None:
    value = override.split("=", 1)[1] if "=" in override else ""
    return value[len(STAGE_REF):].split("/")[0] if value.startswith(STAGE_REF) else None


def compose_stage(overrides: Sequence[str]) -> DictConfig:
    """Compose a stage's train config: inside the running Hydra app with its search path, else in-process."""
    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name=PRIMARY_CONFIG, overrides=list(overrides))
    return alignx_compose(list(overrides))


def directory_fingerprint(path: Path) -> str:
    """Files, sizes and modification times under ``path``: changes when a model is rewritten."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _file_fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def stage_key(cfg: DictConfig, inputs: Mapping[str, str]) -> str:
    """The cache key of a stage: its resolved config (minus output locations) and its inputs' identities."""
    node = OmegaConf.to_container(cfg, resolve=True)
    for key in NOT_IN_KEY:
        node.pop(key, None)
    for key in NOT_IN_KEY_TRAINER:
        node.get("trainer", {}).pop(key, None)
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, alignx.__version__, node, dict(sorted(inputs.items()))],
                        sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


class StageCache:
    """Finished stages in ``<root>/<key>.json`` on the shared :class:`~alignx.store.Store` (per-key
    locks, atomic writes, damaged entries discarded); an entry whose model dir is gone is a miss."""

    def __init__(self, root: Path) -> None:
        self.store = Store(root, name="stage cache", version=CACHE_VERSION,
                           fields={"stage": str, "output_dir": str, "metrics": dict})

    def lock(self, key: str) -> Any:
        return self.store.lock(key)

    def lookup(self, key: str) -> dict | None:
        def model_dir_exists(entry: Any) -> str | None:
            model_dir = entry.data.get("model_dir")
            return f"its model dir {model_dir} is gone" if model_dir and not Path(model_dir).exists() else None

        entry = self.store.load(key, check=model_dir_exists)
        return entry.data if entry is not None else None

    def store_record(self, key: str, record: dict) -> None:
        self.store.save(key, record)


def run_pipeline(cfg: DictConfig, overrides: Sequence[str] = ()) -> Job:
    """Run every stage of ``cfg.pipeline`` in order under one MLflow run; returns the job's :class:`~alignx.job.Job`.

    ``overrides`` are the job's own (command line) overrides; each stage is composed from them
    plus its stage overrides, so ``dataset=...`` or ``model=...`` on the command line apply to
    every stage that does not set them itself.
    """
    t0 = time.time()
    validate(cfg)
    specs = stage_specs(cfg)
    pgr = check_pgr_spec(OmegaConf.to_container(cfg.pipeline, resolve=True).get("pgr"), [s["name"] for s in specs])
    output_dir, outputs_root = resolve_paths(cfg)
    check_writable(outputs_root, "outputs_root")
    check_writable(output_dir, "output_dir")
    node = cfg.pipeline
    use_cache = bool(node.get("cache", True))
    force = bool(node.get("force", False))
    cache = StageCache(outputs_root / "cache" / "stages")
    name = str(node.get("name") or "pipeline")
    base = [o for o in overrides if not _key(o).startswith(("pipeline", "output_dir", "hydra"))]

    parent_run_id, job_name, job_tags = sweep_job(list(overrides))
    tracker = start_tracking(cfg, outputs_root, list(overrides), run_name=job_name or f"pipeline {name}",
                             extra_tags={**job_tags, "alignx.pipeline": name,
                                         "alignx.stages": " -> ".join(s["name"] for s in specs)},
                             parent_run_id=parent_run_id)
    job = Job(output_dir=output_dir, run_id=tracker.run_id, tracking_uri=tracker.uri)
    results: dict[str, StageResult] = {}
    with finishing(tracker):
        tracker.log_text(OmegaConf.to_yaml(cfg.pipeline), "config/pipeline.yaml")
        for spec in specs:
            result = _run_stage(spec, base, results, output_dir, outputs_root, tracker, cache, use_cache, force)
            results[spec["name"]] = result
            prefixed = {f"{spec['name']}/{k}": v for k, v in result.metrics.items()}
            job.metrics.update(prefixed)
            tracker.log_metrics({k: v for k, v in prefixed.items() if k.split("/", 1)[1].startswith("eval/")}, step=0)
            job.samples = []
        last = results[specs[-1]["name"]]
        job.metrics.update(last.metrics)  # the pipeline's result is its last stage's (optimized_metric etc.)
        job.model_dir = last.model_dir
        job.metrics["pipeline/cache_hits"] = float(sum(r.cache_hit for r in results.values()))
        if pgr is not None:
            _report_pgr(pgr, results, job, tracker)
        job.metrics["time/total_s"] = time.time() - t0
        tracker.log_metrics({"pipeline/cache_hits": job.metrics["pipeline/cache_hits"],
                             "time/total_s": job.metrics["time/total_s"]}, step=0)
    job.stages = results
    return job


def _run_stage(
    spec: dict, base: Sequence[str], done: Mapping[str, StageResult], output_dir: Path, outputs_root: Path,
    tracker: Tracker, cache: StageCache, use_cache: bool, force: bool,
) -> StageResult:
    stage = spec["name"]
    inputs: dict[str, str] = {}
    resolved: list[str] = []
    for o in spec["overrides"]:
        ref = _stage_ref(o)
        if ref is not None:
            key, value = o.split("=", 1)
            earlier = done[ref]
            if earlier.model_dir is None:
                raise ConfigError(f"stage '{stage}' needs stage '{ref}''s saved model, but '{ref}' saved none (save.model=false?)")
            # a model directory or a data stage's rows file; an earlier stage counts by its key
            rest = value[len(STAGE_REF) + len(ref):].lstrip("/")
            # a data stage's result is its rows file: stage:<name>/<file> is a file beside it
            root = earlier.model_dir.parent if rest and earlier.model_dir.is_file() else earlier.model_dir
            resolved.append(f"{key}={root / rest if rest else root}")
            inputs[key] = f"stage:{earlier.key}{'/' + rest if rest else ''}"
        else:
            resolved.append(o)
    stage_dir = output_dir / stage
    own = {_key(o) for o in resolved}
    # the stage's own value of a key wins, and a group it picks drops the job's settings inside the
    # job's choice of that group (model=hf replaces model=tiny, model.hidden_size=32 included)
    inherited = [o for o in base if _key(o) not in own and not any(_key(o).startswith(k + ".") for k in own)]
    cfg = compose_stage([*inherited, *resolved, "pipeline=null", f"output_dir={stage_dir}", f"outputs_root={outputs_root}"])
    path = cfg.model.get("name_or_path") if "model" in cfg else None
    if path and "model.name_or_path" not in inputs:
        local = resolve_model_reference(str(path), tracker.uri, output_dir / "inputs" / stage)
        if local != str(path):
            cfg.model.name_or_path = local
            inputs["model.name_or_path"] = str(path)  # a run's artifact is immutable: its URI identifies it
        elif Path(local).expanduser().is_dir():
            inputs["model.name_or_path"] = directory_fingerprint(Path(local).expanduser())
    if spec["kind"] != "train":
        inputs["stage.kind"] = json.dumps([spec["kind"], spec["options"]], sort_keys=True)
    data_path = cfg.dataset.get("path") if "dataset" in cfg else None
    if data_path and "dataset.path" not in inputs and Path(str(data_path)).expanduser().exists():
        p = Path(str(data_path)).expanduser()
        inputs["dataset.path"] = directory_fingerprint(p) if p.is_dir() else _file_fingerprint(p)
    key = stage_key(cfg, inputs)
    tags = {"alignx.stage": stage, "alignx.stage_key": key, "alignx.stage_kind": spec["kind"]}
    run = _train_stage if spec["kind"] == "train" else _data_stage
    if not use_cache:
        return run(cfg, spec, key, tracker, tags, None)
    with cache.lock(key):
        record = None if force else cache.lookup(key)
        if record is not None:
            log.info("stage cache hit: '%s' reuses %s (run %s)", stage, record["output_dir"], record.get("run_id"))
            return _replay_hit(cfg, stage, key, record, tracker, tags)
        if force:
            log.info("stage '%s': pipeline.force=true, retraining", stage)
        log.info("stage '%s' (%s): running", stage, spec["kind"])
        return run(cfg, spec, key, tracker, {**tags, "alignx.stage_cache": "miss"}, cache)


def _train_stage(cfg: DictConfig, spec: dict, key: str, tracker: Any, tags: dict,
                 cache: StageCache | None) -> StageResult:
    stage = spec["name"]
    job = train(cfg, overrides=[f"stage={stage}"], parent_run_id=tracker.run_id, run_name=f"stage {stage}",
                extra_tags=tags)
    result = StageResult(stage, key, job.model_dir, job.output_dir, dict(job.metrics), job.run_id)
    _record(cache, key, result, job.tracking_uri)
    return result


def _data_stage(cfg: DictConfig, spec: dict, key: str, tracker: Any, tags: dict,
                cache: StageCache | None) -> StageResult:
    """A stage that writes rows: samples from a model (RLAIF pairs, RAFT demonstrations) or labels pairs."""
    stage = spec["name"]
    out_dir = Path(str(cfg.output_dir))
    run = start_tracking(cfg, Path(str(cfg.outputs_root)), [f"stage={stage}"], run_name=f"stage {stage} ({spec['kind']})",
                         extra_tags=tags, parent_run_id=tracker.run_id)
    with finishing(run):
        if spec["kind"] == "label":
            path, metrics = label_dataset(cfg, spec["options"], out_dir)
        else:
            path, metrics = generate_dataset(cfg, spec["kind"], spec["options"], out_dir / "data.jsonl")
        run.log_metrics(metrics, step=0)
        for file in sorted(out_dir.glob("*.jsonl")) if spec["kind"] == "label" else [path]:
            run.log_artifact(file, "data")
    result = StageResult(stage, key, path, out_dir, metrics, run.run_id)
    _record(cache, key, result, run.uri)
    return result


def _report_pgr(spec: dict[str, str], results: Mapping[str, StageResult], job: Job, tracker: Tracker) -> None:
    """Log weak-to-strong PGR as ``eval/pgr`` on the pipeline's run; an undefined one is a warning, not a failure
    (every stage has trained by now, and their results stand)."""
    try:
        value, line = pgr_of_stages(spec, {name: r.metrics for name, r in results.items()})
    except (NoPerformanceGap, ConfigError) as e:
        log.warning("%s", e)
        tracker.set_tags({"alignx.pgr": f"undefined: {e}"})
        return
    log.info("%s", line)
    job.metrics["eval/pgr"] = value
    tracker.log_metrics({"eval/pgr": value}, step=0)
    tracker.set_tags({"alignx.pgr": line})


def _record(cache: StageCache | None, key: str, result: StageResult, uri: str | None) -> None:
    if cache is not None:
        cache.store_record(key, {"stage": result.name, "output_dir": str(result.output_dir),
                          "model_dir": str(result.model_dir) if result.model_dir else None,
                          "metrics": result.metrics, "run_id": result.run_id, "tracking_uri": uri,
                          "finished": time.time()})


def _replay_hit(cfg: DictConfig, stage: str, key: str, record: dict, tracker: Any, tags: dict) -> StageResult:
    """A cache hit still appears as a (quick) nested run, tagged, with the cached stage's metrics."""
    outputs_root = Path(str(cfg.outputs_root))
    hit = start_tracking(cfg, outputs_root, [f"stage={stage}"], run_name=f"stage {stage} (cached)",
                         extra_tags={**tags, "alignx.stage_cache": "hit",
                                     "alignx.stage_cache_source_run": str(record.get("run_id"))},
                         parent_run_id=tracker.run_id)
    try:
        hit.log_metrics({k: float(v) for k, v in record.get("metrics", {}).items()}, step=0)
    finally:
        hit.finish("FINISHED")
    model_dir = Path(record["model_dir"]) if record.get("model_dir") else None
    return StageResult(stage, key, model_dir, Path(record["output_dir"]), dict(record.get("metrics", {})),
                       hit.run_id, cache_hit=True, source_run_id=record.get("run_id"))
