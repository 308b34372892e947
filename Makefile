# Set-up and everyday commands. `make demo` and `make test` each do the whole set-up first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 8501
DEMO_HOME ?= demo-home
TORCH_INDEX ?=

.PHONY: demo test lint browser postgres clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# torch pinned first: the project asks only for a range, which pip fills with the newest
	@# release. From PyPI alone, Linux gets the CUDA build (~3 GB with its nvidia packages);
	@# TORCH_INDEX=https://download.pytorch.org/whl/cpu takes PyTorch's CPU build instead.
	$(PY) -m pip install -q "torch==2.13.0" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[train,dev,postgres]"
	touch $@

# Debian's chromium drives the real-browser tests (Playwright, no browser download).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# Debian's PostgreSQL server: tests/db/test_postgres.py starts a throwaway one of its own.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }

demo: $(VENV)/.installed
	$(VENV)/bin/herdbook demo --home $(DEMO_HOME) --serve --port $(PORT)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(VENV)/.installed browser postgres lint
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_HOME)
