"""The LLM side: the OpenAI-compatible client (re-exported here), its bounded HTTP, prompt files, and descriptors asked, parsed and accounted for."""

from .client import *  # noqa: F401,F403
from .client import __all__  # noqa: F401
