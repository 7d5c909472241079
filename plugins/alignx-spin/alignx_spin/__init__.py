"""alignx-spin: self-play fine-tuning (SPIN) as an alignx plugin; the objective is in :mod:`alignx_spin.spin`.

This module is what alignx imports to list plugins, so it imports nothing heavy: the objective is
registered by its import path and loaded (with torch and Lightning) only when a job uses it.
"""

from __future__ import annotations

from typing import Any


def register(registry: Any) -> None:
    """Called by alignx with its registry (entry point ``alignx.plugins``)."""
    registry.register("objective", "spin", "alignx_spin.spin:SPIN")
