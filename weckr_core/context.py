"""Who an LLM call is for: the attribution context.

Values live in a ``contextvars.ContextVar``, so they follow the code that set them
through ``await`` and into ``asyncio`` tasks created inside the block (tasks copy
the context when they are created).

Threads do not inherit context variables. Code that hands work to a thread pool
inside an attributed block must carry the context along, for example::

    ctx = contextvars.copy_context()
    executor.submit(ctx.run, work)

``asyncio.to_thread`` and Django's ``sync_to_async`` already do this.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, replace

_UNSET: object = object()


@dataclass(frozen=True, slots=True)
class Attribution:
    user_id: str | None = None
    plan: str | None = None
    feature: str | None = None
    tags: tuple[str, ...] = ()


EMPTY = Attribution()
_current: ContextVar[Attribution] = ContextVar("weckr_attribution", default=EMPTY)


def current_attribution() -> Attribution:
    return _current.get()


def _merged(
    base: Attribution,
    user_id: object,
    plan: object,
    feature: object,
    tags: Iterable[str] | None,
) -> Attribution:
    changes: dict[str, object] = {}
    if user_id is not _UNSET:
        changes["user_id"] = None if user_id is None else str(user_id)
    if plan is not _UNSET:
        changes["plan"] = plan
    if feature is not _UNSET:
        changes["feature"] = feature
    if tags is not None:
        # Inner tags add to the outer ones, in order, without repeats.
        changes["tags"] = tuple(dict.fromkeys((*base.tags, *tags)))
    return replace(base, **changes)  # type: ignore[arg-type]


def bind(
    *,
    user_id: object = _UNSET,
    plan: object = _UNSET,
    feature: object = _UNSET,
    tags: Iterable[str] | None = None,
) -> Token[Attribution]:
    """Set attribution until ``unbind(token)``; for middleware that spans callbacks."""
    return _current.set(_merged(_current.get(), user_id, plan, feature, tags))


def unbind(token: Token[Attribution]) -> None:
    _current.reset(token)


@contextmanager
def attribute(
    *,
    user_id: object = _UNSET,
    plan: object = _UNSET,
    feature: object = _UNSET,
    tags: Iterable[str] | None = None,
) -> Iterator[Attribution]:
    """Attribute every LLM call inside the block.

    Arguments left out keep the enclosing block's value; pass ``None`` to clear one.
    Blocks nest and the outer values come back on exit::

        with attribute(user_id=request.user.pk, plan="pro"):
            with attribute(feature="summaries"):
                wk.chat(client, params)
    """
    token = bind(user_id=user_id, plan=plan, feature=feature, tags=tags)
    try:
        yield _current.get()
    finally:
        _current.reset(token)
