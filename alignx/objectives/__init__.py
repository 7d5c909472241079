"""Objectives: thin LightningModules over the pure losses in alignx.losses."""

from alignx.objectives.base import Objective

__all__ = ["Objective"]
