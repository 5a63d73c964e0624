"""Is the HF hub reachable? One probe, shared by hub models (:mod:`vlmcls.encode.models`) and hub datasets
(:mod:`vlmcls.sources.hub_datasets`), so both fail offline in seconds with the same reason, where the hub libraries
would retry for most of a minute."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["PROBE_TIMEOUT_S", "hub_endpoint", "hub_unreachable_reason", "in_hub_cache"]

PROBE_TIMEOUT_S = 3.0
_TRUTHY = ("1", "on", "yes", "true")


def hub_endpoint() -> str:
    """The hub's base URL: ``$HF_ENDPOINT`` or huggingface_hub's default."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def in_hub_cache(kind: str, repo: str, sub: str = "") -> bool:
    """Whether the hub cache holds a copy of ``repo`` (``kind``: "models" or "datasets"; ``sub``: a folder in it)."""
    from huggingface_hub import constants

    return (Path(constants.HF_HUB_CACHE) / f"{kind}--{repo.replace('/', '--')}" / sub).is_dir()


def hub_unreachable_reason(endpoint: str | None = None) -> str | None:
    """Why the hub cannot be reached, found within a few seconds; None when it can (or a proxy decides)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUTHY:
            return f"{name}={os.environ[name]} is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # only the proxy knows; let the download try
    parts = urlsplit(endpoint or hub_endpoint())
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"'{parts.hostname}:{port}' cannot be reached ({exc.strerror or type(exc).__name__})"
