"""Admin-edited prices and downgrades, fed to weckr_core's pricing.

Both tables are small: each is read whole on first use and cached until a row is
saved or deleted (signals), so pricing a call costs no query.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Final

from django.db.models.signals import post_delete, post_save

from weckr_core import pricing
from weckr_core.pricing import ModelPricing, Rate
from weckr_django.models import ModelAlternative, ModelPrice

_lock = threading.Lock()
_prices: dict[str, ModelPricing] | None = None
_alternatives: dict[str, str] | None = None
_loaded_at = 0.0
#: Other processes (workers, other web servers) see admin edits within this time.
REFRESH_SECONDS: Final = 60.0


def _load_prices() -> dict[str, ModelPricing]:
    global _prices, _loaded_at
    loaded = _prices
    if loaded is None:
        _loaded_at = time.monotonic()
        loaded = {}
        for row in ModelPrice.objects.all():
            input_rate = Rate(row.input_per_mtok)
            loaded[row.model.strip().lower()] = ModelPricing(
                model=row.model,
                provider=row.provider or None,
                input=input_rate,
                output=Rate(row.output_per_mtok),
                cached_input=input_rate
                if row.cached_input_per_mtok is None
                else Rate(row.cached_input_per_mtok),
                cache_write=input_rate
                if row.cache_write_per_mtok is None
                else Rate(row.cache_write_per_mtok),
                source="override",
            )
        with _lock:
            _prices = loaded
    return loaded


def _load_alternatives() -> dict[str, str]:
    global _alternatives
    loaded = _alternatives
    if loaded is None:
        loaded = {
            model.strip().lower(): alternative
            for model, alternative in ModelAlternative.objects.values_list("model", "alternative")
        }
        with _lock:
            _alternatives = loaded
    return loaded


def price_override(model: str) -> ModelPricing | None:
    return _load_prices().get(model.strip().lower())


def alternative_override(model: str) -> str | None:
    return _load_alternatives().get(model.strip().lower())


def refresh_if_stale() -> None:
    """Reload the override tables when they are older than ``REFRESH_SECONDS`` and
    forget resolved prices when they changed (an edit made in another process)."""
    global _prices, _alternatives
    if _prices is None or time.monotonic() - _loaded_at < REFRESH_SECONDS:
        return
    before = (dict(_prices), dict(_alternatives or {}))
    with _lock:
        _prices = None
        _alternatives = None
    after = (_load_prices(), _load_alternatives())
    if before != after:
        pricing.clear_pricing_cache()


def clear() -> None:
    """Forget the cached overrides and every price resolved with them."""
    global _prices, _alternatives
    with _lock:
        _prices = None
        _alternatives = None
    pricing.clear_pricing_cache()


def install() -> None:
    """Make weckr_core consult the admin overrides. Queries nothing until a price is needed."""
    clear()
    pricing.set_price_overrides(price_override)
    pricing.set_alternative_overrides(alternative_override)


def _changed(**kwargs: Any) -> None:
    clear()


def connect_signals() -> None:
    for model in (ModelPrice, ModelAlternative):
        post_save.connect(
            _changed, sender=model, dispatch_uid=f"weckr_override_save_{model.__name__}"
        )
        post_delete.connect(
            _changed, sender=model, dispatch_uid=f"weckr_override_delete_{model.__name__}"
        )
