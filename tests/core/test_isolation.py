from __future__ import annotations

import subprocess
import sys


def test_weckr_core_imports_no_framework() -> None:
    """weckr_core must stay usable in a process without Django, LangChain or CrewAI."""
    script = (
        "import sys, weckr_core, weckr_core.client, weckr_core.backends.http, "
        "weckr_core.guards, weckr_core.usage, weckr_core.pricing\n"
        "weckr_core.price_usage('gpt-4o', input_tokens=1, output_tokens=1)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'django', 'langchain', 'langchain_core', 'langgraph', 'crewai', 'litellm'})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
