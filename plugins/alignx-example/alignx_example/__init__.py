"""alignx-example: a minimal third-party alignx plugin, written against alignx's public API only.

It registers one objective (``sft_ls``: SFT with label smoothing) and one reward function
(``brevity``), and ships ``conf/objective/sft_ls.yaml`` so ``alignx train objective=sft_ls`` works.
Both are registered by import path (:mod:`alignx_example.objective`), so listing plugins or a
config error never imports torch through this plugin.
"""

from __future__ import annotations

from typing import Any


def register(registry: Any) -> None:
    """Called by alignx with its registry (entry point ``alignx.plugins``)."""
    registry.register("objective", "sft_ls", "alignx_example.objective:LabelSmoothedSFT")
    registry.register("reward", "brevity", "alignx_example.objective:brevity")
