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

import functools
from collections.abc import Callable, Iterable, Iterator
from contextlib import ContextDecorator, contextmanager
from contextvars import ContextVar, Token
from typing import NamedTuple

_UNSET: object = object()


class Attribution(NamedTuple):
    """Immutable; a tuple so that a block costs little to enter (once per request or
    per LLM call)."""

    user_id: str | None = None
    plan: str | None = None
    feature: str | None = None
    tags: tuple[str, ...] = ()
    agent: str | None = None
    # The customer who pays (a workspace, team or organisation), when it is not the user.
    account_id: str | None = None


EMPTY = Attribution()
# tuple's constructor, in C, for the attributions blocks make: Attribution's own
# ``__new__`` is a Python function, a frame more on every block's entry.
_new_attribution: Callable[
    [tuple[str | None, str | None, str | None, tuple[str, ...], str | None, str | None]],
    Attribution,
] = functools.partial(tuple.__new__, Attribution)
_current: ContextVar[Attribution] = ContextVar("weckr_attribution", default=EMPTY)


# The context variable's own getter: the attribution is read on every LLM call, and
# a Python function around it would be a frame more on that path.
current_attribution: Callable[[], Attribution] = _current.get


def bind(
    *,
    user_id: object = _UNSET,
    plan: object = _UNSET,
    feature: object = _UNSET,
    tags: Iterable[str] | None = None,
    agent: object = _UNSET,
    account_id: object = _UNSET,
) -> Token[Attribution]:
    """Set attribution until ``unbind(token)``; for middleware that spans callbacks."""
    block = attribute(
        user_id=user_id, plan=plan, feature=feature, tags=tags, agent=agent, account_id=account_id
    )
    block.__enter__()
    token = block._token  # the block is dropped: the token alone undoes it
    assert token is not None
    return token


def unbind(token: Token[Attribution]) -> None:
    _current.reset(token)


class attribute(ContextDecorator):
    """Attribute every LLM call inside the block (or, as a decorator, the function).

    Arguments left out keep the enclosing block's value; pass ``None`` to clear one.
    Blocks nest and the outer values come back on exit::

        with attribute(user_id=request.user.pk, plan="pro"):
            with attribute(feature="summaries"):
                wk.chat(client, params)

    A plain class rather than ``@contextmanager``: it is entered around LLM calls.
    """

    __slots__ = ("_attribution", "_token")

    def __init__(
        self,
        *,
        user_id: object = _UNSET,
        plan: object = _UNSET,
        feature: object = _UNSET,
        tags: Iterable[str] | None = None,
        agent: object = _UNSET,
        account_id: object = _UNSET,
    ) -> None:
        self._attribution = (user_id, plan, feature, tags, agent, account_id)
        self._token: Token[Attribution] | None = None

    def _recreate_cm(self) -> attribute:
        # As a decorator: a fresh block per call, so calls may overlap.
        user_id, plan, feature, tags, agent, account_id = self._attribution
        return attribute(
            user_id=user_id,
            plan=plan,
            feature=feature,
            tags=tags,
            agent=agent,
            account_id=account_id,
        )

    def __enter__(self) -> Attribution:
        if self._token is not None:
            raise RuntimeError("Weckr: an attribute() block cannot be entered twice at once.")
        base = _current.get()
        user_id, plan, feature, tags, agent, account_id = self._attribution
        # Merged here rather than in a helper: a block is entered around LLM calls.
        # plan, feature and agent are stored as given, as Attribution() would.
        merged = _new_attribution(
            (  # type: ignore[arg-type]
                base.user_id if user_id is _UNSET else None if user_id is None else str(user_id),
                base.plan if plan is _UNSET else plan,
                base.feature if feature is _UNSET else feature,
                # Inner tags add to the outer ones, in order, without repeats.
                base.tags if tags is None else tuple(dict.fromkeys((*base.tags, *tags))),
                base.agent if agent is _UNSET else agent,
                base.account_id
                if account_id is _UNSET
                else None
                if account_id is None
                else str(account_id),
            )
        )
        self._token = _current.set(merged)
        return merged

    def __exit__(self, *exc_info: object) -> None:
        token, self._token = self._token, None
        if token is not None:
            _current.reset(token)


# True while a recorded call runs the provider's method: an SDK method that
# ``instrument()`` patched, reached from inside it (through ``wrap()``, ``wk.chat``
# or a stream helper's request), runs as is, so the call is recorded once.
_in_recorded_call: ContextVar[bool] = ContextVar("weckr_in_recorded_call", default=False)
in_recorded_call: Callable[[], bool] = _in_recorded_call.get


@contextmanager
def recording_call(marked: bool = True) -> Iterator[None]:
    """Mark the block as the provider call of a call being recorded (``marked``), or,
    inside the SDK method that call reached, as no longer that call: an LLM call a
    tool makes from there is a call of its own."""
    token = _in_recorded_call.set(marked)
    try:
        yield
    finally:
        _in_recorded_call.reset(token)
