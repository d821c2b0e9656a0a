# The two set-up commands of the README, and their helpers.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install bench clean

$(BIN)/lightpipe: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,cluster]'
	touch $@

install: $(BIN)/lightpipe

# the service with a simulated scan processed by a finished demo job and a simulated EIGER stream processed
# live, in a fresh state folder each time so that the admin token is printed; open the URL, log in with
# the token, Ctrl-C to stop (`lightpipe demo --headless` is the same scan in the terminal only)
DEMO_STATE ?= .lightpipe-demo
demo: install
	rm -rf $(DEMO_STATE)
	$(BIN)/lightpipe serve --demo --state-dir $(DEMO_STATE) --data-root $(DEMO_STATE)/data

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) results .pytest_cache $(DEMO_STATE)
