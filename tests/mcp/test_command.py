"""``manage.py weckr_mcp``: which project it serves, and the real stdio transport."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from django.core.management.base import CommandError
from django.test import override_settings
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.recommendations.usage import make_project
from weckr_django.management.commands.weckr_mcp import choose_project

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.django_db
def test_serves_the_only_project_or_the_one_named() -> None:
    with pytest.raises(CommandError, match="no project yet"):
        choose_project(None)
    acme = make_project("Acme")
    assert choose_project(None) == acme

    globex = make_project("Globex")
    with pytest.raises(CommandError, match="several projects"):
        choose_project(None)
    assert choose_project("Globex") == globex
    assert choose_project(str(acme.pk)) == acme
    with override_settings(WECKR={"DEFAULT_PROJECT": "Globex"}):
        assert choose_project(None) == globex
    with pytest.raises(CommandError, match="No project with id or name 'Initech'"):
        choose_project("Initech")


def test_stdio_server_answers_a_real_client(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "WECKR_TEST_SQLITE": str(tmp_path / "weckr.sqlite3"),
        "PYTHONPATH": str(ROOT),
    }

    def django(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "django", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    django("migrate", "--verbosity", "0")
    project_id = django("weckr_project", "create", "Acme", "--timezone", "Europe/Paris").split()[0]
    django("weckr_plan", "set", "Acme", "pro", "--price", "29", "--cap", "5")

    async def talk() -> tuple[list[str], dict[str, Any], dict[str, Any]]:
        server = StdioServerParameters(
            command=sys.executable,
            args=["-m", "django", "weckr_mcp", "--project", "Acme"],
            env=env,
            cwd=ROOT,
        )
        with anyio.fail_after(60), open(os.devnull, "w") as errors:
            async with (
                stdio_client(server, errlog=errors) as (read, write),
                ClientSession(read, write) as client,
            ):
                await client.initialize()
                tools = [tool.name for tool in (await client.list_tools()).tools]
                overview = await client.call_tool("get_overview", {})
                cap = await client.call_tool(
                    "get_spending_cap_url", {"plan": "pro", "limit_usd": 8}
                )
        assert overview.structuredContent is not None and cap.structuredContent is not None
        return tools, overview.structuredContent, cap.structuredContent

    tools, overview, cap = anyio.run(talk)

    assert "get_overview" in tools and len(tools) == 7
    assert cap["url"] == "http://localhost:8000/weckr/settings/?plan=pro&cap=8.00&action=block"
    assert cap["currentCapUsd"] == 5.0
    assert (overview["projectId"], overview["project"]) == (project_id, "Acme")
    assert (overview["timezone"], overview["calls"], overview["costUsd"]) == (
        "Europe/Paris",
        0,
        0.0,
    )
