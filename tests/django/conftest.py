from __future__ import annotations

from collections.abc import Iterator

import pytest

from weckr_django import overrides


@pytest.fixture(autouse=True)
def price_overrides() -> Iterator[None]:
    """The shared hermetic fixture resets weckr_core's hooks after each test; the app
    installs them once at start-up, so put them back for every test here."""
    overrides.install()
    yield
    overrides.clear()
