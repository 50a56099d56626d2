# make demo: set up .venv from nothing but python3, then run the demo.
# make test: the same set-up, then ruff, mypy --strict (core and plugins), the docs build and pytest.
# make fuzz: randomized property-based exploration (not part of make test).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PLUGINS := $(sort $(wildcard plugins/*))
# every benchmark script takes --json FILE (docs/benchmarks.md, "Adding a benchmark")
BENCHMARKS := $(filter-out benchmarks/report.py benchmarks/plot.py,$(sort $(wildcard benchmarks/*.py)))

.PHONY: demo test lint typecheck pytest fuzz docs bench plots setup provision pythons clean

setup: $(STAMP)

# pip -qq: errors only (a machine whose pip configuration names missing find-links
# directories would otherwise print a warning per package)
# PYTHONWARNINGS: setuptools warns about every editable install (a dozen lines each)
# --group dev: the development tools (pyproject.toml [dependency-groups], PEP 735),
# kept out of the published metadata
# @: one line says what the set-up does (make's echo of the pip command, an -e per
# plugin, ran to 230 characters: three lines of an 80-column terminal, cut mid-word)
$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml)
	@echo "setup: $(VENV) with the core, its $(words $(PLUGINS)) plugins and the dev tools (a few minutes)"
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --quiet --upgrade pip
	@PYTHONWARNINGS="ignore:Editable installation" \
	  $(BIN)/python -m pip install --quiet --quiet --group dev -e . $(foreach p,$(PLUGINS),-e $(p))
	@touch $(STAMP)

# without a usable /dev/kvm the demo skips its kvm pairs: say where they run (on a
# terminal wrapped at words by the CLI's own on_screen, as its messages are)
demo: $(STAMP)
	$(BIN)/irqbypass demo
	@$(BIN)/python -c 'from importlib import import_module as i, util as u; import sys; \
	  from irqbypass.cli.output import on_screen; \
	  r = u.find_spec("irqbypass_kvm") and i("irqbypass_kvm").unavailable_reason(); \
	  r and print(on_screen(f"demo: the kvm pairs were skipped here ({r}); make " \
	  "guest-demo runs the demo in the test guest, whose KVM (kvm_amd on TCG) runs them", \
	  sys.stdout))'

# docs before pytest: tests/docs opens the built pages in a browser
test: lint typecheck docs pytest

lint: $(STAMP)
	$(BIN)/ruff check core plugins tests benchmarks docs/examples
	$(BIN)/ruff format --check core plugins tests benchmarks docs/examples

typecheck: $(STAMP)
	$(BIN)/mypy core/irqbypass $(foreach p,$(PLUGINS),$(p)/irqbypass_$(notdir $(p)))

# the system packages, then Debian 6.12's linux/vfio.h into .cache (no root needed:
# bookworm's own header predates the VFIO cdev that tests/plugins/vfio/test_abi.py checks)
provision:
	@bash scripts/provision
	@bash scripts/vfio-header

# The oldest CPython requires-python claims (3.10: pyenv's, which this project's
# machines come with) and the newest Debian ships (3.14, from Debian unstable),
# beside the host's 3.11, for tests/packaging (the wheels installed and run under
# each) and `make test-python`/`test-pythons`; scripts/python-for finds one, and
# scripts/debian-python fetches one Debian has; where neither can, it says so and
# the tests that need it skip
OLDEST_PYTHON ?= 3.10
NEWEST_PYTHON ?= 3.14
pythons: provision
	@mkdir -p .cache && for v in $(OLDEST_PYTHON) $(NEWEST_PYTHON); do \
	  where=$$(scripts/python-for $$v 2>/dev/null || scripts/debian-python $$v 2>.cache/debian-python.log) \
	  && echo "pythons: $$v at $$where" \
	  || echo "pythons: no Python $$v (scripts/python-for $$v, .cache/debian-python.log); its tests skip"; \
	done

# Hypothesis derandomized, no example database: the same commit, the same result
pytest: $(STAMP) provision pythons
	$(BIN)/pytest --hypothesis-profile=ci

# randomized exploration (never part of make test): the property-based tests with a
# random seed and many more examples; SEED=N repeats a run, EXAMPLES=N scales it.
# A failure prints its seed and its shrunk example: make it an @example or a test.
FUZZ_EXAMPLES ?= 2000
fuzz: $(STAMP)
	@seed=$${SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; \
	echo "fuzz: seed $$seed, $(FUZZ_EXAMPLES) examples a test (make fuzz SEED=$$seed repeats it)"; \
	IRQBYPASS_CONFIG_EXAMPLES=$(FUZZ_EXAMPLES) IRQBYPASS_MACHINE_EXAMPLES=$(FUZZ_EXAMPLES) \
	  $(BIN)/pytest -m hypothesis -p no:cacheprovider --hypothesis-profile=fuzz \
	  --hypothesis-seed=$$seed -q \
	  || { echo "fuzz: failed with seed $$seed (make fuzz SEED=$$seed)"; exit 1; }

# the host's suite (no guest, no slow soak) under another CPython, in .venv-VERSION
# (never part of make test: docs/testing.md says what it costs): test-python under
# the newest, test-python-3.10 (or any VERSION scripts/python-for finds) under that
# one, test-pythons under the oldest and the newest
.PHONY: test-python test-pythons
test-python: test-python-$(NEWEST_PYTHON)
test-pythons: test-python-$(OLDEST_PYTHON) test-python-$(NEWEST_PYTHON)
test-python-%: $(STAMP) pythons
	rm -rf .venv-$*
	$$(scripts/python-for $*) -m venv --without-pip .venv-$*
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip \
	  --python .venv-$*/bin/python install --quiet --quiet --group test \
	  -e . $(foreach p,$(PLUGINS),-e $(p))
	IRQBYPASS_GUEST=off .venv-$*/bin/python -m pytest --hypothesis-profile=ci \
	  -p no:cacheprovider -q tests/core tests/plugins docs/examples -m "not slow and not guest"

# the sdists as a distribution builds and tests them (as Debian's pybuild): each
# wheel built from its sdist offline, installed into a fresh venv with no index,
# and the host's suite run from the unpacked core sdist against the installed
# distributions (scripts/test-sdist; minutes: never part of make test);
# make test-sdist SDIST_PYTHON=3.10 does it under another CPython
SDIST_PYTHON ?=
.PHONY: test-sdist
test-sdist: $(STAMP) pythons
	scripts/test-sdist $(SDIST_PYTHON)

# the real-device tests alone, in their test guests (tests/guest; make pytest runs them too)
.PHONY: guest-test guest-demo
# IRQBYPASS_GUEST_KVM=0 make guest-test: without the kvm family (KVM nested in the guests)
guest-test: $(STAMP) provision
	$(BIN)/pytest -m guest

# the demo in the test guest (kvm_amd on TCG's emulated SVM): its kvm pairs run
# there on a host without /dev/kvm (a boot: a few minutes)
guest-demo: $(STAMP) provision
	scripts/guest kvm --exec 'irqbypass demo' && cat .cache/guest/kvm-6.1/exec.out

# every page written into a fresh folder (the parsed sources are cached in
# docs/_build/doctrees): an incremental build leaves the page of a removed module
# in place (viewcode), and tests/docs opens every page there; .complete tells it
# the build ended
docs: $(STAMP)
	rm -rf docs/_build/html.new
	$(BIN)/sphinx-build -q -W --keep-going -b html -d docs/_build/doctrees docs docs/_build/html.new
	rm -rf docs/_build/html
	mv docs/_build/html.new docs/_build/html
	touch docs/_build/html/.complete

# run every benchmark (minutes; never part of make test), keep its JSON, redraw the plots
bench: $(STAMP)
	for b in $(BENCHMARKS); do \
	  $(BIN)/python $$b --json benchmarks/results/$$(basename $$b .py).json || exit 1; done
	$(BIN)/python benchmarks/plot.py

# redraw docs/_static/benchmarks/*.svg from benchmarks/results/*.json
plots: $(STAMP)
	$(BIN)/python benchmarks/plot.py

clean:
	rm -rf $(VENV) .venv-* docs/_build .pytest_cache .mypy_cache .ruff_cache
