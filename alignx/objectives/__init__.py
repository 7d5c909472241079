"""Objectives: thin LightningModules over the pure losses in alignx.losses.

The public base classes for plugins: :class:`Objective` (everything), :class:`ReferenceObjective`
(scored against a frozen reference policy), :class:`DPO` (preference pairs; subclass it for a DPO
variant), :class:`OnlineObjective` (sample, score, update), and :class:`JobContext`.
"""

from alignx.objectives.base import JobContext, Objective, ReferenceObjective
from alignx.objectives.dpo import DPO
from alignx.objectives.online import OnlineObjective

__all__ = ["DPO", "JobContext", "Objective", "OnlineObjective", "ReferenceObjective"]
