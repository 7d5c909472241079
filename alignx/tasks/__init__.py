"""Builtin synthetic tasks: deterministic row generators with a known gold reward.

Stdlib-only on purpose, so importing the task registry stays cheap.
"""

from __future__ import annotations

from alignx.tasks._common import SyntheticTask, TaskArgumentError, split_of
from alignx.tasks.arithmetic import ArithmeticTask
from alignx.tasks.base import ROW_KINDS, SPLITS, Task
from alignx.tasks.format import FormatTask
from alignx.tasks.sentiment import SentimentTask
from alignx.tasks.steps import StepsTask

#: task name -> class, for the ``task`` registry and ``dataset/<name>.yaml``
BUILTIN_TASKS: dict[str, type[Task]] = {
    SentimentTask.name: SentimentTask,
    ArithmeticTask.name: ArithmeticTask,
    FormatTask.name: FormatTask,
    StepsTask.name: StepsTask,
}

__all__ = [
    "ROW_KINDS",
    "SPLITS",
    "BUILTIN_TASKS",
    "ArithmeticTask",
    "FormatTask",
    "SentimentTask",
    "StepsTask",
    "SyntheticTask",
    "Task",
    "TaskArgumentError",
    "split_of",
]
