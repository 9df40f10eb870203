# mlops_kit: `make run` and `make test` set up what they need on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
MUTATE_STAMP := $(VENV)/.mutate-stamp
ARGS   ?=
PYTEST_ARGS ?=
# JupyterLab rooted at the project (runs/, parameters/, reports in its file browser), opening the control panel
LAB_ARGS ?= --ServerApp.root_dir='$(CURDIR)' '$(CURDIR)/notebooks/00_control_panel.ipynb'
# as root (servers, containers) JupyterLab refuses to start unless told --allow-root
LAB_ROOT = $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: setup git-filters run test test-fast lab bench mutate screenshots clean-runs

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	$(MAKE) --no-print-directory git-filters
	touch $(STAMP)

## notebooks are committed without outputs: nbstripout strips them on `git add` (cell tags and ids
## kept). A fresh clone's notebooks are "racily clean": the index is refreshed once, here, so that
## `git status` (which every run records) never has to run the filter over every notebook.
# The filter names the venv of the worktree git runs it in (a relative VENV), so every
# `git worktree` of the repository strips with its own, and none points at a removed one.
FILTER_BIN = $(if $(filter /%,$(BIN)),$(BIN),$$(git rev-parse --show-toplevel)/$(BIN))

git-filters:
	@if git rev-parse --git-dir >/dev/null 2>&1; then \
	  git config filter.nbstripout.clean '"$(FILTER_BIN)/nbstripout" --keep-id'; \
	  git config filter.nbstripout.smudge cat; \
	  git config diff.ipynb.textconv '"$(FILTER_BIN)/nbstripout" -t --keep-id'; \
	  git update-index -q --refresh >/dev/null 2>&1 || true; fi

## the pipeline on the embedded default (ARGS="-p parameters/x.yaml --set k=v" for others)
run: setup
	$(BIN)/mlops-kit run $(ARGS)

## every test (real kernels, servers, containerd, browser); .ci/run installs the system parts
test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## the tests that need nothing but Python
test-fast: setup
	$(BIN)/python -m pytest -m "not containerd and not browser and not slow" $(PYTEST_ARGS)

lab: setup
	$(if $(LAB_ROOT),@echo "make lab: you are root (uid 0): JupyterLab starts with --allow-root")
	$(BIN)/jupyter lab $(LAB_ROOT) $(LAB_ARGS)

bench: setup
	$(BIN)/python benchmarks/pipeline.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/image.py
	$(BIN)/python benchmarks/remote.py

## mutation testing of the guards with cosmic-ray (docs/mutation.md): hours for every target on
## two cores, so not in CI; TARGETS="gate run-path" for some, `.venv/bin/python mutation/run.py --list`
mutate: $(MUTATE_STAMP)
	$(BIN)/python mutation/run.py $(TARGETS)

$(MUTATE_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,mutate]'
	touch $(MUTATE_STAMP)

## regenerate the README's panel screenshots (docs/screenshots/) in headless Chromium
screenshots: setup
	MLOPS_KIT_SCREENSHOTS_DIR=docs/screenshots $(BIN)/python -m pytest tests/test_browser.py -p no:cacheprovider

clean-runs:
	rm -rf runs/
