"""How far apart two computations that add the same terms in another order may be: the suite's
one rule, derived rather than tuned.

Rows batched or alone, the packed engine or the hooked one, a KV cache or none, another batch
size: each adds the same float terms in another order, and which order a CPU's or GPU's kernel
picks differs between Intel, AMD and CUDA. So a bound measured on one machine is not a property
of the code; these are derived from the computation.

Sums. Any order of a float sum of n terms is within (n - 1) u sum |x_i| of the exact sum, with u
the unit roundoff (``U32 = 2**-24`` in float32, ``U64 = 2**-53`` in float64); two orders are
within twice that.

Log-probabilities (`logprob_bound`). A float32 softmax over n terms is within (n + 3) u of the
exact weights, relatively (n - 1 for the sum, one each for the exponential, the division and the
cast); a dot product of n terms is within n u of sum |x_i y_i|. So each logit of either order is
within (n + 3) u L of the exact one, with n the longest reduction in precision u and L the
largest |logit|, provided the layers do not amplify a relative error of their residual stream;
two orders differ by twice that, and a log-softmax at most doubles the largest move of its
inputs: ``4 (n + 3) u max(L, 1)``. The final RMSNorm with tied embeddings keeps every logit of
`steerlens.testing.tiny_model` below ``TINY_LOGITS`` = 2 however strongly a row is steered
(`check_logits` checks the premise). In a float32 tiny model the longest reduction is the
vocabulary (``TINY_VOCAB`` = 265 > d_mlp = 128), so ``TINY32`` is about 1.3e-4. In a float64
tiny model only the Bridge's attention softmax rounds in float32 (n = the keys of the longest
row); every other reduction adds below 1e-12.

Amplification. The layers amplify a relative error of their input a little (`rounding_gain`:
1.7 for tiny_model, initialiser std 0.02; `tests/test_tolerances.py` checks it stays below
``TINY_GAIN`` = 2). Only the final log-softmax sums the whole vocabulary, and it is not
amplified; inside the layers the longest reduction is d_mlp = 128, and 2 (128 + 3) < 265 + 3, so
the vocabulary's term covers the amplified ones. The other families' tiny models
(`tiny_family_model`, std 0.2, ten times the usual, so that windows and soft-caps bind) amplify
up to 16x and reach logits of 7.4; their bound (`family_bound`) is ``FAMILY_GAIN`` = 32 times the
plain one at the largest logit seen, and the family tests check each model's gain is below it.

A loss that averages log-probabilities, or is the log of one minus a
probability below 1/2, inherits the bound; a total of k of them, k times it.

Adam's coordinates have no such bound. Adam divides each coordinate's step by that coordinate's
own gradient scale, so where a gradient is as small as the rounding of a d_model-wide sum, the
summation order decides that coordinate's step (up to the learning rate, whatever the rounding).
Trained vectors are compared through what they do (their losses, first row derived above) and
their direction (`assert_same_direction`), never coordinate by coordinate.

A bound that cannot fail checks nothing: a real error (a row under another row's steering, a
position shifted by one, another job's seed) moves log-probabilities by more than ``REAL``,
which the tests show next to each bound.

Example:
    >>> round(TINY32, 6), round(logprob_bound(32), 7)
    (0.000128, 1.67e-05)
"""

from __future__ import annotations

import math

import numpy as np
import torch

U32 = 2.0**-24  # float32 unit roundoff
U64 = 2.0**-53  # float64 unit roundoff
TINY_VOCAB = 265  # the tiny tokenizer's vocabulary: the tiny models' longest reduction
TINY_LOGITS = 2.0  # every logit of tiny_model is below this (module docstring)
TINY_D_MLP = 128  # tiny_model's longest reduction inside its layers
REAL = 1e-3  # the least move of a log-probability that a real error makes in these tests
TINY_GAIN = 2.0  # tiny_model amplifies a relative error of its residual by less (module docstring)
FAMILY_GAIN = 32.0  # the same for every tiny_family_model (measured up to 16)


def logprob_bound(n_terms: int, largest_logit: float = TINY_LOGITS, u: float = U32) -> float:
    """Log-probabilities computed in two orders whose longest reduction in precision ``u`` has
    ``n_terms`` terms, of logits below ``largest_logit``: ``4 (n + 3) u max(L, 1)``."""
    return 4 * (n_terms + 3) * u * max(largest_logit, 1.0)


TINY32 = logprob_bound(TINY_VOCAB)  # every reduction of tiny_model in float32


def family_bound(largest_logit: float) -> float:
    """Log-probabilities of a float32 `tiny_family_model` computed in two orders, logits below
    ``largest_logit``: the plain bound times the families' amplification ``FAMILY_GAIN``."""
    return FAMILY_GAIN * logprob_bound(TINY_VOCAB, largest_logit)


def activation_bound(largest: float, n_terms: int = TINY_D_MLP, u: float = U32) -> float:
    """How far one residual-stream component of a float32 tiny model may be, computed in two
    orders (batched or alone, padded or not): as for the logits (module docstring), each order
    is within ``(n + 3) u`` of the largest magnitude ``largest`` it produces, with n the longest
    reduction inside the layers (d_mlp = 128), amplified by the layers by less than
    ``TINY_GAIN``; two orders differ by twice that: ``2 (n + 3) u TINY_GAIN largest``."""
    return 2 * (n_terms + 3) * u * TINY_GAIN * largest


def loss_bounds(model, dps, positions=None):
    """How far two engines' losses of ``dps`` may be apart, one per completion: a loss sums its
    tokens' log-probabilities (or their log(1 - p)), each within ``TINY32`` whatever order the
    engines add in (tests/tolerances.py), so a completion of k tokens gets ``k * TINY32``."""
    from steerlens.training.data import tokenize

    return np.array(
        [len(c.tokens) * TINY32 for t in tokenize(model, dps, positions) for c in t.completions]
    )


def assert_losses_close(got, want, bounds):
    """Every loss within its bound (`loss_bounds`)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    gap = np.abs(got - want)
    assert np.all(gap <= bounds), (gap.max(), (gap / bounds).max())


def kl_mean_bound(logp: torch.Tensor, logq: torch.Tensor) -> float:
    """How far two float32 computations of a mean of ``KL(p || q)`` over the rows of ``logp``
    and ``logq`` (``[rows, vocab]``, of a float32 tiny model, one computation's) may be, both
    computed in another order. With a = log p and b = log q each within d = TINY32 and
    M = max |a - b| (measured here): ``sum p (a - b)`` moves by at most 2 d e^d through a and b
    (the weights sum to 1 and grow by e^d at most), by (e^d - 1) M through the weights
    p = exp(a), and by 2 (V + 2) u M through the float32 sum over the vocabulary in two orders
    with each term's own rounding. A mean over rows keeps the bound."""
    return kl_gap(float((logp.double() - logq.double()).abs().max()), logp.shape[-1])


def kl_gap(m: float, vocab: int = TINY_VOCAB, d: float = TINY32, u: float = U32) -> float:
    """`kl_mean_bound` for log-probabilities at most ``m`` apart over ``vocab`` tokens, each
    within ``d`` of the other computation's, the KL's sum in precision ``u``."""
    return 2 * d * math.exp(d) + math.expm1(d) * m + 2 * (vocab + 2) * u * m


# Any mean KL between two float32 tiny-model distributions: logits below TINY_LOGITS, so
# log-probabilities are at most 2 L (the logits) + 2 L (their log-sum-exps) = 4 L apart.
KL_TINY32 = kl_gap(4 * TINY_LOGITS)


def kl_bound(model, prompts, steering) -> float:
    """`kl_mean_bound` of the mean ``KL(unsteered || steered)`` of the next token after
    ``prompts`` (a float32 tiny model), rows packed differently."""
    from steerlens import runtime, steer

    rows = [runtime.encode(model, t) for t in prompts]
    with torch.no_grad():
        a = runtime.last_logits(model, rows).log_softmax(-1)
        with steer(model, steering):
            b = runtime.last_logits(model, rows).log_softmax(-1)
    return kl_mean_bound(a, b)


def kl_total_bound(target_logprobs: torch.Tensor, logq: torch.Tensor) -> float:
    """How far two float32 computations of ``sum_k KL(p_k || q_k)`` may be, with the same
    targets ``a = target_logprobs`` (``p = exp(a)``) and ``b = logq`` (a float32 tiny model's,
    in any order) computed in two orders, each within ``d = TINY32`` of ``b`` and of each other.
    Moving b by d moves ``sum p (a - b)`` by at most ``d sum p``; each order's own float32
    rounding of the m V terms (an exponential, a difference, a product) and of their sum, in
    whatever grouping (per token, then over tokens), is within ``(m V + 3) u sum p |a - b'|``
    with ``|a - b'| <= |a - b| + d``: ``d sum p + 2 (m V + 3) u sum p (|a - b| + d)``."""
    a, b = target_logprobs.double(), logq.double()
    p = a.exp()
    d = TINY32
    return float(d * p.sum() + 2 * (p.numel() + 3) * U32 * (p * ((a - b).abs() + d)).sum())


def kl_floor(target_logprobs: torch.Tensor, logq: torch.Tensor, d: float = TINY32) -> torch.Tensor:
    """Per row, the least value a float32 ``KL(p || q') = sum p (a - b')`` can take, with
    ``a = target_logprobs``, ``p = exp(a)`` and ``b'`` within ``d`` of ``b = logq`` (another
    order's; ``d = 0`` for the same). Exactly, ``p log(p / q') >= p - q'`` term by term (Gibbs),
    so the sum is at least ``sum p - sum q' >= sum p - e^d sum q`` (not 0: a rounded
    log-softmax sums to one only up to its rounding); the float32 rounding of the V terms and
    their sum moves it by at most ``(V + 3) u sum p (|a - b| + d)``."""
    a, b = target_logprobs.double(), logq.double()
    p = a.exp()
    rounding = (a.shape[-1] + 3) * U32 * (p * ((a - b).abs() + d)).sum(-1)
    return p.sum(-1) - math.exp(d) * b.exp().sum(-1) - rounding


def rescale_bound(d_model: int, u: float = U32) -> float:
    """Relative error of the norm of a vector rescaled to norm c in precision ``u``
    (``v * (c / |v|)``, ``v / |v|``, ``v / |v| * c``) and measured again: each norm (d squares,
    their sum, a square root) within ``(d / 2 + 1) u``, and one rounding each for the quotient,
    the products and c itself: ``(d + 5) u``."""
    return (d_model + 5) * u


def rounding_gain(model: torch.nn.Module, tokens: torch.Tensor, eps: float = 1e-7) -> float:
    """How much ``model`` amplifies a relative error of its residual stream: the largest move of
    its logits, over ``eps`` times the largest logit, when every layer's input is scaled by
    ``1 ± eps`` (signs drawn at random, as rounding's are), one layer at a time. ``model`` is
    in float64, so that the measurement's own rounding is negligible."""
    from steerlens import runtime

    assert runtime.dtype(model) == torch.float64, "measure the gain of a float64 copy"
    gain = 0.0
    with torch.no_grad():
        base = model(tokens)
        for layer in range(model.cfg.n_layers):
            gen = torch.Generator().manual_seed(layer)

            def nudge(x, hook, gen=gen):
                return x * (1 + eps * torch.randn(x.shape, generator=gen, dtype=x.dtype).sign())

            with model.hooks(fwd_hooks=[(runtime.hook_name(layer), nudge)]):
                moved = float((model(tokens) - base).abs().max())
            gain = max(gain, moved / (eps * float(base.abs().max())))
    return gain


def check_logits(logits: torch.Tensor, largest: float = TINY_LOGITS) -> None:
    """The premise of `logprob_bound`: every logit below ``largest``."""
    seen = float(logits.detach().abs().max())
    assert seen < largest, f"logits up to {seen:.3g}, not below {largest}: the bound does not hold"


def assert_same_direction(a, b, other, *, cosine: float = 0.999) -> None:
    """Two trainings of one job point the same way, and ``other`` (another job's vector) does not,
    so the check can fail. Coordinates are not compared (module docstring: Adam's amplification);
    the losses carry the tight comparison, this one catches a vector from another job."""
    a, b, other = (torch.as_tensor(t).double().flatten() for t in (a, b, other))
    cos = torch.nn.functional.cosine_similarity
    assert float(cos(a, b, dim=0)) > cosine, float(cos(a, b, dim=0))
    assert float(cos(other, b, dim=0)) < cosine, "another job's vector passes: the check is void"


def product_bound(a: torch.Tensor, b: torch.Tensor, u: float = U32) -> torch.Tensor:
    """Per entry, how far a float ``a @ b`` (inner dimension n, inputs already in precision
    ``u``) may be from the exact product: each entry is a dot product of n terms, within
    ``n u sum_k |a_ik b_kj|`` in any order (module docstring); two orders, twice that."""
    n = a.shape[-1]
    return n * u * (a.double().abs() @ b.double().abs())


def cosine_bound(d_model: int, u: float = U64) -> float:
    """How far a float cosine of two ``d_model``-vectors may be from the exact one, whichever way
    it is grouped (the dot product over the product of the norms, or unit vectors first): the
    dot product within ``d u sum |a_i b_i| <= d u |a| |b|`` (Cauchy-Schwarz), each norm within
    ``(d / 2 + 1) u``, and a rounding each for up to three products and quotients:
    ``(2 d + 5) u``; two computations, twice that."""
    return (2 * d_model + 5) * u


def change_bound(n_positions: int = 1) -> float:
    """How far two orders' mean over ``n_positions`` of a float32 tiny model's steered minus
    unsteered log-probability may be: each log-probability within ``TINY32`` of the other
    order's, so each change within ``2 TINY32``; a change is at most ``4 L`` (``KL_TINY32``'s
    premise), so its subtraction rounds by ``4 L u``, and a float32 mean of m of them by
    ``(m + 1) 4 L u`` (its sum and its division), in each order:
    ``2 TINY32 + 2 (m + 2) 4 L u``."""
    return 2 * TINY32 + 2 * (n_positions + 2) * 4 * TINY_LOGITS * U32


def means_bound(acts: torch.Tensor, n: int) -> float:
    """How far a float32 mean of ``n`` activations of a tiny model (``acts``: the activations,
    for their largest magnitude) may be when it is computed in two orders (padded batches of
    another size): each activation within `activation_bound`, and the mean's own sum of n terms
    and division within ``(n + 1) u`` of the largest magnitude, in each order."""
    largest = float(acts.abs().max())
    return activation_bound(largest) + 2 * (n + 1) * U32 * largest
