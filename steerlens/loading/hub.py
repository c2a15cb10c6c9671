"""The Hugging Face hub, used only where needed: `hub_offline` keeps a block of code from
asking it (local folders and the cache load with it off), and `hub_unreachable` tells within
seconds whether a hub name can be downloaded at all."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from steerlens.loading.messages import one_line

_OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_offline_lock = threading.RLock()


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Inside the block, nothing asks the Hugging Face hub; after it, all is as it was.

    Sets ``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE`` to ``1`` (for subprocesses started
    inside) and the hub library's offline switch, then restores exactly what was there, also
    on error. The environment is process-wide: a hub download in another thread meanwhile
    would see offline mode too.
    """
    # huggingface_hub reads the flags once, when first imported: import it before they are set
    # or it would stay offline for the rest of the process.
    from huggingface_hub import constants

    with _offline_lock:
        saved_env = {flag: os.environ.get(flag) for flag in _OFFLINE_FLAGS}
        saved_switch = constants.HF_HUB_OFFLINE
        try:
            os.environ.update(dict.fromkeys(_OFFLINE_FLAGS, "1"))
            constants.HF_HUB_OFFLINE = True
            yield
        finally:
            constants.HF_HUB_OFFLINE = saved_switch
            for flag, value in saved_env.items():
                if value is None:
                    os.environ.pop(flag, None)
                else:
                    os.environ[flag] = value


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the Hugging Face hub cannot be reached now, or ``None`` when it answers.

    One request, no retries, at most ``timeout`` seconds (name resolution included).
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    outcome: list[str | None] = []

    def probe() -> None:
        try:
            # Any HTTP answer, even an error status, proves the hub is reachable.
            get_session().head(constants.ENDPOINT, timeout=timeout)
            outcome.append(None)
        except Exception as exc:  # a probe: every failure means "not reachable"
            outcome.append(one_line(str(exc)) or type(exc).__name__)

    # A thread bounds the wait: name resolution ignores the request timeout.
    thread = threading.Thread(target=probe, name="steerlens-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"
