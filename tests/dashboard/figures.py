"""Money as the pages print it, formatted here independently of the views."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal


def amount(value: Decimal, places: int = 2) -> str:
    """``1,234.57`` (half up), as in the tables; ``-3.20`` for negatives, and
    ``0.00`` for a loss that rounds to nothing (Django's floatformat writes no "-0")."""
    quantum = Decimal(1).scaleb(-places)
    rounded = Decimal(value).quantize(quantum, rounding=ROUND_HALF_UP)
    return f"{abs(rounded) if rounded.is_zero() else rounded:,.{places}f}"


def dollars(value: Decimal) -> str:
    """``$1,234.57`` / ``-$3.20``, as on the cards."""
    text = amount(abs(value))
    return f"-${text}" if value < 0 else f"${text}"


def row_cells(html: str, attribute: str, key: str) -> list[str]:
    """The cell texts of the table row marked ``data-<attribute>="<key>"``."""
    match = re.search(rf'<tr data-{attribute}="{re.escape(key)}">(.*?)</tr>', html, re.S)
    assert match, f"no row {attribute}={key!r}"
    cells = re.findall(r"<td[^>]*>(.*?)</td>", match.group(1), re.S)
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in cells]


def card_value(html: str, card_id: str) -> str:
    match = re.search(rf'id="{card_id}">.*?<div class="value[^"]*">(.*?)</div>', html, re.S)
    assert match, f"no card {card_id}"
    return match.group(1).strip()
