"""The paper's evaluation framework (METHOD.md, "Evaluation framework").

- `completion_logprobs`: log-probabilities of any completions under any steering.
- `beam_search`: the ``k`` most likely ``n``-token continuations under steering.
- `behavior_change_rates`: how often a vector flips multiple-choice answers (Poser table).
- `success_rate` with `StringMatchJudge` / `ModelJudge`: behavior rates
  of steered generations, with a Wilson interval (`wilson_interval`).
- `coherence`, `reply_nll`, `distinct_n`, `loop_rate`, `side_effect_kl`: whether steered
  replies stay fluent and other prompts stay untouched, each with an interval.
- `mean_surprisal`, `compare_samples`, `compare_contexts`,
  `information_complexity`: base-model surprisal (section 2.2).
- `next_token_logprobs`, `propensities`, `completion_logprobs_many`, `next_token_kl`,
  `rollout_kl`: many steerings at once, every ``(steering, prompt)`` pair a row of shared
  batches.
- `PromptScorer`: fixed prompts under many steerings of one position rule, with what no
  steering changes (frozen prefixes, lower blocks) computed once.

Every result is a small frozen dataclass that prints as a short table and has ``to_dict()``.

Example:
    >>> from steerlens.testing import tiny_model
    >>> from steerlens.evaluation import completion_logprobs
    >>> completion_logprobs(tiny_model(), "the cat", " sat").totals.shape
    torch.Size([1, 1])
"""

from steerlens.errors import AnswerTokenError, ContextWindowError, TemplateError
from steerlens.evaluation.beam import BeamHypothesis, BeamSearchResult, beam_search
from steerlens.evaluation.coherence import (
    CoherenceReport,
    MetricResult,
    coherence,
    distinct_n,
    loop_rate,
    reply_nll,
    side_effect_kl,
)
from steerlens.evaluation.judges import (
    ModelJudge,
    RefusalJudge,
    StringMatchJudge,
    answers_in_french,
    named_judge,
    success_rate,
)
from steerlens.evaluation.logprobs import CompletionLogprobs, completion_logprobs
from steerlens.evaluation.many import (
    completion_logprobs_many,
    next_token_kl,
    next_token_logprobs,
    propensities,
    rollout_kl,
)
from steerlens.evaluation.rates import (
    AnswerChoices,
    BehaviorRates,
    RateResult,
    behavior_change_rates,
    wilson_interval,
)
from steerlens.evaluation.scorer import PromptScorer
from steerlens.evaluation.surprisal import (
    InformationComplexity,
    SurprisalComparison,
    SurprisalResult,
    compare_contexts,
    compare_samples,
    information_complexity,
    mean_surprisal,
)

__all__ = [
    "AnswerChoices",
    "AnswerTokenError",
    "BeamHypothesis",
    "BeamSearchResult",
    "BehaviorRates",
    "CoherenceReport",
    "CompletionLogprobs",
    "ContextWindowError",
    "InformationComplexity",
    "MetricResult",
    "ModelJudge",
    "PromptScorer",
    "RateResult",
    "RefusalJudge",
    "StringMatchJudge",
    "SurprisalComparison",
    "SurprisalResult",
    "TemplateError",
    "answers_in_french",
    "beam_search",
    "behavior_change_rates",
    "coherence",
    "compare_contexts",
    "compare_samples",
    "completion_logprobs",
    "completion_logprobs_many",
    "distinct_n",
    "information_complexity",
    "loop_rate",
    "mean_surprisal",
    "named_judge",
    "next_token_kl",
    "next_token_logprobs",
    "propensities",
    "reply_nll",
    "rollout_kl",
    "side_effect_kl",
    "success_rate",
    "wilson_interval",
]
