"""``alignx eval``: the evaluation suite on a saved model, through the same objective contract as a job."""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from omegaconf import OmegaConf
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from alignx.config import compose, validate
from alignx.data.rows import load_rows
from alignx.errors import ConfigError
from alignx.evaluation.benchmarks import check_benchmark_names
from alignx.evaluation.judge import check_judge
from alignx.evaluation.prm_best_of_n import check_prm_eval
from alignx.evaluation.suite import evaluate
from alignx.models.heads import is_reward_model
from alignx.models.loading import build_hf
from alignx.paths import resolve_outputs_root
from alignx.registry import load_plugins
from alignx.tracking.start import resolve_model_reference, start_tracking, tracking_uri


def evaluate_model(
    model_ref: str, overrides: Sequence[str] = (), *, reference: str | None = None, track: bool = True,
) -> tuple[dict[str, float], list[dict], str | None]:
    """``alignx eval``: the evaluation suite on a saved model (a directory or ``runs:/<id>/<path>``).

    The config is composed like a job's (``overrides``: dataset, eval settings, ``eval.reward_model``
    ...). A reward model (a sequence classifier) is evaluated as objective ``rm`` would be (its
    ranking accuracy on held-out pairs); a policy as objective ``sft`` would be (gold reward,
    perplexity, learned-RM scores, best-of-N and, with ``reference`` — a model directory or URI,
    e.g. the SFT model it started from — KL from it and win rate against it), prompted as the
    objective that trained it prompts it (:meth:`~alignx.objectives.Objective.generation_prompt`,
    with that job's ``objective`` node: :func:`saved_objective`). Returns (metrics, samples, MLflow
    run id); the run is tagged ``alignx.eval=true``.
    """
    # models and configs fetched from a tracking server live only as long as the evaluation
    with tempfile.TemporaryDirectory(prefix="alignx-eval-") as downloads:
        return _evaluate_model(model_ref, overrides, Path(downloads), reference=reference, track=track)


def _evaluate_model(
    model_ref: str, overrides: Sequence[str], downloads: Path, *, reference: str | None, track: bool,
) -> tuple[dict[str, float], list[dict], str | None]:
    cfg = compose(["model=hf", *overrides])
    outputs_root = resolve_outputs_root(cfg)
    uri = tracking_uri(cfg, outputs_root) or f"sqlite:///{outputs_root / 'mlflow.db'}"
    cfg.model.name_or_path = resolve_model_reference(model_ref, uri, downloads / "model")
    validate(cfg)
    registry = load_plugins()
    # before loading anything: an unknown benchmark or a judge that is not a model directory
    check_benchmark_names(cfg.eval, registry)
    check_judge(cfg.eval)
    check_prm_eval(cfg.eval)
    model, tokenizer = _load_any(cfg.model)
    objective_cls = registry.get("objective", "rm" if is_reward_model(model) else "sft")
    kind = objective_cls.test_kind(cfg)
    trained_by = None if is_reward_model(model) else saved_objective(model_ref, str(cfg.model.name_or_path), uri, downloads)
    if trained_by is not None and ("objective", str(trained_by.name)) in registry:
        policy_cls = registry.get("objective", str(trained_by.name))
        if policy_cls.generates_text:
            # the policy is prompted as its own job's evaluation prompted it (Objective.generation_prompt)
            cfg.objective = trained_by
            objective_cls = policy_cls
    rows = load_rows(OmegaConf.merge(cfg, {"eval": {"enabled": True}}), registry, kind, kind)["test"]
    ref_factory = None
    if reference:
        ref_local = resolve_model_reference(reference, uri, downloads / "reference")
        ref_model, _ = _load_any(OmegaConf.merge(cfg.model, {"name_or_path": ref_local}))
        device = next(model.parameters()).device

        @contextmanager
        def ref_factory() -> Iterator[torch.nn.Module]:
            yield ref_model.to(device).eval()

    metrics, samples = evaluate(cfg, registry, model, tokenizer, objective_cls, list(rows), reference=ref_factory)
    run_id = None
    if track and cfg.tracking.name != "none":
        tags = {"alignx.eval": "true", "alignx.eval_model": model_ref, **({"alignx.eval_reference": reference} if reference else {})}
        tracker = start_tracking(cfg, outputs_root, list(overrides), run_name=f"eval {Path(model_ref).name or model_ref}",
                                 extra_tags=tags)
        tracker.log_metrics(metrics, step=0)
        if samples:
            tracker.log_table(samples, "samples/generations.json")
        tracker.finish("FINISHED")
        run_id = tracker.run_id
    return metrics, samples, run_id


def saved_objective(model_ref: str, local_dir: str, uri: str, downloads: Path) -> Any:
    """The ``objective`` node of the job that saved the model, or None when it cannot be found.

    A job writes its resolved config to ``<output_dir>/config.yaml`` and saves the model to
    ``<output_dir>/model`` (or ``merged``), so a local model directory's parent holds it; a
    ``runs:/<run_id>/...`` model's run holds it as the ``config/resolved.yaml`` artifact.
    """
    if model_ref.startswith("runs:/"):
        run_id = model_ref[len("runs:/"):].split("/", 1)[0]
        try:
            path = Path(resolve_model_reference(f"runs:/{run_id}/config/resolved.yaml", uri, downloads / "config"))
        except ConfigError:  # a run without the artifact (logged by something other than an alignx job)
            return None
    else:
        path = Path(local_dir).expanduser().parent / "config.yaml"
    if not path.is_file():
        return None
    node = OmegaConf.load(path).get("objective")
    return node if OmegaConf.is_dict(node) and node.get("name") else None


def _load_any(model_cfg: Any) -> tuple[Any, Any]:
    """A saved causal LM through the normal loader, or a saved reward model (sequence classifier)."""
    path = Path(str(model_cfg.name_or_path)).expanduser()
    config = path / "config.json"
    if config.is_file() and any(a.endswith("ForSequenceClassification") for a in json.loads(config.read_text()).get("architectures") or []):
        return AutoModelForSequenceClassification.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    return build_hf(model_cfg)
