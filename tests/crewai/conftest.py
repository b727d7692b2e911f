"""CrewAI writes app data under appdirs and ``CREWAI_STORAGE_DIR``: keep it in a temp dir."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def crewai_storage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    storage = tmp_path / "crewai"
    monkeypatch.setenv("CREWAI_STORAGE_DIR", str(storage))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    return storage
