"""The unmodified, published Tokenr (0.1.3) and AICostManager (0.3.2) SDKs against
this server's ``/api/v1/track``: each pointed at a live test server by its one
setting, driving real provider clients whose HTTP goes to fake transports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aicostmanager import OpenAIChatWrapper, Tracker

from tests.core import providers as p
from weckr_core.pricing import price_usage
from weckr_django.models import ApiKey, Project, UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
MESSAGES: Any = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def server(live_server: Any) -> tuple[str, Project, str]:
    project = Project.objects.create(name="Peers")
    _, key = ApiKey.objects.create_key(project, "peer SDKs")
    return str(live_server.url), project, key


def stored(project: Project, count: int) -> list[UsageEvent]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        events = list(UsageEvent.objects.filter(project=project).order_by("timestamp"))
        if len(events) >= count:
            return events
        time.sleep(0.05)
    raise AssertionError(f"{count} usage events did not reach the server")


# -- Tokenr: tokenr.init() patches the SDKs; its thread posts each call ----------------

TOKENR_SCRIPT = """
import sys, time, threading
import tokenr
from tests.core import providers as p


def posted():  # Tokenr posts from a daemon thread per call; one at a time here, as
    deadline = time.monotonic() + 15  # the test server's in-memory SQLite wants
    while threading.active_count() > 1 and time.monotonic() < deadline:
        time.sleep(0.02)


url, key = sys.argv[1], sys.argv[2]
tokenr.init(token=key, url=url, agent_id="default-agent", debug=True)
openai_fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(1200, 300, 200)))
p.openai_client(openai_fake).chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "Hi"}],
    tokenr_team_id="team-7",
    tokenr_feature="summaries",
    tokenr_tags={"env": "prod"},
)
posted()
anthropic_fake = p.FakeProvider(
    p.anthropic_message_body("claude-haiku-4-5", p.anthropic_usage(100, 40, 500, 60))
)
p.anthropic_client(anthropic_fake).messages.create(
    model="claude-haiku-4-5",
    max_tokens=64,
    messages=[{"role": "user", "content": "Hi"}],
    tokenr_agent_id="critic",
    tokenr_tags={"user_id": "u-1"},
)
posted()
"""


def test_tokenr_sdk_posts_land_priced_and_attributed_and_it_sees_success(
    server: tuple[str, Project, str],
) -> None:
    url, project, key = server
    done = subprocess.run(
        [sys.executable, "-c", TOKENR_SCRIPT, f"{url}/api/v1/track", key],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr

    events = {event.model: event for event in stored(project, 2)}
    chat = events["gpt-4o-mini"]
    assert (chat.input_tokens, chat.cached_input_tokens, chat.output_tokens) == (1200, 200, 300)
    assert (chat.account_id, chat.feature, chat.agent) == ("team-7", "summaries", "default-agent")
    assert chat.tags == ["env:prod"]
    expected = price_usage(
        "gpt-4o-mini", input_tokens=1200, cached_input_tokens=200, output_tokens=300
    ).usd
    assert abs(chat.cost_usd - expected) < 1e-9
    claude = events["claude-haiku-4-5"]
    # Tokenr sends the cache reads apart (and drops Anthropic's cache writes).
    assert (claude.input_tokens, claude.cached_input_tokens, claude.output_tokens) == (
        600,
        500,
        40,
    )
    assert (claude.user_id, claude.agent, claude.provider) == ("u-1", "critic", "anthropic")
    # Tokenr's debug output: what it read back from our answer.
    assert done.stdout.count("[Tokenr] Tracked:") == 2, done.stdout
    assert f"[Tokenr] Tracked: gpt-4o-mini - ${float(chat.cost_usd)}" in done.stdout
    assert "[Tokenr] Error" not in done.stdout


# -- AICostManager: Tracker and its wrappers, immediate and queued delivery ------------


@pytest.fixture
def aicm(server: tuple[str, Project, str], tmp_path: Path) -> Iterator[tuple[Project, Path]]:
    url, project, key = server
    saved = {name: os.environ.get(name) for name in ("AICM_API_BASE", "AICM_API_KEY")}
    os.environ["AICM_API_BASE"], os.environ["AICM_API_KEY"] = url, key
    yield project, tmp_path / "AICM.INI"  # its settings, log and queue stay in tmp_path
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def test_aicostmanager_tracker_and_wrapper_records_land_and_it_sees_success(
    aicm: tuple[Project, Path],
) -> None:
    project, ini = aicm
    tracker = Tracker(ini_path=str(ini))
    answer = tracker.track(
        "anthropic::claude-haiku-4-5",
        {"input_tokens": 100, "output_tokens": 50, "cache_read_input_tokens": 400},
        response_id="msg-77",
        customer_key="acme-corp",
        context={"user_id": "u-5", "env": "prod"},
    )
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(900, 100, 300)))
    wrapped = OpenAIChatWrapper(p.openai_client(fake), tracker=tracker, customer_key="globex")
    wrapped.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    tracker.close()

    result = answer["result"]
    assert (result["response_id"], result["status"], result["errors"]) == (
        "msg-77",
        "completed",
        [],
    )
    assert "error" not in answer
    events = {event.event_id: event for event in stored(project, 2)}
    claude = events["msg-77"]
    assert (claude.input_tokens, claude.cached_input_tokens, claude.output_tokens) == (
        500,
        400,
        50,
    )
    assert (claude.user_id, claude.account_id, claude.tags) == ("u-5", "acme-corp", ["env:prod"])
    assert result["cost"] == pytest.approx(float(claude.cost_usd))
    chat = next(event for event in events.values() if event.model == "gpt-4o-mini")
    assert (chat.input_tokens, chat.cached_input_tokens, chat.output_tokens) == (900, 300, 100)
    assert (chat.account_id, chat.provider) == ("globex", "openai")
    log = ini.parent / "aicm.log"
    assert not log.exists() or "Traceback" not in log.read_text()


def test_aicostmanager_queued_delivery_lands_once(aicm: tuple[Project, Path]) -> None:
    project, ini = aicm
    tracker = Tracker(ini_path=str(ini), delivery_type="persistent_queue")
    for n in range(25):
        tracker.track(
            "google::gemini-2.5-flash",
            {"promptTokenCount": 80, "candidatesTokenCount": 20},
            response_id=f"gem-{n}",
            customer_key="initech",
        )
    tracker.close()  # sends what is queued

    events = stored(project, 25)
    assert len(events) == 25
    assert {event.account_id for event in events} == {"initech"}
    assert sum(event.input_tokens for event in events) == 25 * 80
