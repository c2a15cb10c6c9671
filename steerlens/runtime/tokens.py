"""Text to tokens and back: encoding (never a BOS of its own), decoding, chat formatting, and
the tokens of a completion that follows a prompt."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from steerlens.errors import AnswerTokenError, InputError, ModelError, SpecError
from steerlens.runtime.model import tokenizer


def encode(model: Any, text: str, *, bos: bool = False) -> list[int]:
    """Tokenise ``text``: exactly as written, or with the model's BOS token in front.

    The BOS rule, the same wherever steerlens tokenises text: with ``bos=False`` (the default)
    no BOS or other special token is added, since chat prompts carry their own start tokens and
    a second one changes the model's output; with ``bos=True`` the tokenizer's BOS token is put
    in front unless the text already starts with it (a chat template that opens with it never
    gets a second one). ``bos=True`` reproduces what ``tokenizer(text)`` gives by default on
    models whose tokenizer prepends a BOS (SmolLM2, Llama, Gemma), as steering-vectors and
    repeng tokenise.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> decode(model, encode(model, "the cat"))
        'the cat'
        >>> encode(model, "the cat", bos=True) == model.tokenizer("the cat").input_ids
        True
    """
    ids = list(tokenizer(model)(text, add_special_tokens=False)["input_ids"])
    if bos:
        bos_id = tokenizer(model).bos_token_id
        if bos_id is None:
            raise ModelError(
                "bos=True but this model's tokenizer has no BOS token; pass bos=False."
            )
        if not ids or ids[0] != bos_id:
            ids = [int(bos_id), *ids]
    return ids


def decode(
    model: Any, ids: Sequence[int] | torch.Tensor, *, skip_special_tokens: bool = True
) -> str:
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    return str(tokenizer(model).decode(list(ids), skip_special_tokens=skip_special_tokens))


def chat_prompt(model: Any, user_message: str, *, system: str | None = None) -> str:
    """Format one user message with the model's chat template, ready for the answer.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> chat_prompt(tiny_model(), "Hi")
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    tok = tokenizer(model)
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages.append({"role": "user", "content": user_message})
    if not has_chat_template(model):
        raise ModelError(
            "this model's tokenizer has no chat template, so chat=True cannot format prompts; "
            "pass chat=False and give the full prompt text."
        )
    formatted = str(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    # A message that already holds the template's own special tokens was formatted before:
    # templating it again nests one chat inside another.
    marker = next((t for t in _template_markers(tok) if t in user_message), None)
    if marker is not None:
        raise InputError(
            f"the prompt {user_message[:60]!r} already holds the chat template's {marker!r}, "
            "so it looks chat-formatted; pass chat=False to use it as written, or pass the "
            "bare user message."
        )
    return formatted


def _template_markers(tok: Any) -> list[str]:
    """The tokenizer's special tokens that its chat template writes around a message."""
    probe = str(
        tok.apply_chat_template(
            [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
        )
    )
    return [t for t in getattr(tok, "all_special_tokens", []) if t and t in probe]


def chat_message(model: Any, prompt: str) -> str | None:
    """The user's message inside a prompt that the model's chat template formatted (with any
    system prompt), or ``None`` when ``prompt`` is not one: what a reader wants shown.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> chat_message(model, chat_prompt(model, "Hi", system="Be brief."))
        'Hi'
        >>> chat_message(model, "Hi") is None
        True
    """
    tok = tokenizer(model)
    if getattr(tok, "chat_template", None) is None:
        return None
    sentinel = "\x00steerlens\x00"
    probe = str(
        tok.apply_chat_template(
            [{"role": "user", "content": sentinel}], tokenize=False, add_generation_prompt=True
        )
    )
    head, _, tail = probe.partition(sentinel)
    # The user turn's own header: what the template writes after its last special token.
    starts = [head.rfind(t) for t in _template_markers(tok)]
    header = head[max(starts, default=0) :] if head else ""
    if not header or not prompt.endswith(tail) or header not in prompt:
        return None
    message = prompt[prompt.rfind(header) + len(header) : len(prompt) - len(tail)]
    return message or None


def check_prompts(prompts: str | Sequence[str]) -> list[str]:
    """A list of non-empty prompts, or a clear error."""
    if isinstance(prompts, (bytes, bytearray)) or prompts is None:
        raise InputError(
            f"prompts must be a str or a list of str, got {type(prompts).__name__}; "
            + ("decode the bytes first." if prompts is not None else "pass some text.")
        )
    if isinstance(prompts, Mapping) or not isinstance(prompts, (str, Iterable)):
        raise InputError(
            f"prompts must be a str or a list of str, got {type(prompts).__name__}; pass "
            "list(...) of your prompts."
        )
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not items:
        raise InputError("the prompt list is empty; pass at least one prompt.")
    for i, p in enumerate(items):
        if not isinstance(p, str):
            raise InputError(
                f"prompt {i} is a {type(p).__name__} ({p!r:.40}), not a str; pass text "
                "(decode bytes first)."
            )
        if not p.strip():
            raise InputError(f"prompt {i} is empty; pass some text to generate from.")
    return items


def has_chat_template(model: Any) -> bool:
    """Whether the model's tokenizer has a chat template.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> has_chat_template(tiny_model())
        True
    """
    return getattr(tokenizer(model), "chat_template", None) is not None


def uses_chat(model: Any, chat: bool | None) -> bool:
    """The chat rule, the same in every steerlens function: ``chat=True`` formats prompts as
    user messages in the model's chat template, ``chat=False`` uses them as written, and
    ``chat=None`` (every function's default) formats them when the model has a chat template.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> uses_chat(tiny_model(), None), uses_chat(tiny_model(), False)
        (True, False)
    """
    if chat is None:
        return has_chat_template(model)
    if not isinstance(chat, bool):
        raise InputError(
            f"chat must be True, False or None (the model's chat template if it has one), "
            f"got {chat!r:.60} ({type(chat).__name__})."
        )
    return chat


def format_prompts(
    model: Any, prompts: Sequence[str], *, chat: bool | None = None, system: str | None = None
) -> list[str]:
    """The prompts as the model sees them, by the chat rule (`uses_chat`): user messages in the
    chat template with ``system`` as the system message, or as written (``system`` must then
    be ``None``).

    Example:
        >>> from steerlens.testing import tiny_model
        >>> format_prompts(tiny_model(), ["Hi"])
        ['<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n']
        >>> format_prompts(tiny_model(), ["Hi"], chat=False)
        ['Hi']
    """
    if not uses_chat(model, chat):
        if system is not None:
            raise InputError(
                "system= is only used with chat formatting (it becomes the chat's system "
                + (
                    "message); pass chat=True or drop system=."
                    if chat is False
                    else "message), and this model has no chat template; drop system=."
                )
            )
        return list(prompts)
    if system is not None and not isinstance(system, str):
        raise InputError(
            f"system must be a str (the chat's system message) or None, got {system!r:.60} "
            f"({type(system).__name__})."
        )
    return [chat_prompt(model, p, system=system) for p in prompts]


def completion_tokens(
    model: Any,
    prompt_tokens: list[int],
    prompt: str,
    completion: str,
    *,
    label: str = "completion",
    where: str = "its prompt",
) -> tuple[list[int], bool]:
    """The tokens of ``completion`` that follow ``prompt``, and whether the boundary merged.

    A completion is scored on exactly the tokens that follow the prompt. When tokenising
    ``prompt + completion`` jointly merges tokens across the boundary, the completion is
    tokenised on its own and a warning says so. A completion with no tokens is refused.
    ``label`` and ``where`` name the completion and its prompt in the messages.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> model = tiny_model()
        >>> ids, merged = completion_tokens(model, encode(model, "a"), "a", " cat")
        >>> decode(model, ids), merged
        (' cat', False)
    """
    # prompt_tokens may carry a BOS that encode(prompt) does not (encode(..., bos=True)).
    with_bos = len(prompt_tokens) == len(encode(model, prompt)) + 1
    joint = encode(model, prompt + completion, bos=with_bos)
    n = len(prompt_tokens)
    if joint[:n] == prompt_tokens and len(joint) > n:
        return joint[n:], False
    tokens = encode(model, completion)
    if not tokens:
        raise InputError(
            f"{label} {completion!r} tokenises to nothing; use a completion with at least one "
            "token."
        )
    warnings.warn(
        f"completion {completion!r} merges with the end of {where} when tokenised jointly; "
        "scoring it tokenised on its own after the prompt's tokens.",
        stacklevel=3,
    )
    return tokens, True


def answer_token_ids(model: Any, answers: Sequence[str], *, what: str = "answer") -> list[int]:
    """The single token of each answer string, or an error that shows how it tokenises.

    Example:
        >>> from steerlens.testing import tiny_model
        >>> len(answer_token_ids(tiny_model(), ["A", "B"]))
        2
    """
    if isinstance(answers, str) or len(answers) < 2:
        raise SpecError(f"give at least two {what} strings, e.g. ('A', 'B'); got {answers!r}.")
    ids = []
    for answer in answers:
        if not isinstance(answer, str) or answer == "":
            raise AnswerTokenError(f"{what} {answer!r} is not a non-empty string.")
        tokens = encode(model, answer)
        if len(tokens) != 1:
            pieces = [decode(model, [t], skip_special_tokens=False) for t in tokens]
            raise AnswerTokenError(
                f"{what} {answer!r} is not a single token: it tokenises to {len(tokens)} tokens "
                f"{pieces} (ids {tokens}); use {what}s that are one token each (check with "
                "model.tokenizer.tokenize(...), e.g. with or without a leading space)."
            )
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise AnswerTokenError(f"the {what}s {list(answers)!r} share a token; give distinct ones.")
    return ids
