# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned to the CPU build so pip never swaps in a CUDA wheel.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/laworder demo

test: $(STAMP)
	$(PY) -m pytest tests

clean:
	rm -rf $(VENV) runs demo_runs
