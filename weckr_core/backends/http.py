from __future__ import annotations

# Placeholder until the HTTP backend lands (issue P1).


class HttpBackend:
    pass
