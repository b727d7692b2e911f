"""The errors a stopped kickoff raises.

CrewAI swallows any exception a hook raises except ``HookAborted``, which it lets
through without retries. Each error here is both: ``except WeckrCapError`` (or
``WeckrLoopError``, ``WeckrConfigError``) catches it, and so does ``except
HookAborted``.
"""

from __future__ import annotations

from crewai.hooks import HookAborted

from weckr_core.errors import WeckrCapError, WeckrConfigError, WeckrLoopError

SOURCE = "weckr"


class CrewCapError(WeckrCapError, HookAborted):
    """The monthly cap of the user (or of the account, ``account_id``) stopped a
    kickoff before the provider was called."""

    @classmethod
    def from_error(cls, error: WeckrCapError) -> CrewCapError:
        stop = cls(
            str(error),
            user_id=error.user_id,
            plan_name=error.plan_name,
            current_spend=error.current_spend,
            cap=error.cap,
            kind=error.kind,
            account_id=error.account_id,
        )
        stop.source = SOURCE
        return stop


class CrewLoopError(WeckrLoopError, HookAborted):
    """A loop guard stopped a runaway kickoff."""

    @classmethod
    def from_error(cls, error: WeckrLoopError) -> CrewLoopError:
        stop = cls(
            error.reason,
            llm_calls=error.llm_calls,
            tokens=error.tokens,
            cost=error.cost,
            user_id=error.user_id,
            plan_name=error.plan_name,
            run_id=error.run_id,
        )
        stop.source = SOURCE
        return stop


class CrewConfigError(WeckrConfigError, HookAborted):
    """The backend refused our key or plan: fail closed rather than uncapped."""

    @classmethod
    def from_error(cls, error: WeckrConfigError) -> CrewConfigError:
        stop = cls(error.code, str(error))
        stop.source = SOURCE
        return stop
