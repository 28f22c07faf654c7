# Two commands for a fresh machine with python3 and pip:
#   make demo   - create .venv, install densflow with the notebooks extra, and run the quickstart
#                 reproduction headlessly into outputs/, its log streaming to the terminal
#   make test   - create .venv if needed, install the dev and docs extras, run every test tier
# and:
#   make test-fast  - the fast tier only (plain `pytest`: a few minutes on 2 cores)
#   make docs       - build the course website offline into docs/_build/html
#   make lock       - regenerate constraints.txt, the exact versions `make install` uses
#
# Installation knobs:
#   LOCK=0        the newest versions pyproject.toml allows, instead of constraints.txt's
#   GPU=1         PyPI's default torch wheels (the CUDA build); the default where nvidia-smi sees a GPU
#   GPU=0         PyTorch's CPU wheels first (the default without a GPU); if that index cannot be
#                 reached, one line says so and the default wheels are installed instead
#   TORCH_INDEX=URL   install torch and torchvision from this index first (overrides GPU)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check --quiet
PYTEST := $(BIN)/python -m pytest
LOCK   ?= 1
CONSTRAINTS := $(if $(filter 1,$(LOCK)),-c constraints.txt)
GPU    ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
TORCH_INDEX ?= $(if $(filter 1,$(GPU)),,https://download.pytorch.org/whl/cpu)
# One stamp per set of extras and lock mode: switching either re-installs.
NOTEBOOKS := $(VENV)/.installed-notebooks-lock$(LOCK)
DEV       := $(VENV)/.installed-dev-lock$(LOCK)
DEPS      := pyproject.toml constraints.txt

.PHONY: install demo test test-fast docs lock fresh-clone clean

install: $(NOTEBOOKS)

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) || { echo "error: '$(PYTHON) -m venv' failed; install Python's venv module (Debian/Ubuntu: apt install python3-venv)" >&2; exit 2; }

# torch and torchvision first, from TORCH_INDEX when it answers; the extras below then keep them.
$(VENV)/.torch-$(GPU)-lock$(LOCK): constraints.txt | $(BIN)/python
	@if [ -z "$(TORCH_INDEX)" ]; then :; \
	elif $(BIN)/python -c "import urllib.request as u; u.urlopen('$(TORCH_INDEX)/torch/', timeout=20)" 2>/dev/null; then \
		echo "installing PyTorch's CPU build from $(TORCH_INDEX) (GPU=1 for the CUDA build)"; \
		$(PIP) install $(CONSTRAINTS) --index-url $(TORCH_INDEX) torch torchvision; \
	else \
		echo "note: $(TORCH_INDEX) cannot be reached; installing PyPI's default torch wheels instead (the CUDA build, about 4 GB more)"; \
	fi
	@touch $@

$(NOTEBOOKS): $(DEPS) $(VENV)/.torch-$(GPU)-lock$(LOCK)
	$(PIP) install $(CONSTRAINTS) -e ".[notebooks]"
	@touch $@

$(DEV): $(DEPS) $(VENV)/.torch-$(GPU)-lock$(LOCK)
	$(PIP) install $(CONSTRAINTS) -e ".[dev,docs]"
	@touch $@

# The quickstart reproduction, headless: a small DenseFlow trained on real photos on the CPU. The
# notebook's log lines (steps, bits/dim, images/s, ETA, evaluations, checkpoints) stream here.
demo: $(NOTEBOOKS)
	@mkdir -p outputs
	$(BIN)/papermill reproduce/quickstart.ipynb outputs/quickstart.ipynb -p out_dir outputs/quickstart --kernel python3 --log-output --no-progress-bar
	@echo ""
	@echo "executed notebook: outputs/quickstart.ipynb"
	@echo "samples:           outputs/quickstart/samples.png"
	@echo "results:           outputs/quickstart/results.json"
	@echo "learning curve:    outputs/quickstart/metrics.jsonl (plotted in the notebook)"

# Every tier: ruff, pytest with every marker (-m ""), nbval on the notebooks. pytest exits 5 when it
# collects nothing; make treats that as a failure like any other.
test: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DENSFLOW_LOCKED=$(LOCK) $(PYTEST) tests -m "" --doctest-modules densflow --durations=15
	@echo "== nbval: teaching notebooks (strict outputs) =="
	$(PYTEST) --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg notebooks
	@echo "== nbval: reproduction notebooks (lax) =="
	$(PYTEST) --nbval-lax --nbval-current-env reproduce
	@test -x /usr/bin/chromium || echo "NOTE: the browser tests (course website, JupyterLab) were skipped: no Chromium at /usr/bin/chromium; install it with 'apt-get install -y --no-install-recommends chromium' (CI does)"

# The fast tier: every module's core behaviour, without training runs, notebooks, browsers or compiles.
test-fast: $(DEV)
	$(PYTEST) --durations=10

# The course website: the notebooks with their committed outputs (not re-executed), docs/*.md and the
# API reference, offline (MathJax is served from the site). Warnings fail the build.
docs: $(DEV)
	$(BIN)/python -m sphinx -W --keep-going -b html -c docs . docs/_build/html
	@echo ""
	@echo "course website: docs/_build/html/index.html"

# constraints.txt: the exact versions of every dependency and extra, resolved afresh in an empty
# virtual environment (Python 3.11, Linux x86-64, PyPI's default torch wheels).
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --disable-pip-version-check --quiet -e ".[dev,docs,download]"
	{ echo "# The exact versions densflow is tested with: 'make install' installs them (LOCK=0: the newest"; \
	  echo "# versions pyproject.toml allows). Regenerate with 'make lock'. Resolved on Python $$(.lock-venv/bin/python -c 'import platform; print(platform.python_version(), platform.system(), platform.machine())')."; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable --disable-pip-version-check; } > constraints.txt
	rm -rf .lock-venv

# What CI sees: the committed tree, cloned into an empty folder with nothing beside it.
fresh-clone:
	d=$$(mktemp -d) && git clone -q . "$$d/densflow" && cd "$$d/densflow" && bash .ci/run

clean:
	rm -rf $(VENV) outputs .pytest_cache docs/_build docs/api
