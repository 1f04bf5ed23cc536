# The two commands a newcomer runs:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[ray,gpu,test,browser]'
	touch $@

demo: $(VENV)/.installed          ## set everything up and run the main example
	$(PY) examples/quickstart.py

test: $(VENV)/.installed          ## run the test suite (installs Chromium for the UI test where it can)
	-bash .ci/install-browser $(PY)
	$(PY) -m pytest

bench: $(VENV)/.installed         ## run the benchmarks (minutes; figures go to bench/README.md by hand)
	$(PY) bench/bench_overhead.py
	$(PY) bench/bench_attribution.py

clean:
	rm -rf $(VENV) mlflow.db mlartifacts mlruns
