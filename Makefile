# The two commands a newcomer runs:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo quickstart test bench mutation clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[ray,gpu,test,browser]'
	touch $@

demo: $(VENV)/.installed          ## set everything up and run the whole loop (a few minutes)
	$(PY) examples/retrain_loop.py

quickstart: $(VENV)/.installed    ## just the cost of two training runs (a minute)
	$(PY) examples/quickstart.py

test: $(VENV)/.installed          ## run the test suite (installs Chromium for the UI test and PostgreSQL where it can)
	-bash .ci/install-browser $(PY)
	-bash .ci/install-postgres $(PY)
	$(PY) -m pytest -n 2 --dist loadgroup

bench: $(VENV)/.installed         ## run every benchmark (long; figures go to bench/README.md)
	$(PY) bench/bench_overhead.py
	$(PY) bench/bench_attribution.py
	$(PY) bench/bench_drift.py
	$(PY) bench/bench_report.py
	$(PY) bench/bench_ray.py
	$(PY) bench/bench_retrain.py
	$(PY) bench/bench_headline.py

$(VENV)/.mutation: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[mutation]'
	touch $@

# `make mutation MUTMUT_ARGS="--max-children 1"` keeps the other cores free (default: one worker per core)
MUTMUT_ARGS ?=
mutation: $(VENV)/.mutation      ## mutation testing of the money and decision paths (minutes; not in `make test`)
	rm -rf mutants
	$(VENV)/bin/mutmut run $(MUTMUT_ARGS) > mutants.log 2>&1 || (tail -5 mutants.log; exit 1)
	$(PY) bench/mutation_score.py

clean:
	rm -rf $(VENV) mlflow.db mlartifacts mlruns finops-demo mutants mutants.log
