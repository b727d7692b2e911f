"""CrewAI integration: cost per agent and per task, caps and loop guards per kickoff.

from weckr_crewai import WeckrCrew

WeckrCrew(feature="research", max_cost_usd=2).attach(crew)
"""

from __future__ import annotations

from weckr_crewai.crew import WeckrCrew
from weckr_crewai.errors import CrewCapError, CrewConfigError, CrewLoopError
from weckr_crewai.usage import usage_from_crewai

__all__ = [
    "CrewCapError",
    "CrewConfigError",
    "CrewLoopError",
    "WeckrCrew",
    "usage_from_crewai",
]
