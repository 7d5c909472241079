"""Configuration: Hydra composition with plugins' config packages, and the checks that turn every bad
key, value or group option into one clear line before a job creates anything.

``glue`` (search path, ``compose``, command-line checks), ``keys`` (unknown keys), ``schema``
(types and ranges; the YAML under ``conf/`` holds every default), ``values`` (``validate``),
``targets`` (``_target_`` nodes).
"""

from alignx.config.glue import (
    PRIMARY_CONFIG,
    AlignxSearchPathPlugin,
    check_group_choices,
    check_override_keys,
    compose,
    config_groups,
    register_search_path,
)
from alignx.config.keys import check_known_keys, objective_keys, show_value
from alignx.config.schema import (
    ADAPTER_SCHEMAS,
    MODEL_SCHEMAS,
    SECTIONS,
    TOP_LEVEL,
    TRUNCATION_POLICIES,
    CheckpointSchema,
    DataSchema,
    EvalSchema,
    ModelSchema,
    OptimSchema,
    SaveSchema,
    SchedulerSchema,
    TrainerSchema,
)
from alignx.config.targets import check_strategy, check_target, check_targets, missing_extra
from alignx.config.values import check_node, check_required, check_value, validate

__all__ = [
    "ADAPTER_SCHEMAS", "MODEL_SCHEMAS", "PRIMARY_CONFIG", "SECTIONS", "TOP_LEVEL", "TRUNCATION_POLICIES",
    "AlignxSearchPathPlugin", "CheckpointSchema", "DataSchema", "EvalSchema", "ModelSchema", "OptimSchema", "SaveSchema",
    "SchedulerSchema", "TrainerSchema", "check_group_choices", "check_known_keys", "check_node", "check_override_keys",
    "check_required", "check_strategy", "check_target", "check_targets", "check_value", "compose", "config_groups",
    "missing_extra", "objective_keys", "register_search_path", "show_value", "validate",
]
