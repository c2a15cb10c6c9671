"""Reentrant steering (Dunefsky & Cohan, 2025, Algorithm 1): distil an "invasive" early-layer
intervention into a plain steering vector at a later layer.

1. Optimize an invasive intervention at ``early_layer`` on one datapoint: a steering vector
   (`optimize_vector`), or a rank-one matrix ``V = v u^T`` with
   ``||v|| = ||u|| = 1`` applied as ``x + V x = x + (u . x) v``.
2. Greedily decode the invasive run's continuation ``y'`` (``m`` tokens) of the prompt ``x``,
   run the steered model on ``concat(x, y')`` and record the next-token distributions ``p_k``
   at the ``m`` positions that predict the tokens of ``y'``.
3. Optimize a vector ``v'`` at ``late_layer`` (added, ``x + v'``) to minimise
   ``sum_k KL(p_k || P(. | x, y'_<k; v'))``, under the constraints of ``late_config`` (the paper
   capped ``||v'||`` at 40 at layer 10 of Gemma-2-2B).

All KLs are in nats and use coldness 1 (the model's own softmax); ``p_k`` are float32.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from steerlens import runtime
from steerlens.errors import InputError, LayerError, NonFiniteError, SpecError
from steerlens.steering.interventions import Add, Clamp
from steerlens.steering.positions import as_positions
from steerlens.steering.steer import Steering, steer
from steerlens.steering.vector import SteeringVector
from steerlens.training.config import OptimizeConfig, OptimizeResult, with_overrides
from steerlens.training.data import Datapoint, TokenizedCompletion, TokenizedDatapoint
from steerlens.training.kinds import AddSteering, ClampSteering, RankOneSteering
from steerlens.training.objectives import KLObjective
from steerlens.training.optimize import optimize_vector

InvasiveKind = Literal["vector", "rank_one"]
_KINDS = ("vector", "rank_one")


class RankOneResult(OptimizeResult):
    """The rank-one invasive intervention ``x + (u . x) v`` of reentrant steering: an
    `OptimizeResult` whose ``vector`` holds it as an affine part
    (``left = v``, ``right = u``, zero bias), ready for `steerlens.steer` /
    `steerlens.generate`.

    No scale is learned: ``u`` and ``v`` are renormalised to unit length after every Adam step,
    so the size of the edit at a token is ``|u . x|`` (its residual's component along ``u``).
    """

    @property
    def layer(self) -> int:
        return self.vector.layers[0]

    @property
    def v(self) -> Float[Tensor, " d_model"]:
        """The output direction (unit norm)."""
        return self.vector.affine[self.layer][0][0]

    @property
    def u(self) -> Float[Tensor, " d_model"]:
        """The input direction (unit norm)."""
        return self.vector.affine[self.layer][1][0]

    def __repr__(self) -> str:
        first, last = float(self.loss_history[0].sum()), float(self.loss_history[-1].sum())
        return (
            f"RankOneResult(layer={self.layer}, steps={self.steps}, loss {first:.4g} -> "
            f"{last:.4g} nats, stop={self.stop_reason!r}, {self.wall_time_s:.1f} s, "
            f"engine={self.engine!r})"
        )


@dataclass(frozen=True, eq=False)
class ReentrantResult:
    """What `reentrant_steering` returns.

    Attributes:
        early: the invasive intervention's result (``OptimizeResult`` or ``RankOneResult``).
        continuation: the invasive run's greedy continuation ``y'`` as text (special tokens
            skipped, as `steerlens.generate` returns it).
        continuation_tokens: the token ids of ``y'`` (what stage 3 is scored on).
        late_vector: ``v'`` at ``late_layer``, with provenance (method ``"reentrant"``).
        kl_history: ``[evals]`` total KL ``sum_k KL(p_k || q_k)`` in nats; entry ``t`` is
            before update ``t`` (the last one is ``late_vector``'s).
        steps: the number of updates of ``v'``.
        stop_reason: why stage 3 stopped.
        wall_time_s: seconds for all three stages.
        target_logprobs: ``[m, vocab]`` float32 log ``p_k`` recorded in stage 2 (CPU).
        kl_per_token: ``[m]`` final ``KL(p_k || q_k)`` in nats.
        early_layer, late_layer, invasive: the settings used.
        engine: the engine of stage 3 (``"packed"`` or ``"hooked"``).
    """

    early: OptimizeResult | RankOneResult
    continuation: str
    continuation_tokens: list[int]
    late_vector: SteeringVector
    kl_history: Float[np.ndarray, " evals"]
    steps: int
    stop_reason: str
    wall_time_s: float
    target_logprobs: Float[Tensor, "m vocab"]
    kl_per_token: Float[np.ndarray, " m"]
    early_layer: int
    late_layer: int
    invasive: str
    engine: str

    @property
    def initial_kl(self) -> float:
        """The total KL (nats) at ``v'``'s start point."""
        return float(self.kl_history[0])

    @property
    def final_kl(self) -> float:
        """The total KL (nats) of the returned ``late_vector``."""
        return float(self.kl_history[-1])

    def __repr__(self) -> str:
        text = self.continuation if len(self.continuation) <= 40 else self.continuation[:37] + "..."
        return (
            f"ReentrantResult({self.invasive} at layer {self.early_layer} -> vector at layer "
            f"{self.late_layer}, continuation={text!r} ({len(self.continuation_tokens)} tokens), "
            f"KL {self.initial_kl:.4g} -> {self.final_kl:.4g} nats in {self.steps} steps, "
            f"stop={self.stop_reason!r}, norm={self.late_vector.norm():.4g}, "
            f"{self.wall_time_s:.1f} s)"
        )


def reentrant_steering(
    model: Any,
    datapoint: Datapoint,
    early_layer: int,
    late_layer: int,
    *,
    invasive: InvasiveKind = "vector",
    n_tokens: int = 20,
    early_config: OptimizeConfig | None = None,
    late_config: OptimizeConfig | None = None,
) -> ReentrantResult:
    """Reentrant steering (Algorithm 1): reproduce an invasive early-layer intervention's
    next-token distributions with a plain vector at a later layer.

    Args:
        model: a TransformerLens model.
        datapoint: the one-shot example (its prompt formatted by its ``chat``); its
            completions are what stage 1 promotes/suppresses.
        early_layer: layer of the invasive intervention (``blocks.{l}.hook_resid_pre``).
        late_layer: layer of ``v'``; must be greater than ``early_layer``.
        invasive: ``"vector"``: stage 1 is ``optimize_vector(model, datapoint, early_layer,
            early_config)`` (any of its steering kinds). ``"rank_one"``: stage 1 learns
            ``x + (u . x) v`` with ``||u|| = ||v|| = 1`` kept exact by renormalising after each
            Adam step; no scale is learned. It uses ``lr``, ``betas``, ``max_steps``, ``seed``,
            ``stop``, ``objective``, ``positions``, ``progress`` and ``fast`` of
            ``early_config`` and refuses ``init``, ``constraints``, ``output_constraint`` and a
            non-default ``kind``.
        n_tokens: ``m``, the length of the greedy continuation ``y'``. Decoding stops early
            after an end-of-turn token (kept in ``y'``) or at the model's context limit.
        early_config: settings of stage 1 (default ``OptimizeConfig()``).
        late_config: settings of stage 3 (default ``OptimizeConfig()``): ``lr``, ``betas``,
            ``max_steps``, ``seed``/``starting_norm``/``init`` (start vector), ``constraints``
            (e.g. ``NormCap(40.0)``; the norm cap is model-dependent, none by default),
            ``stop`` (on the total KL), ``positions``, ``progress``, ``fast``. Its
            ``objective`` is not used: the KL uses coldness 1. Only ``AddSteering`` and no
            ``output_constraint``.

    Returns:
        A ``ReentrantResult``: the stage-1 result, ``y'`` (text and token ids), ``v'`` as a
        ``SteeringVector`` with provenance, the KL history (nats), steps, stop reason, time.

    Raises:
        LayerError: a layer out of range, or ``early_layer >= late_layer``.
        SpecError: ``n_tokens < 1``, an unknown ``invasive`` kind, or an unsupported setting.
        NonFiniteError: the KL is NaN/inf before any update.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> from steerlens import Datapoint, NormCap, OptimizeConfig
        >>> model = tiny_model()
        >>> res = reentrant_steering(
        ...     model, Datapoint("the cat", promote=[" in the"]), early_layer=0, late_layer=1,
        ...     n_tokens=4, early_config=OptimizeConfig(lr=0.1, max_steps=5),
        ...     late_config=OptimizeConfig(lr=0.1, max_steps=10, constraints=(NormCap(5.0),)))
        >>> len(res.continuation_tokens), res.late_vector.provenance["method"]
        (4, 'reentrant')
        >>> bool(res.final_kl < res.initial_kl), res.late_vector.norm() <= 5.0 + 1e-5
        (True, True)
    """
    t0 = time.perf_counter()
    early_config = with_overrides(OptimizeConfig() if early_config is None else early_config, {})
    late_config = with_overrides(OptimizeConfig() if late_config is None else late_config, {})
    _check_inputs(model, datapoint, early_layer, late_layer, invasive, n_tokens, late_config)
    datapoint = datapoint.for_model(model)

    # Stage 1: the invasive intervention.
    if invasive == "rank_one":
        _check_rank_one_config(early_config)
        early_config = dataclasses.replace(early_config, kind=RankOneSteering())
    early = optimize_vector(model, datapoint, early_layer, early_config)
    if invasive == "rank_one":
        early = RankOneResult(**{f.name: getattr(early, f.name) for f in dataclasses.fields(early)})
    early_positions = as_positions(
        datapoint.positions if datapoint.positions is not None else early_config.positions
    )
    # Exactly as stage 1's loss applied it (-strength on a negated datapoint).
    steering = Steering(
        early.vector,
        strength=-early_config.kind.strength if datapoint.negate else early_config.kind.strength,
        positions=early_positions,
        kind=Clamp if isinstance(early_config.kind, ClampSteering) else Add,
    )

    # Stage 2: y' and the distributions p_k.
    prompt_tokens = runtime.encode(model, datapoint.prompt)
    with torch.no_grad(), steer(model, steering):
        continuation_tokens = runtime.decode_tokens(
            model, [prompt_tokens], max_new_tokens=n_tokens
        )[0]
        target_logprobs = _next_token_logprobs(model, prompt_tokens, continuation_tokens)
    if not bool(torch.isfinite(target_logprobs).all()):
        raise NonFiniteError(
            "the invasive intervention's next-token distributions are NaN/inf; lower "
            "early_config.lr or check the model."
        )

    # Stage 3: v' at the late layer, minimising sum_k KL(p_k || q_k).
    late_positions = as_positions(
        datapoint.positions if datapoint.positions is not None else late_config.positions
    )
    label = runtime.decode(model, continuation_tokens, skip_special_tokens=False) or "<empty>"
    continuation_datapoint = TokenizedDatapoint(
        Datapoint(datapoint.prompt, promote=[label], chat=False),
        prompt_tokens,
        [TokenizedCompletion(label, "promote", list(continuation_tokens), None, False)],
        late_positions,
    )
    late = optimize_vector(
        model,
        continuation_datapoint,
        late_layer,
        dataclasses.replace(late_config, objective=KLObjective(target_logprobs)),
    )
    with torch.no_grad(), steer(model, Steering(late.vector, positions=late_positions)):
        final = _next_token_logprobs(model, prompt_tokens, continuation_tokens)
    final_per_token = runtime.kl_divergence(target_logprobs, final).numpy()
    kl_history = late.loss_history[:, 0]
    continuation = runtime.decode(model, continuation_tokens)
    late_vector = dataclasses.replace(
        late.vector,
        provenance={
            "method": "reentrant",
            "early_layer": early_layer,
            "late_layer": late_layer,
            "invasive": invasive,
            "n_tokens": n_tokens,
            "continuation": continuation,
            "continuation_tokens": list(continuation_tokens),
            "datapoint": {
                "prompt": datapoint.prompt,
                "promote": list(datapoint.promote),
                "suppress": list(datapoint.suppress),
                "negate": datapoint.negate,
                "positions": early_positions.to_dict(),
            },
            "late_positions": late_positions.to_dict(),
            "early_final_losses": early.final_losses,
            "early_steps": early.steps,
            "early_hyperparameters": early_config.to_dict(),
            "hyperparameters": late_config.to_dict(),
            "objective": "sum_k KL(p_k || q_k), coldness 1",
            "initial_kl": float(kl_history[0]),
            "final_kl": float(kl_history[-1]),
            "kl_unit": "nats",
            "final_losses": {"kl": float(kl_history[-1])},
            "loss_unit": "nats",
            "steps": late.steps,
            "stop_reason": late.stop_reason,
        },
    )
    return ReentrantResult(
        early=early,
        continuation=continuation,
        continuation_tokens=list(continuation_tokens),
        late_vector=late_vector,
        kl_history=kl_history,
        steps=late.steps,
        stop_reason=late.stop_reason,
        wall_time_s=time.perf_counter() - t0,
        target_logprobs=target_logprobs,
        kl_per_token=final_per_token,
        early_layer=early_layer,
        late_layer=late_layer,
        invasive=invasive,
        engine=late.engine,
    )


def _next_token_logprobs(
    model: Any, prompt_tokens: list[int], continuation: list[int]
) -> Float[Tensor, "m vocab"]:
    """Float32 CPU log-probs at the ``m`` positions that predict the continuation's tokens
    (prompt's last token to the second-to-last of ``y'``), under the steering installed now."""
    dev = runtime.device(model)
    p, m = len(prompt_tokens), len(continuation)
    tokens = torch.tensor([prompt_tokens + continuation], dtype=torch.long, device=dev)
    logits = runtime.logits_at(
        model,
        tokens,
        torch.ones_like(tokens),
        torch.zeros(m, dtype=torch.long, device=dev),
        torch.arange(p - 1, p - 1 + m, device=dev),
        runtime.TokenContext.prompts(torch.tensor([p], device=dev)),
    )
    return torch.log_softmax(logits.float(), dim=-1).cpu()


# -- checks ------------------------------------------------------------------------------------


def _check_inputs(
    model: Any,
    datapoint: Datapoint,
    early_layer: int,
    late_layer: int,
    invasive: str,
    n_tokens: int,
    late_config: OptimizeConfig,
) -> None:
    if not isinstance(datapoint, Datapoint):
        raise InputError(
            f"expected one steerlens.Datapoint, got {type(datapoint).__name__}; reentrant "
            "steering works on a single example."
        )
    if invasive not in _KINDS:
        raise SpecError(f"unknown invasive kind {invasive!r}; use 'vector' or 'rank_one'.")
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise SpecError(f"n_tokens must be an int >= 1, got {n_tokens!r}.")
    runtime.check_layer(model, early_layer, what="early_layer")
    runtime.check_layer(model, late_layer, what="late_layer")
    if early_layer >= late_layer:
        raise LayerError(
            f"early_layer ({early_layer}) must be below late_layer ({late_layer}): reentrant "
            "steering distils an early intervention into a later layer; pass an early_layer "
            "smaller than late_layer."
        )
    if not isinstance(late_config.kind, AddSteering):
        raise SpecError(
            f"the late vector is added (x + v'); late_config.kind must be AddSteering(), got "
            f"{late_config.kind!r}."
        )
    if late_config.output_constraint is not None:
        raise SpecError(
            "late_config.output_constraint is not supported by reentrant steering; use a "
            "NormCap in late_config.constraints instead."
        )


def _check_rank_one_config(config: OptimizeConfig) -> None:
    if not isinstance(config.kind, AddSteering):
        raise SpecError(
            "invasive='rank_one' trains its own rank-one map, so early_config.kind cannot be "
            f"set (got {config.kind!r}); leave it at its default (or use invasive='vector')."
        )
    RankOneSteering().check(config)


__all__ = ["RankOneResult", "ReentrantResult", "reentrant_steering"]
