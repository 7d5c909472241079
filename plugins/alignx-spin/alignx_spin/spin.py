"""alignx-spin: self-play fine-tuning (SPIN; Chen et al. 2024, arXiv:2401.01335) as an alignx plugin.

Written against alignx's public API only, as a third party would:

* :class:`alignx.objectives.DPO` — SPIN's per-iteration loss *is* the DPO loss, with the SFT
  target as "chosen", the model's own sample as "rejected" and the previous iterate as reference;
* :meth:`alignx.objectives.Objective.stages` — an objective that is several trainings returns
  them as pipeline stages, which alignx runs as nested MLflow runs (with the stage cache);
* :func:`alignx.generation.generate` — seeded, batched, KV-cached sampling;

``alignx objective=spin model=hf model.name_or_path=<an SFT model> objective.iterations=3``:
iteration *k* starts from iteration *k-1*'s model (the first from the given one), samples a
completion for every SFT prompt with it, and trains ``trainer.max_steps`` DPO steps on
(prompt, chosen = SFT target, rejected = own sample) against that starting model.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import torch

from alignx.errors import ConfigError
from alignx.generation import generate
from alignx.objectives import DPO, JobContext
from alignx.registry import load_plugins

__all__ = ["SPIN", "self_play_rows", "spin_stages"]

#: objective.* keys SPIN reads besides DPO's
SPIN_KEYS = frozenset({"iterations", "max_new_tokens", "temperature", "top_k", "top_p"})


def self_play_rows(rows: Sequence[Mapping[str, Any]], samples: Sequence[str]) -> tuple[list[dict], int]:
    """SPIN's pairs: each SFT row's target is "chosen", the model's sample for its prompt "rejected".

    A sample identical to its target (after stripping whitespace) carries no signal (and would be
    an invalid DPO pair), so it is left out. Returns (pair rows, how many were left out).
    """
    if len(rows) != len(samples):
        raise ValueError(f"{len(rows)} rows but {len(samples)} samples")
    pairs, identical = [], 0
    for row, sample in zip(rows, samples):
        if sample.strip() == str(row["completion"]).strip():
            identical += 1
            continue
        pairs.append({"prompt": row["prompt"], "chosen": row["completion"], "rejected": sample})
    return pairs, identical


def spin_stages(iterations: int, adapter: str = "none") -> list[dict]:
    """The pipeline stages of a SPIN job: ``iteration_1`` .. ``iteration_N``, each starting from the last.

    With an adapter, each iteration also saves its merged model, and the next one starts from
    that: its reference (the adapter switched off) is then the previous iterate, as SPIN requires.
    """
    stages = []
    for k in range(1, iterations + 1):
        overrides = ["save.merge_adapter=true"] if adapter != "none" else []
        if k > 1:
            previous = f"stage:iteration_{k - 1}" + ("/../merged" if adapter != "none" else "")
            overrides += ["model=hf", f"model.name_or_path={previous}"]
        stages.append({"name": f"iteration_{k}", "overrides": overrides})
    return stages


class SPIN(DPO):
    """One SPIN iteration: DPO against the starting model on (SFT target, own sample) pairs.

    It trains on ``sft`` rows; the "rejected" side is sampled from the model when fitting starts
    (the model then still equals the reference), for the training and validation rows alike.
    """

    name: ClassVar[str] = "spin"
    data_kind: ClassVar[str] = "sft"
    # DPO's keys minus the options of reference-free losses, which SPIN refuses
    config_keys: ClassVar[frozenset[str]] = (DPO.config_keys - {"simpo_gamma", "orpo_lambda"}) | SPIN_KEYS

    # -- the job: iterations as stages --------------------------------------------------------
    @classmethod
    def stages(cls, cfg: Any) -> list[dict] | None:
        return spin_stages(int(cfg.objective.iterations), str(cfg.adapter.name))

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        node = cfg.objective
        # asked of the loss's registered spec, so a plugin's reference-free DPO variant is refused too
        if not load_plugins().get("preference_loss", str(node.loss)).needs_reference:
            raise ConfigError(f"objective.loss={node.loss} is reference-free; SPIN is defined against the previous iterate")
        super().check_config(cfg)
        if int(node.iterations) < 1:
            raise ConfigError(f"objective.iterations={node.iterations}: SPIN needs at least 1 iteration")
        if bool(node.precompute_ref_logps):
            raise ConfigError(
                "objective.precompute_ref_logps=true does not apply to SPIN: its rejected completions are sampled "
                "when training starts, after reference log-probs would be computed"
            )
        if int(node.max_new_tokens) < 1:
            raise ConfigError(f"objective.max_new_tokens={node.max_new_tokens} must be at least 1")

    # -- one iteration ------------------------------------------------------------------------
    @classmethod
    def encode(
        cls, row: Mapping[str, Any], tokenizer: Any, data_cfg: Mapping[str, Any], objective_cfg: Mapping[str, Any]
    ) -> tuple[dict | None, str]:
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("completion"), str):
            raise ConfigError(
                "objective=spin trains on prompt/completion rows (a dataset of SFT demonstrations); "
                f"got a row with keys {sorted(row)}"
            )
        # the pair is encoded once the rejected side exists; this checks the target fits and
        # gives the sampler a length to bucket by
        pair = {"prompt": row["prompt"], "chosen": row["completion"], "rejected": ""}
        item, status = DPO.encode(pair, tokenizer, data_cfg, objective_cfg)
        if item is None:
            return None, status
        return {"input_ids": item["chosen_input_ids"], "prompt": row["prompt"], "completion": row["completion"]}, status

    def on_fit_start(self) -> None:
        super().on_fit_start()
        datamodule = self.trainer.datamodule
        stats: dict[str, float] = {}
        for split in ("train", "val"):
            items = getattr(datamodule, f"{split}_items")
            if items and "prompt" in items[0]:  # not yet paired (a resumed fit pairs again)
                pairs, split_stats = self._self_play(items, split)
                setattr(datamodule, f"{split}_items", pairs)
                stats.update(split_stats)
        if not datamodule.train_items:
            raise ConfigError("SPIN: every sample equals its SFT target; there is nothing left to learn from")
        self.final_metrics.update(stats)

    @torch.no_grad()
    def _self_play(self, items: list[dict], split: str) -> tuple[list[dict], dict[str, float]]:
        cfg = self.context.cfg  # the job's whole config, set by the job before fitting
        node = self.cfg
        was_training = self.model.training
        self.model.eval()
        try:
            samples = generate(
                self.model, self.tokenizer, [it["prompt"] for it in items],
                max_new_tokens=int(node.max_new_tokens),
                temperature=float(node.temperature),
                top_k=int(node.top_k),
                top_p=float(node.top_p),
                batch_size=int(cfg.data.eval_batch_size),
                seed=int(cfg.seed) + (0 if split == "train" else 1),
            )
        finally:
            self.model.train(was_training)
        rows, identical = self_play_rows([{"prompt": it["prompt"], "completion": it["completion"]} for it in items], samples)
        pairs, dropped = [], 0
        options = {k: node[k] for k in DPO.encode_keys}  # the objective keys DPO's encode reads
        for row in rows:
            item, _ = DPO.encode(row, self.tokenizer, cfg.data, options)
            if item is None:
                dropped += 1
            else:
                pairs.append(item)
        if split == "train" and rows and getattr(self.logger, "experiment", None) is not None:
            shown = rows[: int(cfg.eval.num_logged_samples)]
            self.logger.experiment.log_table(shown, "samples/spin_pairs.json")
        return pairs, {
            f"spin/{split}/pairs": float(len(pairs)),
            f"spin/{split}/identical_dropped": float(identical),
            f"spin/{split}/too_long_dropped": float(dropped),
            f"spin/{split}/rejected_mean_chars": sum(len(s) for s in samples) / max(1, len(samples)),
        }
