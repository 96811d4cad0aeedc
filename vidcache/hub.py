"""Whether the Hugging Face hub answers, asked once and quickly.

Offline, huggingface_hub retries every download with back-off (five retries, about 25 s) before it
fails; vidcache asks first with one short request, so that a model that is neither local nor
reachable is one line at once.
"""

from __future__ import annotations

import os


def reachable(timeout_s: float = 3.0) -> bool:
    """True when the hub endpoint (``HF_ENDPOINT``, proxies as huggingface_hub uses them) answers at all."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        from huggingface_hub import constants
        from huggingface_hub.utils import get_session

        get_session().head(constants.ENDPOINT, timeout=timeout_s)
    except Exception:  # noqa: BLE001 - no answer of any kind: unreachable
        return False
    return True
