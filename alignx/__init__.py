"""alignx: a plugin-based, Hydra-driven experiment framework for aligning language models.

Kept import-light on purpose: launcher workers and ``alignx plugins`` import it before any
heavy dependency is needed.
"""

__version__ = "0.1.0"
