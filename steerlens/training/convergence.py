"""Did a run converge? A note for runs whose loss was still falling at the end."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

# The unconverged rule (see `convergence_note`).
TAIL_FRACTION = 0.1
STILL_FALLING = 0.05
MIN_FALL_NATS = 0.01


def convergence_note(loss_history: ArrayLike, steps: int) -> str | None:
    """A one-line note when the loss was still falling steeply at the end, else ``None``.

    The rule: over the last 10% of the updates (at least one), the total loss (summed over
    completions, in nats) fell by more than 5% of its fall over the whole run, and by more than
    0.01 nats. A run that converges geometrically spends far less of its fall at the end; one
    whose loss is still falling about linearly spends about 10% there.

    Args:
        loss_history: ``[evaluations, completions]`` losses in nats (``OptimizeResult``'s).
        steps: the number of updates made (for the message).

    Example:
        >>> convergence_note([[4.0], [3.0], [2.0], [1.0]], 3) is not None
        True
        >>> convergence_note([[4.0], [1.0], [0.999], [0.998]], 3) is None
        True
    """
    losses = np.asarray(loss_history, dtype=float)
    totals = losses.sum(axis=1) if losses.ndim == 2 else losses.reshape(-1)
    updates = len(totals) - 1
    if updates < 1 or not np.isfinite(totals).all():
        return None
    window = max(1, round(TAIL_FRACTION * updates))
    recent = float(totals[-1 - window] - totals[-1])
    overall = float(totals[0] - totals[-1])
    if overall <= 0 or recent <= MIN_FALL_NATS or recent <= STILL_FALLING * overall:
        return None
    return (
        f"note: the loss was still falling at the end ({recent:.3g} nats, {recent / overall:.0%}"
        f" of the run's fall, in the last {window} of {steps} steps); more --max-steps or a "
        "larger --lr may give a better vector."
    )


# The norm-cap rule (see `norm_cap_note`): the norm this close to the cap counts as "at" it,
# and a completion loss above this many nats (probability below about 14%) as "high".
AT_CAP = 0.99
HIGH_LOSS_NATS = 2.0


def norm_cap_note(loss_history: ArrayLike, steps: int, norm: float, cap: float) -> str | None:
    """A one-line note when a run plateaued at its norm cap with a high loss, else ``None``.

    The rule: the vector's norm is within 1% of ``cap``, the mean final loss per completion
    is above 2 nats, and the loss was no longer falling steeply (`convergence_note` has
    nothing to say), so the cap, not the step budget, is what held the loss up.

    Args:
        loss_history: ``[evaluations, completions]`` losses in nats (``OptimizeResult``'s).
        steps: the number of updates made.
        norm: the vector's norm.
        cap: the norm cap it was trained under.

    Example:
        >>> norm_cap_note([[9.0], [6.0], [5.9], [5.9]], 3, norm=40.0, cap=40.0) is not None
        True
        >>> norm_cap_note([[9.0], [6.0], [5.9], [5.9]], 3, norm=12.0, cap=40.0) is None
        True
    """
    losses = np.asarray(loss_history, dtype=float)
    final = losses[-1].reshape(-1)
    if cap <= 0 or norm < AT_CAP * cap or not np.isfinite(final).all():
        return None
    mean = float(final.mean())
    if mean <= HIGH_LOSS_NATS or convergence_note(loss_history, steps) is not None:
        return None
    return (
        f"note: the vector ended at the norm cap ({cap:g}) with the loss still high ({mean:.3g} "
        f"nats per completion, probability about {np.exp(-mean):.1%}): the cap is holding it "
        "back. A larger --norm-cap, another --layer, or a shorter completion may give a better "
        "vector."
    )
