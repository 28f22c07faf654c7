# Two commands for a fresh machine with python3 and pip:
#   make demo   - create .venv, install, run the quickstart reproduction headlessly into outputs/
#   make test   - create .venv if needed, install, run the whole suite (ruff, pytest, nbval)
#   make docs   - build the course website offline into docs/_build/html
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.densflow-installed
PYTEST := $(BIN)/python -m pytest

.PHONY: install demo test test-fast docs fresh-clone clean

install: $(STAMP)

# Re-install only when the dependency list changes; the package itself is editable.
# TORCH_INDEX=https://download.pytorch.org/whl/cpu installs PyTorch's CPU build first (no CUDA libraries).
TORCH_INDEX ?=
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || \
		{ echo "error: '$(PYTHON) -m venv' failed; install Python's venv module (Debian/Ubuntu: apt install python3-venv)" >&2; exit 2; }
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install --quiet --disable-pip-version-check --index-url $(TORCH_INDEX) torch torchvision)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev,docs]"
	@touch $@

# The quickstart reproduction, headless: a small DenseFlow trained on real photos on the CPU.
demo: $(STAMP)
	@mkdir -p outputs
	$(BIN)/papermill reproduce/quickstart.ipynb outputs/quickstart.ipynb -p out_dir outputs/quickstart --kernel python3
	@echo ""
	@echo "executed notebook: outputs/quickstart.ipynb"
	@echo "samples:           outputs/quickstart/samples.png"
	@echo "results:           outputs/quickstart/results.json"
	@echo "learning curve:    outputs/quickstart/metrics.jsonl (plotted in the notebook)"

# pytest exits 5 when it collects nothing; make treats that as a failure like any other.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(PYTEST) tests -m "" --doctest-modules densflow
	@if ls notebooks/*.ipynb >/dev/null 2>&1; then \
		echo "== nbval: teaching notebooks (strict outputs) =="; \
		$(PYTEST) --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg notebooks; \
	fi
	@if ls reproduce/*.ipynb >/dev/null 2>&1; then \
		echo "== nbval: reproduction notebooks (lax) =="; \
		$(PYTEST) --nbval-lax --nbval-current-env reproduce; \
	fi

# The unit tests without the paper-size model and the notebooks: for quick iteration.
test-fast: $(STAMP)
	$(PYTEST)

# The course website: the notebooks with their committed outputs (not re-executed), docs/*.md and the
# API reference, offline (MathJax is served from the site). Warnings fail the build.
docs: $(STAMP)
	$(BIN)/python -m sphinx -W --keep-going -b html -c docs . docs/_build/html
	@echo ""
	@echo "course website: docs/_build/html/index.html"

# What CI sees: the committed tree, cloned into an empty folder with nothing beside it.
fresh-clone:
	d=$$(mktemp -d) && git clone -q . "$$d/densflow" && cd "$$d/densflow" && bash .ci/run

clean:
	rm -rf $(VENV) outputs .pytest_cache docs/_build docs/api
