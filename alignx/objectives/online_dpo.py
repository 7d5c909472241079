"""Online / iterative DPO (Xu et al. 2023; Xiong et al. 2024): sample, label with a reward, train DPO; repeat.

``alignx objective=online_dpo model=hf model.name_or_path=<an SFT model> objective.iterations=3``
runs ``objective.iterations`` iterations as pipeline stages, each a nested MLflow run
(:func:`alignx.objectives.iterative.iteration_stages`). Iteration *k*:

1. starts from iteration *k-1*'s saved model (the first from the job's model);
2. when fitting starts, samples ``objective.num_samples`` (K >= 2) completions for each of
   ``objective.num_prompts`` training prompts (a fresh seeded draw per iteration) and for every
   validation prompt from that model, the current policy;
3. scores them with the ``reward`` config group (gold, rm, mix or any registered reward; the
   missing-EOS score applies) and pairs each prompt's best with its worst completion
   (:func:`alignx.data.sampled_pairs.best_worst_pairs`; ties are skipped and counted);
4. trains ``trainer.max_steps`` steps of the configured DPO loss (:class:`~alignx.objectives.DPO`)
   on those pairs, against the model it started from (``objective.reference=previous``) or the
   model iteration 1 started from (``initial``: iteration 1 saves it as ``<output_dir>/reference``
   and later iterations load it from there).

Each iteration logs ``online_dpo/<split>/pairs``, ``ties_skipped``, ``reward_chosen``,
``reward_rejected`` and ``reward_mean`` (the mean reward of every sample: the policy's reward as
the iteration starts), plus DPO's own metrics and the usual evaluation.
"""

from __future__ import annotations

import copy
import random
from typing import Any, ClassVar, Mapping

import torch

from alignx.data.sampled_pairs import SampledPairs, best_worst_pairs
from alignx.data.tokenize import prompt_is_templated
from alignx.errors import ConfigError, PluginError
from alignx.generation import generate_rollouts
from alignx.models.adapters import is_peft
from alignx.models.loading import build_hf, save_pretrained_atomic
from alignx.objectives.base import JobContext
from alignx.objectives.dpo import DPO
from alignx.objectives.iterative import STAGE_NAME, iteration_stages
from alignx.objectives.online import OnlineObjective
from alignx.registry import load_plugins
from alignx.rewards import check_reward_config, read_components
from alignx.rewards.combine import build_reward
from alignx.tracking.logger import TrackerLogger

__all__ = ["OnlineDPO"]

#: where iteration 1 saves the model it started from, beside its saved model (objective.reference=initial)
REFERENCE_DIR = "reference"
#: the values of ``objective.reference``
REFERENCES = ("previous", "initial")


class OnlineDPO(DPO):
    """One iteration of online DPO: DPO on best-vs-worst pairs the policy sampled and a reward labelled."""

    name: ClassVar[str] = "online_dpo"
    data_kind: ClassVar[str] = "prompt"
    # DPO's keys (spelled out: the command line reads this from source) and the sampling rounds'
    config_keys: ClassVar[frozenset[str]] = frozenset({
        "loss", "beta", "label_smoothing", "simpo_gamma", "orpo_lambda", "precompute_ref_logps",
        "iterations", "iteration", "num_samples", "num_prompts", "reference", "reference_path",
        "max_new_tokens", "temperature", "top_k", "top_p",
    })

    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(model, tokenizer, cfg, **kwargs)
        self.reward: Any = None  # built by attach()
        path = cfg["reference_path"]
        if path is not None and self.needs_reference():
            # reference=initial, iteration >= 2: the model iteration 1 started from, frozen, in the
            # policy's dtype (replaces the copy of the starting model the base made)
            dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
            ref, _ = build_hf({"name_or_path": str(path), "dtype": dtype}, tokenizer=tokenizer)
            self._ref = [ref.eval().requires_grad_(False)]

    # -- the job: iterations as stages ---------------------------------------------------------
    @classmethod
    def stages(cls, cfg: Any) -> list[dict] | None:
        node = cfg.objective
        initial = str(node.reference) == "initial"

        def extra(k: int) -> list[str]:
            out = [f"objective.iteration={k}"]
            if initial and k > 1:
                out.append(f"objective.reference_path=stage:{STAGE_NAME.format(k=1)}/../{REFERENCE_DIR}")
            return out

        return iteration_stages(int(node.iterations), str(cfg.adapter.name), extra)

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """DPO's checks, then the values only online DPO reads, each error naming its key; the
        ``reward`` node is checked against the registry (unknown rewards and options are named)."""
        super().check_config(cfg)
        node = cfg.objective
        if int(node.iterations) < 1:
            raise ConfigError(f"objective.iterations={node.iterations} must be >= 1 (the number of sample-label-train rounds)")
        if not 1 <= int(node.iteration) <= int(node.iterations):
            raise ConfigError(f"objective.iteration={node.iteration} must be between 1 and objective.iterations={node.iterations} "
                              "(the stages set it; leave it at 1)")
        if int(node.num_samples) < 2:
            raise ConfigError(f"objective.num_samples={node.num_samples} must be >= 2: a pair is the best and the worst "
                              "of a prompt's samples")
        if node.num_prompts is not None and int(node.num_prompts) < 1:
            raise ConfigError(f"objective.num_prompts={node.num_prompts} must be >= 1, or null for every training prompt")
        if str(node.reference) not in REFERENCES:
            raise ConfigError(f"objective.reference={node.reference} is not one of: {', '.join(REFERENCES)}")
        if node.reference_path is not None and str(node.reference) != "initial":
            raise ConfigError(f"objective.reference_path={node.reference_path} is only read with objective.reference=initial "
                              "(the stages set it); leave it null")
        if bool(node.precompute_ref_logps):
            raise ConfigError("objective.precompute_ref_logps=true does not apply to objective=online_dpo: its pairs are "
                              "sampled when training starts, after reference log-probs would be computed")
        if int(node.max_new_tokens) < 1:
            raise ConfigError(f"objective.max_new_tokens={node.max_new_tokens} must be >= 1")
        if float(node.temperature) <= 0:
            raise ConfigError(f"objective.temperature={node.temperature} must be > 0 (the completions are sampled)")
        registry = load_plugins()
        for comp in read_components(cfg.reward):  # an unknown reward is named by the key that selects it
            try:
                registry.get("reward", comp.reward)
            except PluginError as exc:
                raise ConfigError(f"{comp.where}{'.name' if 'name' in cfg.reward.components[comp.key] else ''}: {exc}") from None
        check_reward_config(cfg.reward, registry)

    # -- data: prompt rows now, pairs once sampled ---------------------------------------------------
    @classmethod
    def encode(
        cls, row: Mapping[str, Any], tokenizer: Any, data_cfg: Mapping[str, Any], objective_cfg: Mapping[str, Any]
    ) -> tuple[dict | None, str]:
        """A prompt row -> its prompt ids and text (as the online RL objectives encode it), plus the
        prompt in the row's own form (``pair_prompt``) for the pair rows built from its samples."""
        item, status = OnlineObjective.encode(row, tokenizer, data_cfg, objective_cfg)
        if item is None:
            return None, status
        if row.get("prompt") is not None:
            pair_prompt = row["prompt"]
        else:  # a messages row: every turn before its final assistant turn
            messages = list(row["messages"])
            pair_prompt = messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages
        item["pair_prompt"] = pair_prompt
        item["templated"] = prompt_is_templated(row, bool(data_cfg["chat_template"]))
        return item, status

    def attach(self, job: JobContext) -> None:
        self.reward = build_reward(job.cfg.reward, job.registry)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        node = self.cfg
        if str(node.reference) == "initial" and int(node.iteration) == 1 and int(node.iterations) > 1:
            self._save_initial()
        datamodule = self.trainer.datamodule
        for split in ("train", "val"):
            items = getattr(datamodule, f"{split}_items")
            if items and "pair_prompt" in items[0]:  # not yet paired (a resumed fit pairs again)
                pairs, metrics = self._sample_pairs(self._draw(items) if split == "train" else items, split)
                setattr(datamodule, f"{split}_items", pairs)
                self.final_metrics.update(metrics)
        if not datamodule.train_items:
            raise ConfigError(
                f"objective=online_dpo iteration {node.iteration}: no training pair was left (every prompt's "
                f"{node.num_samples} samples tied under the reward, or the pairs exceeded data.max_length); raise "
                "objective.num_samples or objective.temperature"
            )

    def _draw(self, items: list[dict]) -> list[dict]:
        """``objective.num_prompts`` training prompts, a seeded draw of its own per iteration."""
        n = self.cfg["num_prompts"]
        if n is None or int(n) >= len(items):
            return items
        rng = random.Random(int(self.context.cfg.seed) * 1_000_003 + int(self.cfg["iteration"]))
        return [items[i] for i in sorted(rng.sample(range(len(items)), int(n)))]

    def _save_initial(self) -> None:
        """Save the model this first iteration starts from (the reference later iterations load)."""
        if not self.trainer.is_global_zero or self.context.output_dir is None:
            return
        dest = self.context.output_dir / REFERENCE_DIR
        if dest.exists():  # a resumed fit: the saved copy is the initial model, the policy no longer is
            return
        if self.ref_model is not None:
            model = self.ref_model
        elif is_peft(self.model):  # a fresh adapter is the identity: merged, the policy is the base model
            model = copy.deepcopy(self.model).merge_and_unload()
        else:
            model = self.model
        save_pretrained_atomic(dest, model, self.tokenizer)

    @torch.no_grad()
    def _sample_pairs(self, items: list[dict], split: str) -> tuple[list[dict], dict[str, float]]:
        """Sample K completions per prompt from the policy, score them, pair best with worst, encode."""
        cfg, node = self.context.cfg, self.cfg
        k = int(node.num_samples)
        texts = [it["prompt"] for it in items for _ in range(k)]
        was_training = self.model.training
        self.model.eval()
        try:
            completions, rollouts = generate_rollouts(
                self.model, self.tokenizer, texts,
                max_new_tokens=int(node.max_new_tokens), temperature=float(node.temperature),
                top_k=int(node.top_k), top_p=float(node.top_p), batch_size=int(cfg.data.eval_batch_size),
                seed=(int(cfg.seed) * 1009 + int(node.iteration)) * 2 + (0 if split == "train" else 1),
                prompt_is_templated=bool(items[0]["templated"]),
            )
        finally:
            self.model.train(was_training)
        has_eos = torch.cat([r.has_eos.cpu() for r in rollouts])
        scores, _ = self.reward.score([it["reward_prompt"] for it in items for _ in range(k)], completions, has_eos=has_eos)
        flat = scores.tolist()
        built: SampledPairs = best_worst_pairs(
            [it["pair_prompt"] for it in items],
            [completions[i * k:(i + 1) * k] for i in range(len(items))],
            [flat[i * k:(i + 1) * k] for i in range(len(items))],
        )
        pairs, too_long = [], 0
        options = {key: node[key] for key in DPO.encode_keys}  # the objective keys DPO's encode reads
        for row in built.rows:
            item, _ = DPO.encode(row, self.tokenizer, cfg.data, options)
            if item is None:
                too_long += 1
            else:
                pairs.append(item)
        logger = self.logger
        if split == "train" and built.rows and isinstance(logger, TrackerLogger):  # another logger has no tables
            logger.tracker.log_table(built.rows[: int(cfg.eval.num_logged_samples)], "samples/online_dpo_pairs.json")
        prefix = f"{self.name}/{split}"
        return pairs, {**built.metrics(prefix), f"{prefix}/prompts": float(len(items)),
                       f"{prefix}/too_long_dropped": float(too_long)}
