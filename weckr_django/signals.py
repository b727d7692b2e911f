"""Signals Weckr sends.

``usage_ingested``: new usage is committed. Sent by ``ingest.ingest_records`` after
the commit, with ``sender=Project``, ``project_id`` (str), ``user_keys`` (the
rollup user keys with new calls, "" for calls made with no user) and
``account_keys`` (the accounts with new calls). The app connects
the follow-up work to it (``tasks.on_usage_ingested``: loop detection, budget
alerts); your code may listen too. Receivers run on the ingesting thread, so keep
them quick; one that raises is logged and does not undo the ingest.
"""

from __future__ import annotations

from django.dispatch import Signal

usage_ingested = Signal()
