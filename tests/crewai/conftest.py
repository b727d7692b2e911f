"""CrewAI writes app data under appdirs and ``CREWAI_STORAGE_DIR``: keep it in a temp dir.

Records are priced as they arrive. When ``weckr_django`` is installed, its app puts
a database-backed price override in place at start-up; tests without a database
price from the bundled table instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from weckr_core import pricing


@pytest.fixture(autouse=True)
def crewai_storage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    storage = tmp_path / "crewai"
    monkeypatch.setenv("CREWAI_STORAGE_DIR", str(storage))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    return storage


@pytest.fixture(autouse=True)
def bundled_prices(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("django_db") is None:
        pricing.set_price_overrides(None)
        pricing.set_alternative_overrides(None)
        pricing.clear_pricing_cache()
