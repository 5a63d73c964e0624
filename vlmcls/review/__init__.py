"""`vlmcls review`: a local page to check a run's predictions, correct them by keyboard, and re-score the run with
the corrections as few-shot support. :class:`ReviewSession` is the state; :mod:`.server` the web side (Flask)."""

from .session import Improvement, ReviewSession

__all__ = ["ReviewSession", "Improvement"]
