# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck contracts unit soak bench clean sysdeps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/qkmsctl demo $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

contracts: $(STAMP)
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider

test: lint typecheck contracts sysdeps unit

# Debian packages some tests use: promtool (prometheus) checks the alert rules in
# docs/monitoring, chromium runs the dashboard's browser test (Playwright, no browser
# download). Installed with apt-get when missing and possible (root); where they cannot be,
# those tests skip and say why.
APT_INSTALL = (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	apt-get install -y -qq --no-install-recommends $(1)) >/dev/null 2>&1
sysdeps:
	@command -v promtool >/dev/null 2>&1 || $(call APT_INSTALL,prometheus) \
		|| echo "promtool could not be installed: its rule tests will skip"
	@test -x /usr/bin/chromium || $(call APT_INSTALL,chromium) \
		|| echo "chromium could not be installed: the dashboard browser test will skip"

# Prints the soak table at the end (tests/soaktable.py) and writes it as JSON.
soak: $(STAMP)
	QKMS_SOAK_REPORT=benchmarks/results/soak.json $(BIN)/pytest -q -p no:cacheprovider -m soak tests

# benchmarks/_*.py are shared helpers; *_compare.py compare two code trees given by hand.
bench: $(STAMP)
	for b in benchmarks/*.py; do \
		case $$(basename $$b) in _*|*_compare.py) continue;; esac; \
		$(BIN)/python $$b || exit 1; \
	done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
