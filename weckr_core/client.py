from __future__ import annotations

# Placeholder until the client lands (issue P1); replaced by the real Weckr client.


class Weckr:
    pass
