"""Framework-free core of Weckr for Django: prices, usage, attribution, caps, backends.

Imports nothing from Django, LangChain or CrewAI.
"""

from __future__ import annotations

from weckr_core.backends import (
    Backend,
    CapDecision,
    MemoryBackend,
    configure,
    get_backend,
)
from weckr_core.backends.http import HttpBackend
from weckr_core.client import Weckr
from weckr_core.context import Attribution, attribute, current_attribution
from weckr_core.errors import (
    WeckrCapError,
    WeckrConfigError,
    WeckrDowngradeWarning,
    WeckrLoopError,
    is_weckr_cap_error,
    is_weckr_config_error,
)
from weckr_core.guards import RunGuard, RunLimits
from weckr_core.instrument import instrument, is_instrumented, uninstrument
from weckr_core.pricing import (
    CHEAPER_ALTERNATIVE,
    ModelPricing,
    calculate_cost,
    cheaper_alternative,
    is_priced,
    price_usage,
    resolve_pricing,
    set_alternative_overrides,
    set_price_overrides,
)
from weckr_core.records import TokenUsage, UsageRecord
from weckr_core.wrap import wrap

__all__ = [
    "CHEAPER_ALTERNATIVE",
    "Attribution",
    "Backend",
    "CapDecision",
    "HttpBackend",
    "MemoryBackend",
    "ModelPricing",
    "RunGuard",
    "RunLimits",
    "TokenUsage",
    "UsageRecord",
    "Weckr",
    "WeckrCapError",
    "WeckrConfigError",
    "WeckrDowngradeWarning",
    "WeckrLoopError",
    "attribute",
    "calculate_cost",
    "cheaper_alternative",
    "configure",
    "current_attribution",
    "get_backend",
    "instrument",
    "is_instrumented",
    "is_priced",
    "is_weckr_cap_error",
    "is_weckr_config_error",
    "price_usage",
    "resolve_pricing",
    "set_alternative_overrides",
    "set_price_overrides",
    "uninstrument",
    "wrap",
]
