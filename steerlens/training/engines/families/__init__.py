"""One packed-engine adapter per model family, registered by Hugging Face architecture name.

A new family is a new file here: a `FamilyAdapter` subclass with ``family`` and
``architectures``, decorated with `register`, and imported below.

Example:
    >>> from steerlens.testing import tiny_model
    >>> type(adapter_for(tiny_model())).__name__
    'LlamaAdapter'
"""

from steerlens.training.engines.families import (  # noqa: F401  (each module registers its adapter)
    gemma,
    gemma2,
    gemma3,
    gpt2,
    gpt_neox,
    llama,
    mistral,
    olmo2,
    phi3,
    qwen2,
    qwen3,
)
from steerlens.training.engines.families.base import (
    FamilyAdapter,
    PositionEmbeddings,
    RotaryDecoder,
    adapter_for,
    architecture,
    register,
    registered,
    soft_cap,
)

__all__ = [
    "FamilyAdapter",
    "PositionEmbeddings",
    "RotaryDecoder",
    "adapter_for",
    "architecture",
    "register",
    "registered",
    "soft_cap",
]
