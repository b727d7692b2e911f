"""``WECKR["INSTRUMENT"] = True``: the SDKs are patched when Django starts, and a call
from a client the code made on its own lands in the database, attributed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from tests.core import providers as p
from weckr_django.models import UsageEvent
fake = p.FakeProvider(p.openai_chat_body("gpt-4o-mini", p.openai_usage(120, 30)))
client = p.openai_client(fake)  # a client of the project's own, never wrapped
client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "Hi"}],
    weckr_user_id="u-7",
    weckr_feature="summaries",
    weckr_agent="writer",
)
print(json.dumps(list(UsageEvent.objects.values_list(
    "user_id", "feature", "agent", "input_tokens", "output_tokens"
))))
"""


def run(tmp_path: Path, *, instrument: bool) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "WECKR_TEST_SQLITE": str(tmp_path / "db.sqlite3"),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("WECKR_INSTRUMENT", None)
    if instrument:
        env["WECKR_INSTRUMENT"] = "1"
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_setting_records_every_sdk_call_of_the_process(tmp_path: Path) -> None:
    done = run(tmp_path, instrument=True)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert rows == [["u-7", "summaries", "writer", 120, 30]]


def test_without_the_setting_nothing_is_patched(tmp_path: Path) -> None:
    done = run(tmp_path, instrument=False)
    # The SDK itself refuses the keyword: nothing took it out.
    assert done.returncode != 0
    assert "unexpected keyword argument 'weckr_user_id'" in done.stderr
