"""The DPO family as registered components: each loss is one function plus a declared spec.

``objective=dpo`` looks ``objective.loss`` up in the registry's ``preference_loss`` kind and
asks the :class:`PreferenceLoss` it finds what to compute: reference log-probs or not
(:attr:`~PreferenceLoss.needs_reference`), summed or per-token averaged log-probs
(:attr:`~PreferenceLoss.length_normalised`), the NLL of the chosen completion
(:attr:`~PreferenceLoss.needs_nll`), and which ``objective.*`` config keys to pass
(:attr:`~PreferenceLoss.options`, the function's keyword-only parameters). The formulas of the
built-in variants are in ``docs/losses.md`` ("The DPO family").

A new variant, from a plugin's ``register(registry)`` or anywhere before the job starts::

    def sppo(x: PreferenceInputs, *, beta: float) -> PreferenceOutput:
        a = x.chosen - x.ref_chosen
        b = x.rejected - x.ref_rejected
        losses = (a - 0.5 / beta) ** 2 + (b + 0.5 / beta) ** 2
        return losses, beta * a.detach(), beta * b.detach()

    registry.register("preference_loss", "sppo", PreferenceLoss("sppo", sppo))

after which ``objective.loss=sppo`` trains with it, reads ``objective.beta`` strictly, and
fails before any run when the name or an option is wrong.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from alignx.losses.preference import dpo_loss, orpo_loss, simpo_loss

#: what a preference loss returns: ``(losses [B], chosen_rewards [B], rejected_rewards [B])``,
#: the implicit rewards detached (they feed the ``rewards/*`` metrics, never the gradient)
PreferenceOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class PreferenceInputs:
    """What a preference loss receives for ``B`` pairs; every tensor is ``[B]``.

    ``chosen`` / ``rejected``: the policy's log-probabilities of the two completions, summed over
    completion tokens, or per-token means when the spec is ``length_normalised`` (with gradient).
    ``ref_chosen`` / ``ref_rejected``: the same under the frozen reference (same normalisation, no
    gradient); given when the spec ``needs_reference``, else None. ``chosen_nll``: the per-token
    mean negative log-likelihood of the chosen completion, ``-avg_logp(y_w)`` (with gradient),
    whatever the normalisation; given when the spec ``needs_nll``, else None.
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None
    chosen_nll: torch.Tensor | None = None


@dataclass(frozen=True)
class PreferenceLoss:
    """A registered pairwise preference loss: ``fn`` and what it needs.

    - ``name``: the ``objective.loss`` value (also the registry name).
    - ``fn(inputs: PreferenceInputs, **options) -> PreferenceOutput``, per example.
    - ``needs_reference``: whether ``fn`` reads ``ref_chosen``/``ref_rejected``. When false the
      objective builds no reference (no frozen copy, no precomputation), torchtune's
      ``is_reference_free`` turned around.
    - ``length_normalised``: whether ``fn`` is defined on per-token averaged log-probabilities
      (IPO, SimPO, ORPO) rather than sums.
    - ``needs_nll``: whether ``fn`` reads ``chosen_nll`` (ORPO's SFT term); the objective then
      also logs its batch mean as ``nll``.
    - ``options`` (derived, not passed): the keyword-only parameters of ``fn``, each read strictly
      from the objective's config node under the same name and passed by keyword. They may not
      have defaults in ``fn``: a value's default lives in the config (the objective YAML, or
      ``+objective.<key>=...``), nowhere else.

    Calling the spec checks that the inputs it needs are there and that ``fn`` returned three
    ``[B]`` tensors, so a broken plugin loss is named instead of failing somewhere downstream.
    """

    name: str
    fn: Callable[..., PreferenceOutput]
    needs_reference: bool = True
    length_normalised: bool = False
    needs_nll: bool = False
    options: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"a preference loss needs a non-empty name, got {self.name!r}")
        if not callable(self.fn):
            raise ValueError(f"preference loss '{self.name}': fn must be callable, got {type(self.fn).__name__}")
        params = list(inspect.signature(self.fn).parameters.values())
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(positional) != 1 or any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
            raise ValueError(
                f"preference loss '{self.name}': fn must take exactly one positional argument (the PreferenceInputs) "
                "and its config options as keyword-only parameters, e.g. def fn(x, *, beta): ..."
            )
        options = tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY)
        with_default = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is not p.empty]
        if with_default:
            raise ValueError(
                f"preference loss '{self.name}': option(s) {', '.join(with_default)} have a default in the function; "
                "options are read from the objective's config, so give the value there instead"
            )
        object.__setattr__(self, "options", options)

    def __call__(self, inputs: PreferenceInputs, options: Mapping[str, Any]) -> PreferenceOutput:
        """Per-example losses and detached implicit rewards; ``options`` holds (at least) :attr:`options`."""
        if self.needs_reference and (inputs.ref_chosen is None or inputs.ref_rejected is None):
            raise ValueError(f"preference loss '{self.name}' needs reference log-probabilities; none were given")
        if self.needs_nll and inputs.chosen_nll is None:
            raise ValueError(f"preference loss '{self.name}' needs the chosen completions' NLL; none was given")
        missing = [k for k in self.options if k not in options]
        if missing:
            raise ValueError(f"preference loss '{self.name}' is missing option(s): {', '.join(missing)}")
        out = self.fn(inputs, **{k: options[k] for k in self.options})
        shape = tuple(inputs.chosen.shape)
        if (
            not isinstance(out, tuple)
            or len(out) != 3
            or not all(isinstance(t, torch.Tensor) and tuple(t.shape) == shape for t in out)
        ):
            got = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in out] if isinstance(out, tuple) else type(out).__name__
            raise TypeError(
                f"preference loss '{self.name}' must return (losses, chosen_rewards, rejected_rewards), "
                f"each of shape {shape}; got {got}"
            )
        return out

    def example_inputs(self) -> PreferenceInputs:
        """One made-up pair with every input this loss needs (float64); a dry run of the options
        with it raises what a training step would, before any work starts."""
        def one(v: float) -> torch.Tensor:
            return torch.tensor([v], dtype=torch.float64)

        ref = self.needs_reference
        return PreferenceInputs(
            chosen=one(-0.5 if self.length_normalised else -4.0),
            rejected=one(-1.0 if self.length_normalised else -6.0),
            ref_chosen=one(-0.75 if self.length_normalised else -5.0) if ref else None,
            ref_rejected=one(-0.75 if self.length_normalised else -5.0) if ref else None,
            chosen_nll=one(0.5) if self.needs_nll else None,
        )


# -- the built-in variants: each adapts the pure functions of alignx.losses.preference ------------


def sigmoid(x: PreferenceInputs, *, beta: float, label_smoothing: float) -> PreferenceOutput:
    """DPO: ``-log σ(βh)``; with ``label_smoothing`` ε > 0 it is cDPO's smoothed form."""
    return dpo_loss(x.chosen, x.rejected, x.ref_chosen, x.ref_rejected, beta=beta, loss_type="sigmoid",
                    label_smoothing=label_smoothing)


def cdpo(x: PreferenceInputs, *, beta: float, label_smoothing: float) -> PreferenceOutput:
    """Conservative DPO: ``-(1-ε) log σ(βh) - ε log σ(-βh)`` (the same formula as ``sigmoid``)."""
    return dpo_loss(x.chosen, x.rejected, x.ref_chosen, x.ref_rejected, beta=beta, loss_type="cdpo",
                    label_smoothing=label_smoothing)


def robust(x: PreferenceInputs, *, beta: float, label_smoothing: float) -> PreferenceOutput:
    """Robust DPO: ``(-(1-ε) log σ(βh) + ε log σ(-βh)) / (1-2ε)``."""
    return dpo_loss(x.chosen, x.rejected, x.ref_chosen, x.ref_rejected, beta=beta, loss_type="robust",
                    label_smoothing=label_smoothing)


def hinge(x: PreferenceInputs, *, beta: float, label_smoothing: float) -> PreferenceOutput:
    """Hinge (RSO/SLiC): ``max(0, 1 - βh)``; ``label_smoothing`` must be 0 (it has no meaning here)."""
    return dpo_loss(x.chosen, x.rejected, x.ref_chosen, x.ref_rejected, beta=beta, loss_type="hinge",
                    label_smoothing=label_smoothing)


def ipo(x: PreferenceInputs, *, beta: float, label_smoothing: float) -> PreferenceOutput:
    """IPO: ``(h - 1/(2β))²`` on per-token averaged log-probabilities; ``label_smoothing`` must be 0."""
    return dpo_loss(x.chosen, x.rejected, x.ref_chosen, x.ref_rejected, beta=beta, loss_type="ipo",
                    label_smoothing=label_smoothing)


def simpo(x: PreferenceInputs, *, beta: float, simpo_gamma: float) -> PreferenceOutput:
    """SimPO (reference-free): ``-log σ(β (avg_w - avg_l) - γ)``."""
    return simpo_loss(x.chosen, x.rejected, beta=beta, gamma=simpo_gamma)


def orpo(x: PreferenceInputs, *, orpo_lambda: float) -> PreferenceOutput:
    """ORPO (reference-free): ``NLL(y_w) - λ log σ(log odds(y_w) - log odds(y_l))``.

    Its implicit "rewards" are the per-token averaged log-probabilities themselves (ORPO has no β).
    """
    losses, _ = orpo_loss(x.chosen, x.rejected, x.chosen_nll, lam=orpo_lambda)
    return losses, x.chosen.detach(), x.rejected.detach()


#: alignx's own preference losses, registered by :mod:`alignx.builtins`
# module-level names, so the registry can name each one as "alignx.losses.dpo_family:<NAME>" and
# import this module (and torch) only when a DPO-family loss is used
SIGMOID = PreferenceLoss("sigmoid", sigmoid)
CDPO = PreferenceLoss("cdpo", cdpo)
ROBUST = PreferenceLoss("robust", robust)
HINGE = PreferenceLoss("hinge", hinge)
IPO = PreferenceLoss("ipo", ipo, length_normalised=True)
SIMPO = PreferenceLoss("simpo", simpo, needs_reference=False, length_normalised=True)
ORPO = PreferenceLoss("orpo", orpo, needs_reference=False, length_normalised=True, needs_nll=True)
BUILTIN_PREFERENCE_LOSSES: tuple[PreferenceLoss, ...] = (SIGMOID, CDPO, ROBUST, HINGE, IPO, SIMPO, ORPO)
