"""A brand new ``django-admin startproject`` wired up from the README alone: its
"In your Django project" snippets appended as written, then ``manage.py migrate``
and ``check``, and one call of a user over the cap refused before the provider."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: A capped call in the new project: the plan allows nothing, so the call must be
#: refused by Weckr before the OpenAI client tries to reach its (closed) port.
CAPPED_CALL = """
import openai
from weckr_core import WeckrCapError, attribute, wrap
from weckr_django.models import Plan, Project

project = Project.objects.create(name="Readme SaaS")
Plan.objects.create(project=project, name="free", monthly_price_usd=0, monthly_cap_usd=0)
client = wrap(openai.OpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1", max_retries=0))
with attribute(user_id="42", plan="free"):
    try:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=10
        )
    except WeckrCapError as error:
        print("refused:", error)
"""


def readme_snippets() -> dict[str, str]:
    """The README's python blocks of "In your Django project", by the file each
    one's first line names (``# urls.py``, ``# settings.py``)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## In your Django project", 1)[1].split("\n## ", 1)[0]
    snippets = {}
    for block in re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL):
        first, _, rest = block.partition("\n")
        match = re.fullmatch(r"# (\w+\.py)", first.strip())
        if match:
            snippets[match[1]] = rest
    return snippets


def run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "readmesaas.settings"}
    env.pop("DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_a_new_project_set_up_from_the_readme_caps_a_call(tmp_path: Path) -> None:
    snippets = readme_snippets()
    assert set(snippets) == {"urls.py", "settings.py"}
    run(["-m", "django", "startproject", "readmesaas", str(tmp_path)], tmp_path)
    package = tmp_path / "readmesaas"
    for name, snippet in snippets.items():
        with (package / name).open("a") as file:
            file.write("\n" + snippet)

    run(["manage.py", "migrate", "--noinput", "-v", "0"], tmp_path)
    checked = run(["manage.py", "check"], tmp_path)
    assert "System check identified no issues" in checked
    said = run(["manage.py", "shell", "-c", CAPPED_CALL], tmp_path)
    assert "refused: Weckr: spending cap reached for user 42 on plan free" in said
