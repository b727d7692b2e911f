from __future__ import annotations

import sys
import warnings
from decimal import Decimal
from typing import Literal

ConfigErrorCode = Literal["invalid_api_key", "forbidden", "unknown_plan"]
#: Why a call was refused: its user's cap, a plan Weckr does not know, a cap store
#: that could not be reached while ``CAP_FAIL_CLOSED`` is set, or a loop guard.
CapKind = Literal["cap", "unknown_plan", "cap_store_unavailable", "loop"]


class WeckrCapError(Exception):
    """The user's monthly spending cap is reached and the plan's action is "block".

    Raised before the provider is called, so nothing is spent. Same attributes
    as the published weckr-sdk's error of the same name, and ``account_id``: set
    when the cap that stopped the call is the account's (all its users together),
    None when it is the user's own.
    """

    # weckr-sdk identifies its errors by this attribute as well as by class.
    name: str = "WeckrCapError"

    def __init__(
        self,
        message: str | None = None,
        *,
        user_id: str | None = None,
        plan_name: str | None = None,
        current_spend: Decimal | None = None,
        cap: Decimal | None = None,
        kind: CapKind = "cap",
        account_id: str | None = None,
    ) -> None:
        super().__init__(
            message or _cap_message(kind, user_id, plan_name, current_spend, cap, account_id)
        )
        self.user_id = user_id
        self.plan_name = plan_name
        self.current_spend = current_spend
        self.cap = cap
        self.kind = kind
        self.account_id = account_id


def _cap_message(
    kind: CapKind,
    user_id: str | None,
    plan: str | None,
    spend: Decimal | None,
    cap: Decimal | None,
    account_id: str | None = None,
) -> str:
    if kind == "unknown_plan":
        if plan is None:
            return (
                f"Weckr: user {user_id} has no plan, and calls on no plan are refused "
                "(set WECKR['DEFAULT_PLAN'], or have WECKR['PLAN_RESOLVER'] find the plan)."
            )
        return (
            f"Weckr: user {user_id} is on plan {plan!r}, which is not configured in Weckr; "
            "calls on unknown plans are refused (WECKR['UNKNOWN_PLAN'])."
        )
    if kind == "cap_store_unavailable":
        return (
            f"Weckr: the cap of user {user_id} could not be checked (the cap store is "
            "unreachable) and WECKR['CAP_FAIL_CLOSED'] refuses such calls."
        )
    spent = "" if spend is None or cap is None else f" (${spend:.4f} of ${cap:.4f})"
    if account_id is not None:
        by = "" if user_id is None else f"; call by user {user_id}"
        return (
            f"Weckr: account spending cap reached for account {account_id} "
            f"on plan {plan}{spent}{by}"
        )
    return f"Weckr: spending cap reached for user {user_id} on plan {plan}{spent}"


class WeckrLoopError(WeckrCapError):
    """A loop guard stopped a runaway agent run (or the server's velocity check)."""

    name: str = "WeckrLoopError"

    def __init__(
        self,
        reason: str,
        *,
        llm_calls: int = 0,
        tokens: int = 0,
        cost: Decimal = Decimal(0),
        user_id: str | None = None,
        plan_name: str | None = None,
        run_id: str | None = None,
    ) -> None:
        super().__init__(
            f"Weckr: run stopped by loop guard: {reason} "
            f"(llm_calls={llm_calls}, tokens={tokens}, cost=${cost})",
            user_id=user_id,
            plan_name=plan_name,
            current_spend=cost,
            kind="loop",
        )
        self.reason = reason
        self.llm_calls = llm_calls
        self.tokens = tokens
        self.cost = cost
        self.run_id = run_id


class WeckrConfigError(Exception):
    """An unrecoverable configuration error: a wrong (401) or revoked (403) key, or
    a plan name the client does not know. These fail closed on purpose: failing
    open would silently switch cap enforcement off."""

    name: str = "WeckrConfigError"

    def __init__(self, code: ConfigErrorCode, message: str | None = None) -> None:
        super().__init__(message or f"Weckr: configuration error ({code})")
        self.code = code


class WeckrDowngradeWarning(UserWarning):
    """A capped user's call was sent to a cheaper model.

    A ``UserWarning`` so that ``filterwarnings("error", DeprecationWarning)`` set-ups
    do not turn a downgrade into a failure. Silence it with
    ``warnings.filterwarnings("ignore", category=WeckrDowngradeWarning)``.
    """


def is_weckr_cap_error(error: object) -> bool:
    """True for our cap errors and the weckr-sdk's (matched by their ``name``)."""
    return isinstance(error, WeckrCapError) or (
        isinstance(error, BaseException)
        and getattr(error, "name", None) in ("WeckrCapError", "WeckrLoopError")
    )


def is_weckr_config_error(error: object) -> bool:
    return isinstance(error, WeckrConfigError) or (
        isinstance(error, BaseException) and getattr(error, "name", None) == "WeckrConfigError"
    )


def warn_downgrade(user_id: str | None, from_model: str, to_model: str) -> None:
    warn_at_caller(
        f"Weckr: downgrading {user_id} from {from_model} to {to_model} (cap reached). "
        "Later downgrades for this user and model are silent.",
        WeckrDowngradeWarning,
    )


# Frames a warning should not point at: Weckr's own, and the SDKs and frameworks
# that call into it (the developer's line is the one that called them). A name
# covers its ``name_*`` siblings too (``langchain`` covers ``langchain_core``).
_PASS_THROUGH_PACKAGES = (
    "weckr",
    "openai",
    "anthropic",
    "google",
    "langchain",
    "langgraph",
    "langsmith",
    "crewai",
    "asyncio",
    "concurrent",
    "threading",
    "contextlib",
    "functools",
)


def warn_at_caller(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` pointing at the first frame outside Weckr and the libraries
    it sits under, however deep the call that warns."""
    frame = sys._getframe(1)
    stacklevel = 2  # the caller of this function
    while frame.f_back is not None and _passes_through(frame.f_globals.get("__name__", "")):
        frame = frame.f_back
        stacklevel += 1
    warnings.warn(message, category=category, stacklevel=stacklevel)


def _passes_through(module: str) -> bool:
    top = module.partition(".")[0]
    return any(top == name or top.startswith(f"{name}_") for name in _PASS_THROUGH_PACKAGES)
