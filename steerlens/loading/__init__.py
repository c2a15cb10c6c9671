"""Loading models: the embedded SmolLM2 (from its GGUF, converted once into a content-addressed
cache), a local Hugging Face folder, any GGUF file, or a hub name where the hub is reachable.

Example:
    >>> from steerlens.loading import load_model
    >>> model = load_model()  # doctest: +SKIP
"""

from steerlens.loading.cache import cache_root
from steerlens.loading.model import (
    EMBEDDED_MODEL_ID,
    load_embedded_model,
    load_gguf_model,
    load_local_model,
    load_model,
)

__all__ = [
    "EMBEDDED_MODEL_ID",
    "cache_root",
    "load_embedded_model",
    "load_gguf_model",
    "load_local_model",
    "load_model",
]
