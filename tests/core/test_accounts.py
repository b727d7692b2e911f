"""The paying account of a call, beside its user: from the context, ``wk.chat``'s
params, ``track()`` and the keyword arguments, onto the record and the wire."""

from __future__ import annotations

from typing import Any

from tests.core import providers as p
from weckr_core import MemoryBackend, Weckr, attribute, current_attribution

MESSAGES: Any = [{"role": "user", "content": "Hi"}]


def test_every_way_of_recording_carries_the_account() -> None:
    backend = MemoryBackend()
    wk = Weckr(backend=backend)
    fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(5, 1)))

    with attribute(user_id="u1", account_id=42):
        wk.wrap(p.openai_client(fake)).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
        wk.chat(p.openai_client(fake), {"model": "gpt-4o-mini", "messages": MESSAGES})
        wk.chat(
            p.openai_client(fake),
            {"model": "gpt-4o-mini", "messages": MESSAGES, "account_id": "acme"},
        )
        wk.track(model="gpt-4o-mini", input_tokens=3, output_tokens=1)
        wk.track(model="gpt-4o-mini", input_tokens=3, output_tokens=1, account_id="globex")

    assert [(r.user_id, r.account_id) for r in backend.records] == [
        ("u1", "42"),
        ("u1", "42"),
        ("u1", "acme"),
        ("u1", "42"),
        ("u1", "globex"),
    ]
    assert backend.records[0].to_wire()["accountId"] == "42"
    assert "accountId" not in wk_record_without_account().to_wire()


def wk_record_without_account() -> Any:
    backend = MemoryBackend()
    Weckr(backend=backend).track(model="gpt-4o-mini", input_tokens=1, output_tokens=1)
    return backend.records[0]


def test_blocks_nest_and_none_clears_the_account() -> None:
    with attribute(account_id="outer"):
        with attribute(feature="chat"):
            assert current_attribution().account_id == "outer"
        with attribute(account_id=None):
            assert current_attribution().account_id is None
        assert current_attribution().account_id == "outer"
    assert current_attribution().account_id is None
