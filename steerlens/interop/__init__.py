"""Vectors between steerlens and other steering libraries: repeng's ``ControlVector`` and
steering-vectors' ``SteeringVector`` (llama.cpp's GGUF control vectors are read and written by
`steerlens.SteeringVector.to_gguf` / ``from_gguf``).

Example:
    >>> from steerlens.interop import to_steering_vectors  # doctest: +SKIP
"""

from steerlens.interop.libraries import (
    from_repeng,
    from_steering_vectors,
    to_repeng,
    to_steering_vectors,
)

__all__ = ["from_repeng", "from_steering_vectors", "to_repeng", "to_steering_vectors"]
