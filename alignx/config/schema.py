"""Types and ranges of every value alignx reads: schema dataclasses without defaults.

Defaults live only in the YAML under ``conf/``. Every field here is ``MISSING``: it declares the
value's type and range (in the field's metadata), which :func:`alignx.config.validate` checks."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Literal,
    Optional,
    Sequence,
    Union,
    get_args,
)

from omegaconf import MISSING

from alignx.data.curriculum import CURRICULA
from alignx.data.formats import INVALID_ROW_POLICIES
from alignx.data.quality import FILTERS


def spec(
    *, ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
    choices: Sequence[Any] | Callable[[], Sequence[Any] | None] | None = None,
    check: Callable[[Any], str | None] | None = None, length: int | None = None,
) -> Any:
    """A schema field without a default (the YAML holds it): its bounds (``ge`` >=, ``gt`` >,
    ``le`` <=, ``lt`` <; element-wise for lists), allowed ``choices`` (or a function returning
    them), a list ``length``, or ``check(value)`` returning what is wrong (a phrase) or None."""
    meta = dict(ge=ge, gt=gt, le=le, lt=lt, choices=choices, check=check, length=length)
    return field(default=MISSING, metadata={k: v for k, v in meta.items() if v is not None})


TRUNCATION_POLICIES = ("truncate_prompt", "truncate_completion", "drop", "error")


def _precisions() -> tuple | None:
    """Lightning's accepted ``precision`` values (None if this Lightning version hides them: it checks itself)."""
    try:
        from lightning.fabric.connector import _PRECISION_INPUT
    except ImportError:  # pragma: no cover - a private name of a future Lightning
        return None
    return tuple(value for literal in get_args(_PRECISION_INPUT) for value in get_args(literal))


def _accelerators() -> tuple:
    from lightning.pytorch.accelerators import AcceleratorRegistry

    return ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))


def _strategies() -> tuple:
    from lightning.pytorch.strategies import StrategyRegistry

    return ("auto", *StrategyRegistry.available_strategies())


def _devices_problem(value: Any) -> str | None:
    if isinstance(value, int):
        ok = value == -1 or value >= 1
    elif isinstance(value, str):
        ok = bool(re.fullmatch(r"auto|-1|\d+|\d+(\s*,\s*\d+)+,?", value.strip()))
    else:
        ok = bool(value) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    return None if ok else "is not a device count: must be >= 1, -1 (all), 'auto', or a list of device indices like [0, 1]"


def _max_epochs_problem(value: int) -> str | None:
    return None if value == -1 or value >= 1 else "is out of range: must be >= 1 (or -1: no limit)"


def _fraction_or_count(lo_open: bool) -> Callable[[Any], str | None]:
    """A Lightning "float = fraction, int = number of batches" value."""

    def problem(value: Any) -> str | None:
        if isinstance(value, float) and not (0.0 < value <= 1.0 if lo_open else 0.0 <= value <= 1.0):
            return f"is out of range: a fraction must be {'> 0' if lo_open else '>= 0'} and <= 1 (an int counts batches)"
        if isinstance(value, int) and value < (1 if lo_open else 0):
            return f"is out of range: a batch count must be >= {1 if lo_open else 0}"
        return None

    return problem


@dataclass
class DataSchema:
    """``data``: how rows become batches."""

    max_length: int = spec(ge=2)
    truncation: str = spec(choices=TRUNCATION_POLICIES)
    invalid_rows: str = spec(choices=INVALID_ROW_POLICIES)
    completion_only_loss: bool = spec()
    chat_template: bool = spec()
    batch_size: int = spec(ge=1)
    eval_batch_size: int = spec(ge=1)
    length_bucketing: bool = spec()
    curriculum: str = spec(choices=CURRICULA)
    filter: str = spec(choices=FILTERS)
    keep_fraction: float = spec(gt=0, le=1)
    num_workers: int = spec(ge=0)
    cache: bool = spec()


@dataclass
class SaveSchema:
    """``save``: what the job writes as its result."""

    model: bool = spec()
    merge_adapter: bool = spec()


@dataclass
class EvalSchema:
    """``eval``: the end-of-training evaluation (and, with ``every_n_steps``, the same during training)."""

    enabled: bool = spec()
    every_n_steps: Optional[int] = spec(ge=1)
    num_prompts: int = spec(ge=0)
    max_new_tokens: int = spec(ge=1)
    temperature: float = spec(gt=0)
    top_k: int = spec(ge=0)
    top_p: float = spec(gt=0, le=1)
    num_logged_samples: int = spec(ge=0)
    reward_model: Optional[str] = spec()
    best_of_n: int = spec(ge=1)
    prm: Optional[str] = spec()
    judge: Optional[str] = spec()
    judge_template: str = spec()
    judge_labels: list[str] = spec(length=2)
    benchmarks: list[str] = spec()
    benchmark_limit: Optional[int] = spec(ge=1)


@dataclass
class CheckpointSchema:
    """``checkpoint``: resumable checkpoints during training."""

    every_n_steps: Optional[int] = spec(ge=1)


@dataclass
class TrainerSchema:
    """``trainer``: the lightning.Trainer arguments alignx's presets set (any other Trainer argument
    may be added; its name is checked against the Trainer's signature)."""

    accelerator: Union[str, dict] = spec(choices=_accelerators)
    devices: Union[int, str, list[int]] = spec(check=_devices_problem)
    num_nodes: int = spec(ge=1)
    strategy: Union[str, dict] = spec(choices=_strategies)
    precision: Union[int, str] = spec(choices=_precisions)
    max_epochs: Optional[int] = spec(check=_max_epochs_problem)
    # its range depends on max_epochs: see _check_training_length
    max_steps: int = spec()
    accumulate_grad_batches: int = spec(ge=1)
    gradient_clip_val: Optional[float] = spec(ge=0)
    log_every_n_steps: int = spec(ge=1)
    val_check_interval: Optional[Union[int, float]] = spec(check=_fraction_or_count(lo_open=True))
    limit_val_batches: Union[int, float] = spec(check=_fraction_or_count(lo_open=False))
    deterministic: Optional[Union[bool, Literal["warn"]]] = spec()
    enable_progress_bar: Optional[bool] = spec()
    # alignx's, popped before the Trainer is built: torch.compile the policy's decoder layers
    compile: bool = spec()


@dataclass
class OptimSchema:
    """``optim``: the optimizer arguments alignx's presets use (others: checked against the target's signature)."""

    lr: float = spec(gt=0)
    weight_decay: float = spec(ge=0)
    betas: list[float] = spec(ge=0, lt=1, length=2)
    eps: float = spec(gt=0)
    momentum: float = spec(ge=0)


@dataclass
class SchedulerSchema:
    """``scheduler``: the learning-rate schedule's arguments alignx's presets use."""

    num_warmup_steps: int = spec(ge=0)


@dataclass
class RootSchema:
    """Top-level values."""

    # torch/numpy seeds are unsigned 32-bit; Lightning silently picks a random seed outside that range
    seed: int = spec(ge=0, le=2**32 - 1)
    output_dir: Optional[str] = spec()
    outputs_root: Optional[str] = spec()
    resume: Optional[str] = spec()
    optimized_metric: Optional[Union[str, list[str]]] = spec()


@dataclass
class LoraSchema:
    """``adapter=lora|dora``."""

    name: str = spec()
    r: int = spec(ge=1)
    alpha: float = spec(gt=0)
    dropout: float = spec(ge=0, lt=1)
    target_modules: Union[str, list[str]] = spec()
    bias: str = spec(choices=("none", "all", "lora_only"))
    use_dora: bool = spec()


@dataclass
class ProbeSchema:
    """``adapter=probe``: no options (only the scalar head trains)."""

    name: str = spec()


@dataclass
class ModelSchema:
    """``model`` keys of every kind (llama, hf, a plugin's), checked besides the kind's own schema."""

    # null = log-probs from the logits; N >= 1 = from the hidden states, N positions at a time
    logprob_chunk_size: Optional[int] = spec(ge=1)
    # true = forward passes on the real tokens only (alignx.models.packing)
    padding_free: bool = spec()
    # true = transformers' gradient checkpointing on the trained model(s)
    gradient_checkpointing: bool = spec()


@dataclass
class LlamaSchema:
    """``model`` of kind ``llama`` (model=tiny|small): a Llama built in code."""

    name: str = spec()
    kind: str = spec()
    hidden_size: int = spec(ge=1)
    intermediate_size: int = spec(ge=1)
    num_hidden_layers: int = spec(ge=1)
    num_attention_heads: int = spec(ge=1)
    num_key_value_heads: Optional[int] = spec(ge=1)
    max_position_embeddings: int = spec(ge=2)
    tie_word_embeddings: bool = spec()
    init_seed: int = spec(ge=0)


@dataclass
class HfModelSchema:
    """``model`` of kind ``hf`` (model=hf): any transformers causal LM."""

    name: str = spec()
    kind: str = spec()
    name_or_path: str = spec()
    revision: Optional[str] = spec()
    dtype: str = spec(choices=("auto", "float32", "bfloat16", "float16"))
    trust_remote_code: bool = spec()


#: node -> (schema, closed): a closed node holds exactly the schema's keys (alignx reads each of
#: them); an open one may hold more (lightning.Trainer or optimizer arguments, checked elsewhere)
SECTIONS: dict[str, tuple[type, bool]] = {
    "data": (DataSchema, True),
    "save": (SaveSchema, True),
    "eval": (EvalSchema, True),
    "checkpoint": (CheckpointSchema, True),
    "trainer": (TrainerSchema, False),
    "optim": (OptimSchema, False),
    "scheduler": (SchedulerSchema, False),
}
#: adapter name -> its schema (adapters from plugins are checked by the plugin)
ADAPTER_SCHEMAS: dict[str, type] = {"lora": LoraSchema, "dora": LoraSchema, "probe": ProbeSchema}
#: model kind -> its schema; open, since a secret or plugin key may ride along (models from plugins: the plugin)
MODEL_SCHEMAS: dict[str, type] = {"llama": LlamaSchema, "hf": HfModelSchema}
#: what a mandatory (``???``) value of alignx's own options must be
REQUIRED: dict[str, str] = {
    "model.name_or_path": "a hub id or a local directory",
    "dataset.path": "the path of the training file",
    "dataset.id": "a Hugging Face Hub dataset id or a local directory laid out like one",
}
TOP_LEVEL = {
    "objective", "model", "adapter", "dataset", "optim", "scheduler", "trainer", "tracking", "eval",
    "seed", "output_dir", "outputs_root", "data", "save", "hydra", "optimized_metric", "reward", "checkpoint", "resume", "pipeline",
    "callbacks", "template",
}
#: trainer keys alignx handles itself rather than passing to lightning.Trainer
TRAINER_EXTRA_KEYS = {"_target_", "compile"}
#: keys of a ``_target_`` node that Hydra's instantiate reads itself
INSTANTIATE_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


# -- checking values against a schema ---------------------------------------------------------------
