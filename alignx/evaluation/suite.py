"""The evaluation suite a job (and ``alignx eval``) runs on held-out rows after training.

What is measured depends only on the objective's declared contract
(:attr:`~alignx.objectives.Objective.generates_text`, :attr:`~alignx.objectives.Objective.eval_kind`):
a policy gets gold reward, perplexity, learned-RM scores, best-of-N and KL from and win rate
against the model it started from (:class:`StartingModel`), whatever its objective; a reward
model gets its ranking accuracy on held-out pairs.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Callable, ClassVar, ContextManager, Iterator, Sequence

import torch
from omegaconf import DictConfig

from alignx.data.rows import encode_split
from alignx.data.tokenize import prompt_is_templated, prompt_text
from alignx.evaluation.benchmarks import benchmark_metrics
from alignx.evaluation.judge import judge_from_config
from alignx.evaluation.metrics import evaluate_policy, pair_accuracy, reference_rows
from alignx.evaluation.prm_best_of_n import check_prm_eval, prm_best_of_n
from alignx.evaluation.sources import row_sources, source_perplexity, source_reward
from alignx.models.adapters import is_peft
from alignx.objectives.base import Objective, ReferenceObjective
from alignx.objectives.sft import SFT
from alignx.paths import abs_if_local
from alignx.registry import Registry
from alignx.rewards.model import RewardModelScorer

ReferenceFactory = Callable[[], ContextManager[torch.nn.Module]]

log = logging.getLogger("alignx")


def evaluate(
    cfg: DictConfig, registry: Registry, model: Any, tokenizer: Any, objective_cls: type[Objective], test_rows: list[dict],
    *, reference: ReferenceFactory | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Evaluate ``model`` (trained by ``objective_cls``) on held-out rows; returns (metrics, samples).

    A policy: gold reward (when the dataset names a task), perplexity and, with ``reference`` (a
    factory of context managers yielding the reference policy), KL from it and win rate against
    it; with ``eval.prm``, PRM-guided best-of-N (:mod:`alignx.evaluation.prm_best_of_n`). A scorer
    (``generates_text`` false, ``eval_kind="pairs"``): ranking accuracy on pairs.

    The policy completes each prompt as :meth:`Objective.generation_prompt` renders it; the gold
    reward, learned reward models (``eval.reward_model``), the samples table and the reference the
    win rate compares with see the prompt itself.
    """
    if not cfg.eval.enabled or not test_rows:
        return {}, []
    check_prm_eval(cfg.eval)
    if not objective_cls.generates_text:
        return _evaluate_scorer(cfg, model, tokenizer, objective_cls, test_rows), []
    test_rows = reference_rows(test_rows)
    if not test_rows:
        return {}, []
    task = cfg.dataset.get("task")
    reward_fn = registry.get("reward", str(task)) if task and ("reward", str(task)) in registry else None
    # a dataset mixture: each row gold-scored by its own source's task (alignx.evaluation.sources)
    reward_fn = source_reward(cfg, registry, test_rows, tokenizer) or reward_fn
    chat = bool(cfg.data.chat_template)
    # held-out rows in order, repeats included: a task with few distinct prompts (sentiment has a
    # handful of review openings) still gets eval.num_prompts independent samples
    prompts = [prompt_text(r, tokenizer, chat) for r in test_rows][: int(cfg.eval.num_prompts)]
    # the policy completes what its objective conditions it on; the reward still reads the task's prompt
    asked = generation_prompts(objective_cls, prompts, cfg)
    items, _, _ = encode_split(SFT, test_rows, tokenizer, cfg.data)
    collate = SFT.collate_fn(tokenizer)
    bs = int(cfg.data.eval_batch_size)
    metrics, samples = evaluate_policy(
        model, tokenizer, asked, cfg.eval,
        reward_fn=reward_fn,
        ppl_batches=[collate(items[i : i + bs]) for i in range(0, len(items), bs)],
        seed=int(cfg.seed),
        prompt_is_templated=any(prompt_is_templated(r, chat) for r in test_rows),
        reference=reference,
        reward_models=eval_reward_models(cfg),
        judge=policy_judge(cfg, model, prompts, test_rows, bs),
        task_prompts=prompts,
        groups=row_sources(test_rows, len(prompts)),
    )
    if cfg.eval.prm:
        # PRM-guided best-of-N: the same N candidates as eval/gold_reward_best_of_<N>, chosen by the PRM
        metrics.update(prm_best_of_n(
            model, tokenizer, asked, cfg.eval, reward_fn=reward_fn, seed=int(cfg.seed),
            prompt_is_templated=any(prompt_is_templated(r, chat) for r in test_rows), task_prompts=prompts,
        ))
    metrics.update(benchmark_metrics(cfg.eval, registry, model, tokenizer, chat_template=chat, batch_size=bs))
    metrics.update(source_perplexity(model, items, collate, bs))
    return metrics, samples


def generation_prompts(objective_cls: type[Objective], prompts: list[str], cfg: DictConfig) -> list[str]:
    """The texts the policy completes: each prompt through :meth:`Objective.generation_prompt`
    (in order; whatever reads a prompt for scoring is given the prompt itself at the same position)."""
    return [objective_cls.generation_prompt(p, cfg) for p in prompts]


def policy_judge(
    cfg: DictConfig, model: torch.nn.Module, prompts: Sequence[str], rows: Sequence[dict], batch_size: int,
) -> Callable[[Sequence[str]], dict[str, float]] | None:
    """``eval.judge``'s comparison of the policy's samples for ``prompts`` with the rows' reference
    completions (the baseline every held-out set has), or None without a judge."""
    judge = judge_from_config(cfg.eval, device=next(model.parameters()).device, batch_size=batch_size)
    if judge is None:
        return None
    baselines = [r["completion"] if "completion" in r else r["messages"][-1]["content"] for r in rows][: len(prompts)]
    return lambda sampled: judge.compare(prompts, sampled, baselines)


def _evaluate_scorer(cfg: DictConfig, model: Any, tokenizer: Any, objective_cls: type[Objective], rows: list[dict]) -> dict:
    if objective_cls.eval_kind != "pairs":
        return {}
    # a reward model: how often it ranks held-out chosen completions above rejected ones
    pairs = [r for r in rows if isinstance(r.get("prompt"), str)][: int(cfg.eval.num_prompts)]
    scorer = RewardModelScorer.from_model(model, tokenizer, batch_size=int(cfg.data.eval_batch_size))
    return {"eval/rm_accuracy": pair_accuracy(scorer, pairs)} if pairs else {}


class StartingModel:
    """The model a policy started from: the reference of ``eval/kl_to_reference`` and ``eval/win_rate``.

    Every objective that trains a policy is compared with its starting model on the same axes,
    whether or not it used a reference while training. :meth:`factory` finds it, cheapest first
    and never as a second copy of something the job already holds:

    * the objective's own reference, when it keeps one in memory (the DPO family and KTO under
      full fine-tuning: their frozen copy; PPO, GRPO, RLOO: the same);
    * an adapter: the trained policy itself with its adapters disabled;
    * otherwise (SFT, reference-free losses such as SimPO/ORPO, precomputed reference log-probs):
      the model rebuilt from the job's config, after training. Builders are deterministic (a model
      built in code is seeded by ``model.init_seed``; ``model=hf`` reads the same files), so the
      rebuild is exact; nothing is held during training. To catch a builder that is not (a plugin
      that initialises without a seed), a probe of the built weights is taken before training
      and compared with the rebuilt ones: on a mismatch the comparison metrics are left out with
      a warning rather than measured against a different model.
    """

    #: elements of each parameter (flattened) summed by the probe: cheap, yet another random
    #: initialisation shows in every tensor that is initialised at random
    PROBE_ELEMENTS: ClassVar[int] = 256

    def __init__(self, cfg: DictConfig, registry: Registry, objective_cls: type[Objective], model: torch.nn.Module) -> None:
        """Record what the job built, before any training step (``model`` as :func:`build_policy` returned it)."""
        self.cfg = cfg
        self.registry = registry
        self.objective_cls = objective_cls
        # a scorer is not compared with anything, and an adapter's base stays inside the policy
        self.probe = weights_probe(model) if objective_cls.generates_text and not is_peft(model) else None

    def factory(self, objective: Objective) -> ReferenceFactory | None:
        """A factory of context managers yielding the starting model (on the policy's device, in
        eval mode), or None: a scorer, or a rebuilt model that is not the one the job started from."""
        if not self.objective_cls.generates_text or not self.cfg.eval.enabled:
            return None
        if isinstance(objective, ReferenceObjective):
            with objective.reference() as ref:
                held = ref is not None
            if held:
                return _objective_reference(objective)
        if is_peft(objective.model):
            return _adapters_disabled(objective.model)
        return self._rebuilt(objective)

    def _rebuilt(self, objective: Objective) -> ReferenceFactory | None:
        cfg = self.cfg
        model, tokenizer = self.registry.get("model", str(cfg.model.kind))(cfg.model)
        model = self.objective_cls.prepare_model(model, tokenizer, cfg.objective)
        if self.probe is None or not torch.equal(weights_probe(model), self.probe):
            log.warning(
                "model.kind=%s built again from the same config has other weights than the model this job "
                "started from (its builder is not deterministic); eval/kl_to_reference and eval/win_rate "
                "are left out", cfg.model.kind,
            )
            return None
        policy = next(objective.model.parameters())
        # same device and dtype as the policy (a bf16-true run casts the policy): an untrained
        # policy then has exactly KL 0 and win rate 0.5
        model = model.to(device=policy.device, dtype=policy.dtype).eval().requires_grad_(False)

        @contextmanager
        def reference() -> Iterator[torch.nn.Module]:
            yield model

        return reference


def weights_probe(model: torch.nn.Module) -> torch.Tensor:
    """A float64 vector: the sum of the first :attr:`StartingModel.PROBE_ELEMENTS` elements of each
    parameter, in order. Equal for equal weights; another random initialisation changes the entry
    of every randomly initialised tensor."""
    n = StartingModel.PROBE_ELEMENTS
    with torch.no_grad():
        sums = [p.detach().reshape(-1)[:n].to("cpu", torch.float64).sum() for p in model.parameters()]
    return torch.stack(sums) if sums else torch.zeros(0, dtype=torch.float64)


def _objective_reference(objective: ReferenceObjective) -> ReferenceFactory:
    @contextmanager
    def reference() -> Iterator[torch.nn.Module]:
        with objective.reference() as ref:
            yield ref

    return reference


def _adapters_disabled(model: Any) -> ReferenceFactory:
    @contextmanager
    def reference() -> Iterator[torch.nn.Module]:
        with model.disable_adapter():
            yield model

    return reference


def eval_reward_models(cfg: DictConfig) -> dict[str, RewardModelScorer]:
    """Learned reward models that score evaluation samples next to the gold reward (eval.reward_model)."""
    path = cfg.eval.reward_model
    return {"rm": RewardModelScorer(abs_if_local(str(path)))} if path else {}
