"""Forward engines that give the logits of every scored completion token under a steering
function; the optimizer and `steerlens.training.optimize.ObjectiveScorer` run on them.

Both engines take the tokenised datapoints of one or several *groups* (``groups[i]`` is the
group of datapoint ``i``; one group per vector when `steerlens.training.loop` trains many at
once). Each group is steered by its own function and never sees another group's tokens, so one
forward pass carries every group, and `logits` can leave out groups that are finished.

``PackedEngine`` (fast path, Hugging Face decoders under a ``TransformerBridge`` whose family has
an adapter in `steerlens.training.engines.families`: Llama, Mistral, Qwen 2/2.5, Qwen 3, Phi-3,
OLMo 2, Gemma 2, Gemma 3, GPT-2, GPT-NeoX): each group is one batch row in which its datapoints and
completions are packed into one sequence with a tree attention mask (cut to the window on
sliding-window layers), so each prompt is computed once per step and completions see only their
own prompt; the blocks below the first steered layer are run once, at construction, since they
do not depend on the vector; and the unembedding runs only at scored positions. `make_engine`
checks it against ``HookedEngine`` and falls back to it if they disagree; the verdict is kept
on the model (`steerlens.training.engines.checks`), so the check runs once per model, layer set
and kind of layout until the model changes.

``HookedEngine`` (any TransformerLens model): one batched, right-padded forward of every
``prompt + completion`` with steering hooks at ``blocks.{l}.hook_resid_pre``.
"""

from steerlens.training.engines.checks import forget_checks
from steerlens.training.engines.hooked import HookedEngine
from steerlens.training.engines.make import NoAdapterNotice, make_engine
from steerlens.training.engines.packed import LayoutKind, PackedEngine
from steerlens.training.engines.steering import SteerFn, steering_function, unsteered

__all__ = [
    "HookedEngine",
    "LayoutKind",
    "NoAdapterNotice",
    "PackedEngine",
    "SteerFn",
    "forget_checks",
    "make_engine",
    "steering_function",
    "unsteered",
]
