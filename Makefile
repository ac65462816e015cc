# The two set-up commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test,report]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)
	chmod 600 configs/local/dev-keys/*.key  # git keeps no mode but x: agentd warns at 0644

demo: $(STAMP)
	$(VENV)/bin/agentd demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -n auto  # pytest-xdist: a worker a core

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(VENV)/bin/agentd bench transport

clean:
	rm -rf $(VENV) .run .pytest_cache .hypothesis
