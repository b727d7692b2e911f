"""weckr_core is framework-free: its tests price from the bundled price table.

When pytest-django loads ``weckr_django``, its app installs database-backed price
and alternative overrides at start-up; these tests have no database.
"""

from __future__ import annotations

import pytest

from weckr_core import pricing


@pytest.fixture(autouse=True)
def bundled_prices() -> None:
    pricing.set_price_overrides(None)
    pricing.set_alternative_overrides(None)
