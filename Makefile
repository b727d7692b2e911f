# The two entry points for a newcomer: `make demo` and `make test`.
# Both create .venv when it is missing and install what they need: the demo only
# the Django app and the provider SDK it calls, the tests everything.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed

.PHONY: demo serve test lint typecheck unit integration browser bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]" -c constraints.txt
	touch $(STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[demo]" -c constraints.txt
	touch $(DEMO_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy weckr_core weckr_django weckr_langchain weckr_crewai example_project tests bench

test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest
	$(MAKE) integration

# Real PostgreSQL (127.0.0.1:5432), Redis (127.0.0.1:6379) and a Celery worker.
integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration --ds=tests.settings_integration

bench: $(STAMP)
	$(BIN)/python -m bench

demo: $(DEMO_STAMP)
	$(BIN)/python example_project/demo.py

# The server as in production (gunicorn, DEBUG off) on whatever DATABASE_URL and
# CELERY_BROKER_URL say; by default the embedded SQLite file, tasks in-process.
serve: $(STAMP)
	$(BIN)/python example_project/manage.py migrate --noinput
	$(BIN)/python example_project/manage.py collectstatic --noinput --verbosity 0
	$(BIN)/gunicorn -c example_project/gunicorn.conf.py example_project.wsgi

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
