"""Reading results: evaluation metrics and method comparisons, the HTML report (re-exported here) and the descriptor audit."""

from .page import *  # noqa: F401,F403
from .page import __all__  # noqa: F401
