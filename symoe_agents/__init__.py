"""symoe: Symbolic Mixture-of-Experts on local OpenAI-compatible servers.

Public names are listed in ``__all__``; everything else is internal.
"""

from .api import SymbolicMoE
from .cache import AnswerCache
from .config import Config, load_config
from .errors import BudgetSpent, CacheError, ConfigError, EndpointError, InputError, ProfileError, OutputError, PromptError, ServerStartError, SymoeError
from .events import Event, EventLog
from .summary import RunSummary
from .formats import AnswerFormat
from .records import AggregatorAnswer, ExpertAnswer, Question, QuestionResult
from .schedule import Schedule

__version__ = "0.1.0"

__all__ = [
    "AggregatorAnswer",
    "AnswerCache",
    "AnswerFormat",
    "BudgetSpent",
    "CacheError",
    "Config",
    "ConfigError",
    "EndpointError",
    "Event",
    "EventLog",
    "ExpertAnswer",
    "InputError",
    "OutputError",
    "ProfileError",
    "PromptError",
    "Question",
    "QuestionResult",
    "RunSummary",
    "Schedule",
    "ServerStartError",
    "SymbolicMoE",
    "SymoeError",
    "__version__",
    "load_config",
]
