from __future__ import annotations

import asyncio
import contextvars
import threading

from weckr_core.context import EMPTY, attribute, bind, current_attribution, unbind


def test_attribute_nests_and_restores() -> None:
    assert current_attribution() == EMPTY
    with attribute(user_id=42, plan="pro", tags=["web"]):
        outer = current_attribution()
        assert (outer.user_id, outer.plan, outer.feature) == ("42", "pro", None)
        with attribute(feature="summaries", tags=["beta"]):
            inner = current_attribution()
            assert (inner.user_id, inner.plan, inner.feature) == ("42", "pro", "summaries")
            assert inner.tags == ("web", "beta")
            with attribute(user_id=None):
                assert current_attribution().user_id is None
        assert current_attribution() == outer
    assert current_attribution() == EMPTY


def test_restored_even_when_the_block_raises() -> None:
    try:
        with attribute(user_id="u1"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert current_attribution() == EMPTY


def test_bind_and_unbind_for_middleware() -> None:
    token = bind(user_id="7", plan="team")
    try:
        assert current_attribution().plan == "team"
    finally:
        unbind(token)
    assert current_attribution() == EMPTY


async def test_each_asyncio_task_keeps_its_own_attribution() -> None:
    seen: dict[str, str | None] = {}

    async def handle(user: str) -> None:
        with attribute(user_id=user):
            await asyncio.sleep(0.01)  # the other tasks run in between
            seen[user] = current_attribution().user_id

    await asyncio.gather(*(handle(f"user-{n}") for n in range(20)))
    assert seen == {f"user-{n}": f"user-{n}" for n in range(20)}


async def test_tasks_created_inside_a_block_inherit_it() -> None:
    async def child() -> str | None:
        await asyncio.sleep(0)
        return current_attribution().feature

    with attribute(feature="digest"):
        task = asyncio.create_task(child())
    assert await task == "digest"
    assert current_attribution().feature is None


def test_threads_need_the_context_carried() -> None:
    results: list[str | None] = []
    with attribute(user_id="u9"):
        plain = threading.Thread(target=lambda: results.append(current_attribution().user_id))
        ctx = contextvars.copy_context()
        carried = threading.Thread(
            target=lambda: ctx.run(lambda: results.append(current_attribution().user_id))
        )
        plain.start()
        plain.join()
        carried.start()
        carried.join()
    assert results == [None, "u9"]


def test_attribute_decorates_a_function_and_its_calls_may_overlap() -> None:
    seen: list[tuple[str | None, str | None]] = []

    @attribute(user_id="u7", plan="pro")
    def work(depth: int) -> None:
        seen.append((current_attribution().user_id, current_attribution().plan))
        if depth:
            work(depth - 1)  # a second block while the first is open

    work(1)

    assert seen == [("u7", "pro"), ("u7", "pro")]
    assert current_attribution() == EMPTY
