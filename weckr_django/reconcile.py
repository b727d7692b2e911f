"""Recorded spend against the provider's bill.

OpenAI (organization Costs API) and Anthropic (Admin API cost report) publish what
they bill per day and line item to an organization's admin key. ``fetch`` reads a
range of days into ``BilledCost`` rows (``manage.py weckr_reconcile``, from cron or
Celery beat); ``comparison`` sets each day and provider beside what Weckr recorded:
billed, recorded, the gap in dollars and percent, and the models that carry it.

A gap means calls made outside the instrumented path, streams without usage, or
prices out of date. Days are the provider's (UTC); recorded spend is read per day of
the project's timezone, so for a project not on UTC a gap moves between neighbouring
days.

Both providers also report the tokens of each of the organization's API keys per day
and model (OpenAI's completions usage, Anthropic's messages usage report):
``fetch_key_usage`` stores them, and ``key_verdicts`` tells which keys Weckr sees.
Calls carry no key id, so a key is matched by its tokens: on a day and model, the
keys whose tokens add up to what Weckr recorded (within 2%) are matched, the others
are not, when exactly one such set of keys exists; otherwise that day tells nothing
about them, nor does a day Weckr recorded nothing of the provider at all. A key
unmatched on more days than matched is not instrumented.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import httpx
from django.db import transaction
from django.db.models import Sum

from weckr_django.conf import weckr_settings
from weckr_django.models import BilledCost, DailyUsage, Project, ProviderKeyUsage

PROVIDERS = ("openai", "anthropic")
OPENAI_COSTS_URL = "https://api.openai.com/v1/organization/costs"
ANTHROPIC_COST_REPORT_URL = "https://api.anthropic.com/v1/organizations/cost_report"
OPENAI_USAGE_URL = "https://api.openai.com/v1/organization/usage/completions"
ANTHROPIC_USAGE_URL = "https://api.anthropic.com/v1/organizations/usage_report/messages"
#: How close the tokens of a set of keys must come to what Weckr recorded to match.
MATCH_TOLERANCE = Decimal("0.02")
#: Keys of one day and model tried together, at most (every subset is tried).
MAX_KEYS_MATCHED = 10
_ZERO = Decimal(0)
_DATED = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")


def configured_providers() -> list[str]:
    """The providers with an admin key configured (the keys themselves never shown)."""
    return [provider for provider in PROVIDERS if weckr_settings.admin_key(provider)]


class BillingError(Exception):
    """The provider refused the report (a wrong or non-admin key) or answered what
    cannot be read; the message says which, never the key."""


@dataclass(frozen=True, slots=True)
class BilledLine:
    provider: str
    day: date
    line_item: str
    model: str
    amount_usd: Decimal


def fetch(
    provider: str,
    key: str,
    first: date,
    last: date,
    client: httpx.Client,
    *,
    url: str | None = None,
) -> list[BilledLine]:
    """The provider's bill for the days ``first`` to ``last`` (UTC), every page;
    ``url`` replaces the report's address (a proxy in front of the provider)."""
    if provider == "openai":
        return list(_openai_lines(key, first, last, client, url or OPENAI_COSTS_URL))
    if provider == "anthropic":
        return list(_anthropic_lines(key, first, last, client, url or ANTHROPIC_COST_REPORT_URL))
    raise ValueError(f"No cost report for provider {provider!r}.")


def store(
    project: Project, lines: Iterable[BilledLine], first: date, last: date, provider: str
) -> int:
    """Replace the project's stored bill of ``provider`` for these days with
    ``lines``; their count."""
    by_key: dict[tuple[str, date, str], BilledLine] = {}
    for line in lines:
        key = (line.provider, line.day, line.line_item)
        if key in by_key:  # several results of one line item in a day: one row
            earlier = by_key[key]
            line = BilledLine(
                line.provider,
                line.day,
                line.line_item,
                line.model,
                earlier.amount_usd + line.amount_usd,
            )
        by_key[key] = line
    _replace_days(
        BilledCost,
        project,
        provider,
        first,
        last,
        [
            BilledCost(
                project=project,
                provider=line.provider,
                day=line.day,
                line_item=line.line_item[:255],
                model=line.model[:200],
                amount_usd=line.amount_usd,
            )
            for line in by_key.values()
        ],
    )
    return len(by_key)


@dataclass(frozen=True, slots=True)
class ModelGap:
    model: str
    billed_usd: Decimal
    recorded_usd: Decimal

    @property
    def gap_usd(self) -> Decimal:
        return self.billed_usd - self.recorded_usd


@dataclass(frozen=True, slots=True)
class DayComparison:
    """One day of one provider: billed against recorded."""

    day: date
    provider: str
    billed_usd: Decimal
    recorded_usd: Decimal
    models: list[ModelGap] = field(default_factory=list)

    @property
    def gap_usd(self) -> Decimal:
        return self.billed_usd - self.recorded_usd

    @property
    def gap_percent(self) -> Decimal | None:
        return self.gap_usd * 100 / self.billed_usd if self.billed_usd else None


def comparison(project: Project, first: date, last: date) -> list[DayComparison]:
    """Each day and provider with a stored bill, newest first, beside the spend Weckr
    recorded; each day's models by the size of their gap."""
    billed: dict[tuple[date, str], dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for day, provider, model, line_item, amount in BilledCost.objects.filter(
        project=project, day__gte=first, day__lte=last
    ).values_list("day", "provider", "model", "line_item", "amount_usd"):
        billed[(day, provider)][_model_key(model or line_item)] += amount
    recorded: dict[tuple[date, str], dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    providers = {provider for _, provider in billed}
    for (day, provider, model), cost in _recorded(
        project, first, last, providers, Sum("cost_usd")
    ).items():
        recorded[(day, provider)][model] += cost
    days = []
    for (day, provider), bill in billed.items():
        spent = recorded.get((day, provider), {})
        models = [
            ModelGap(model, bill.get(model, _ZERO), spent.get(model, _ZERO))
            for model in set(bill) | set(spent)
        ]
        models.sort(key=lambda gap: (-abs(gap.gap_usd), gap.model))
        days.append(
            DayComparison(
                day, provider, sum(bill.values(), _ZERO), sum(spent.values(), _ZERO), models
            )
        )
    days.sort(key=lambda item: (item.day, item.provider), reverse=True)
    return days


@dataclass(frozen=True, slots=True)
class KeyUsage:
    provider: str
    day: date
    api_key_id: str  # "" when the provider names no key (usage from its console)
    model: str
    tokens: int


def usage_url_beside(cost_url: str, provider: str) -> str | None:
    """The usage report served where ``cost_url`` serves the provider's costs (a
    proxy in front of the provider serves both, under the provider's own paths);
    None when ``cost_url`` does not end in the provider's cost path."""
    cost_path, usage_path = (
        ("/costs", "/usage/completions")
        if provider == "openai"
        else ("/cost_report", "/usage_report/messages")
    )
    base = cost_url.rstrip("/")
    return base[: -len(cost_path)] + usage_path if base.endswith(cost_path) else None


def fetch_key_usage(
    provider: str,
    key: str,
    first: date,
    last: date,
    client: httpx.Client,
    *,
    url: str | None = None,
) -> list[KeyUsage]:
    """Tokens per API key, day and model for the days ``first`` to ``last`` (UTC);
    ``url`` replaces the report's address."""
    if provider == "openai":
        return list(_openai_key_usage(key, first, last, client, url or OPENAI_USAGE_URL))
    if provider == "anthropic":
        return list(_anthropic_key_usage(key, first, last, client, url or ANTHROPIC_USAGE_URL))
    raise ValueError(f"No usage report for provider {provider!r}.")


def store_key_usage(
    project: Project, usage: Iterable[KeyUsage], first: date, last: date, provider: str
) -> int:
    """Replace the stored key usage of ``provider`` for these days; rows stored."""
    tokens: dict[tuple[date, str, str], int] = defaultdict(int)
    for item in usage:
        if item.tokens:  # a key listed with nothing used tells nothing
            tokens[(item.day, item.api_key_id[:200], item.model[:200])] += item.tokens
    _replace_days(
        ProviderKeyUsage,
        project,
        provider,
        first,
        last,
        [
            ProviderKeyUsage(
                project=project,
                provider=provider,
                day=day,
                api_key_id=key_id,
                model=model,
                tokens=count,
            )
            for (day, key_id, model), count in tokens.items()
        ],
    )
    return len(tokens)


@dataclass(frozen=True, slots=True)
class KeyVerdict:
    """One provider API key over a range of days: its tokens, the days it was used,
    the days whose tokens tell (matched: its tokens are among what Weckr recorded;
    unmatched: they are not), and the verdict: instrumented when matched on at least
    as many days as not, not instrumented when unmatched on more, None when no day
    tells."""

    provider: str
    api_key_id: str
    tokens: int
    days: int
    matched_days: int
    unmatched_days: int

    @property
    def instrumented(self) -> bool | None:
        if self.matched_days == self.unmatched_days == 0:
            return None
        return self.matched_days >= self.unmatched_days


def key_verdicts(project: Project, first: date, last: date) -> list[KeyVerdict]:
    """The stored keys of these days, keys Weckr does not see first, then by tokens."""
    cells: dict[tuple[date, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for day, provider, key_id, model, tokens in ProviderKeyUsage.objects.filter(
        project=project, day__gte=first, day__lte=last
    ).values_list("day", "provider", "api_key_id", "model", "tokens"):
        cells[(day, provider, _model_key(model))][key_id] += tokens
    recorded = _recorded(
        project,
        first,
        last,
        {provider for _, provider, _ in cells},
        Sum("input_tokens") + Sum("cache_creation_tokens") + Sum("output_tokens"),
    )
    # The days Weckr recorded something of a provider: only there does "nothing of
    # this model recorded" say the keys' calls went unseen (not, say, that Weckr was
    # not installed yet, or names the model differently).
    active = {(day, provider) for (day, provider, _), tokens in recorded.items() if tokens}
    totals: dict[tuple[str, str], int] = defaultdict(int)
    days: dict[tuple[str, str], set[date]] = defaultdict(set)
    matched_days: dict[tuple[str, str], set[date]] = defaultdict(set)
    unmatched_days: dict[tuple[str, str], set[date]] = defaultdict(set)
    for (day, provider, model), keys in cells.items():
        matched: frozenset[str] | None = None
        if (day, provider) in active:
            matched = _matching_keys(keys, recorded.get((day, provider, model), 0))
        for key_id, tokens in keys.items():
            name = (provider, key_id)
            totals[name] += tokens
            days[name].add(day)
            if matched is not None:
                (matched_days if key_id in matched else unmatched_days)[name].add(day)
    verdicts = [
        KeyVerdict(
            provider,
            key_id,
            totals[name],
            len(days[name]),
            len(matched_days[name]),
            len(unmatched_days[name] - matched_days[name]),
        )
        for name in totals
        for provider, key_id in [name]
    ]
    verdicts.sort(key=lambda item: (item.instrumented is not False, -item.tokens, item.api_key_id))
    return verdicts


def _recorded(
    project: Project, first: date, last: date, providers: Iterable[str], total: Any
) -> dict[tuple[date, str, str], Any]:
    """``total`` (an aggregate of ``DailyUsage``) of what Weckr recorded per day,
    provider and model as both sides name it (``_model_key``)."""
    recorded: dict[tuple[date, str, str], Any] = {}
    for day, provider, model, value in (
        DailyUsage.objects.filter(
            project=project, day__gte=first, day__lte=last, provider__in=sorted(providers)
        )
        .values("day", "provider", "model")
        .annotate(total=total)
        .order_by()
        .values_list("day", "provider", "model", "total")
    ):
        # A model's dated snapshots add up under its name.
        key = (day, provider, _model_key(model))
        recorded[key] = recorded.get(key, 0) + (value or 0)
    return recorded


def _replace_days(
    model: type[BilledCost] | type[ProviderKeyUsage],
    project: Project,
    provider: str,
    first: date,
    last: date,
    rows: list[Any],
) -> None:
    """The provider's stored rows of ``model`` for these days become ``rows``."""
    with transaction.atomic():
        model.objects.filter(
            project=project, provider=provider, day__gte=first, day__lte=last
        ).delete()
        model.objects.bulk_create(rows)


def _matching_keys(keys: dict[str, int], recorded: int) -> frozenset[str] | None:
    """The one set of keys whose tokens add up to ``recorded`` (within
    ``MATCH_TOLERANCE``), or None when no set or several do."""
    names = sorted(keys)
    if len(names) > MAX_KEYS_MATCHED:
        return None
    tolerance = max(Decimal(recorded) * MATCH_TOLERANCE, Decimal(1))
    found: frozenset[str] | None = None
    for mask in range(1 << len(names)):
        chosen = [name for bit, name in enumerate(names) if mask >> bit & 1]
        if abs(sum(keys[name] for name in chosen) - recorded) <= tolerance:
            if found is not None:
                return None
            found = frozenset(chosen)
    return found


def _model_key(name: str) -> str:
    """A model as both sides can name it: OpenAI's line items ("gpt-4o-2024-08-06,
    input") and dated snapshots meet the recorded name ("gpt-4o")."""
    model = name.split(",")[0].strip().lower()
    return _DATED.sub("", model) or "(unnamed)"


def _bounds(first: date, last: date) -> tuple[datetime, datetime]:
    return datetime.combine(first, time.min, UTC), datetime.combine(
        last + timedelta(days=1), time.min, UTC
    )


def _get(client: httpx.Client, url: str, headers: dict[str, str], params: Any) -> dict[str, Any]:
    try:
        response = client.get(url, headers=headers, params=params, timeout=30)
    except httpx.HTTPError as error:
        raise BillingError(f"{url} could not be reached: {error.__class__.__name__}") from None
    if response.status_code in (401, 403):
        raise BillingError(
            f"{url} refused the admin key (HTTP {response.status_code}): it must be an "
            "organization admin key."
        )
    if not response.is_success:
        raise BillingError(f"{url} answered HTTP {response.status_code}.")
    try:
        body = response.json()
    except ValueError:
        raise BillingError(f"{url} answered something that is not JSON.") from None
    if not isinstance(body, dict):
        raise BillingError(f"{url} answered something that is not a JSON object.")
    return body


#: Pages read at most per report (a month is one or two pages of 31 days).
MAX_PAGES = 50


def _pages(
    client: httpx.Client, url: str, headers: dict[str, str], params: list[tuple[str, Any]]
) -> Iterator[dict[str, Any]]:
    """Each bucket of a paginated report: ``data``, then ``page=<next_page>`` while
    ``has_more`` (both providers page this way)."""
    page: str | None = None
    for _ in range(MAX_PAGES):
        body = _get(client, url, headers, params + ([("page", page)] if page else []))
        buckets = body.get("data")
        if not isinstance(buckets, list):
            raise BillingError(f"{url} answered a page without a data list.")
        for bucket in buckets:
            if not isinstance(bucket, dict) or not isinstance(bucket.get("results"), list):
                raise BillingError(f"{url} answered a bucket without results.")
            yield bucket
        page = body.get("next_page")
        if not body.get("has_more") or not isinstance(page, str) or not page:
            return
    raise BillingError(f"{url} kept answering has_more after {MAX_PAGES} pages.")


def _openai_results(
    key: str, first: date, last: date, client: httpx.Client, url: str, group_by: Sequence[str]
) -> Iterator[tuple[date, dict[str, Any]]]:
    """Each result of an OpenAI organization report (costs, usage) with its day: a
    bucket per day, every page."""
    start, end = _bounds(first, last)
    params: list[tuple[str, Any]] = [
        ("start_time", int(start.timestamp())),
        ("end_time", int(end.timestamp())),
        ("bucket_width", "1d"),
        *(("group_by", name) for name in group_by),
        ("limit", 31),
    ]
    headers = {"Authorization": f"Bearer {key}"}
    for bucket in _pages(client, url, headers, params):
        day = _day(bucket.get("start_time"), url)
        for result in bucket["results"]:
            if not isinstance(result, dict):
                raise BillingError(f"{url} answered a result that is not one.")
            yield day, result


def _anthropic_results(
    key: str, first: date, last: date, client: httpx.Client, url: str, group_by: Sequence[str]
) -> Iterator[tuple[date, dict[str, Any]]]:
    """Each result of an Anthropic Admin API report (cost, usage) with its day: a
    bucket per day, every page."""
    start, end = _bounds(first, last)
    params: list[tuple[str, Any]] = [
        ("starting_at", start.strftime("%Y-%m-%dT%H:%M:%SZ")),
        ("ending_at", end.strftime("%Y-%m-%dT%H:%M:%SZ")),
        ("bucket_width", "1d"),
        *(("group_by[]", name) for name in group_by),
        ("limit", 31),
    ]
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    for bucket in _pages(client, url, headers, params):
        day = _bucket_day(bucket, url)
        for result in bucket["results"]:
            if not isinstance(result, dict):
                raise BillingError(f"{url} answered a result that is not one.")
            yield day, result


def _openai_lines(
    key: str, first: date, last: date, client: httpx.Client, url: str
) -> Iterator[BilledLine]:
    """OpenAI's organization Costs API grouped by line item ("gpt-4o-2024-08-06,
    input"); amounts in dollars (https://platform.openai.com/docs/api-reference/usage/costs)."""
    for day, result in _openai_results(key, first, last, client, url, ["line_item"]):
        amount = result.get("amount")
        if not isinstance(amount, dict):
            raise BillingError(f"{url} answered a result without an amount.")
        _usd_only(amount.get("currency"), url)
        line_item = str(result.get("line_item") or "")
        yield BilledLine(
            "openai",
            day,
            line_item,
            line_item.split(",")[0].strip(),
            _decimal(amount.get("value"), url),
        )


def _anthropic_lines(
    key: str, first: date, last: date, client: httpx.Client, url: str
) -> Iterator[BilledLine]:
    """Anthropic's Admin API cost report grouped by description ("Claude Sonnet 4
    Usage - Input Tokens", with its model); amounts are decimal strings in cents
    (https://docs.claude.com/en/docs/build-with-claude/usage-cost-api)."""
    for day, result in _anthropic_results(key, first, last, client, url, ["description"]):
        _usd_only(result.get("currency"), url)
        cents = _decimal(result.get("amount"), url)
        yield BilledLine(
            "anthropic",
            day,
            str(result.get("description") or result.get("cost_type") or ""),
            str(result.get("model") or ""),
            cents / 100,
        )


def _openai_key_usage(
    key: str, first: date, last: date, client: httpx.Client, url: str
) -> Iterator[KeyUsage]:
    """OpenAI's completions usage grouped by API key and model; ``input_tokens``
    counts the cached ones too (https://platform.openai.com/docs/api-reference/usage/completions)."""
    for day, result in _openai_results(key, first, last, client, url, ["api_key_id", "model"]):
        yield KeyUsage(
            "openai",
            day,
            str(result.get("api_key_id") or ""),
            str(result.get("model") or ""),
            _count(result.get("input_tokens"), url) + _count(result.get("output_tokens"), url),
        )


def _anthropic_key_usage(
    key: str, first: date, last: date, client: httpx.Client, url: str
) -> Iterator[KeyUsage]:
    """Anthropic's messages usage report grouped by API key and model; input in three
    parts, uncached, cache reads and cache writes (per cache lifetime)
    (https://docs.claude.com/en/api/admin-api/usage-cost/get-messages-usage-report)."""
    group_by = ["api_key_id", "model"]
    for day, result in _anthropic_results(key, first, last, client, url, group_by):
        writes = result.get("cache_creation") or {}
        if not isinstance(writes, dict):
            raise BillingError(f"{url} answered cache writes that are not an object.")
        tokens = sum(
            _count(result.get(name), url)
            for name in ("uncached_input_tokens", "cache_read_input_tokens", "output_tokens")
        ) + sum(_count(value, url) for value in writes.values())
        yield KeyUsage(
            "anthropic",
            day,
            str(result.get("api_key_id") or ""),
            str(result.get("model") or ""),
            tokens,
        )


def _bucket_day(bucket: dict[str, Any], url: str) -> date:
    """The UTC day of an Anthropic report's bucket (its ``starting_at``)."""
    starting_at = bucket.get("starting_at")
    if not isinstance(starting_at, str):
        raise BillingError(f"{url} answered a bucket without a day.")
    try:
        return date.fromisoformat(starting_at[:10])
    except ValueError:
        raise BillingError(f"{url} answered a day it names oddly.") from None


def _day(value: Any, url: str) -> date:
    if not isinstance(value, int) or isinstance(value, bool):
        raise BillingError(f"{url} answered a bucket without a start time.")
    return datetime.fromtimestamp(value, UTC).date()


def _decimal(value: Any, url: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BillingError(f"{url} answered an amount that is not a number.")
    try:
        amount = Decimal(str(value))
    except ArithmeticError:
        raise BillingError(f"{url} answered an amount that is not a number.") from None
    if not amount.is_finite():
        raise BillingError(f"{url} answered an amount that is not a number.")
    return amount


def _usd_only(currency: Any, url: str) -> None:
    if str(currency or "usd").lower() != "usd":
        raise BillingError(f"{url} billed in {currency}; Weckr compares dollars only.")


def _count(value: Any, url: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BillingError(f"{url} answered a token count that is not one.")
    return value
