# DwellFi: `make run` starts the whole stack locally, `make test` runs the suite.
# Both work from a fresh clone: the virtualenv is made (again) when a requirements
# file changes (requirements.txt: what runs; requirements-dev.txt: plus the local
# stack's and the tests' tools). Configuration comes from the environment (see .env.example).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# node_modules/ holds the browser libraries served as static files (uPlot, htmx, tus).
NODE_STAMP := node_modules/.installed
PORT ?= 8000
ARGS ?=

.PHONY: run test bench lint fmt check-deploy clean

# run: migrate, then the Procfile (daphne, a Celery worker, beat, and an embedded
# Redis without REDIS_URL) on http://127.0.0.1:$(PORT)
run: $(STAMP) $(NODE_STAMP)
	PORT=$(PORT) exec $(BIN)/python -m dwellfi.dev run

# test: the whole suite; pytest arguments through ARGS="-k upload -x"
test: $(STAMP) $(NODE_STAMP)
	exec $(BIN)/python -m dwellfi.dev test $(ARGS)

# bench: the benchmarks against the PostgreSQL and Redis in DATABASE_URL/REDIS_URL
# (default: the local servers, database dwellfi_bench); prints a markdown table
bench: $(STAMP) $(NODE_STAMP)
	exec $(BIN)/python -m bench.run $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# check-deploy: Django's deployment checks on production-like settings
check-deploy: $(STAMP) $(NODE_STAMP)
	DJANGO_DEBUG=0 DJANGO_ALLOWED_HOSTS=dwellfi.example.com \
	DJANGO_SECRET_KEY="$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
	$(BIN)/python manage.py check --deploy --fail-level WARNING

# clean: local state and caches (the database and demo account under var/ too)
clean:
	rm -rf var staticfiles node_modules .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(NODE_STAMP): package-lock.json
	npm ci --no-audit --no-fund
	touch $@
