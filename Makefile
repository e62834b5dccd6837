# The two commands of the README: `make demo` (the Multi30k pipeline on the bundled data) and
# `make test` (the test suite). Both create .venv and install everything on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# -n 2: two pytest-xdist workers (tests spend much of their time in single-threaded fairseq
# start-up and decoding); --dist loadfile keeps a file's module fixtures on one worker;
# --no-loadscope-reorder keeps the order below (pytest-xdist otherwise starts with the files
# that hold the most tests; measured on a fresh clone the wall time was the same either way,
# 696 s against 706 s)
PYTEST_ARGS ?= -ra --durations=15 -n 2 --dist loadfile --no-loadscope-reorder

.PHONY: setup test demo benchmark benchmark-cpu clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Install the CPU torch wheel only when no torch is importable (GPU users keep their own).
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test,benchmark]"
	touch $@

setup: $(VENV)/.installed

# the recipe tests (minutes each) first, so that the two xdist workers start on them instead of
# meeting them last; pytest collects each file once
SLOW_FIRST = tests/examples/test_multi30k_recipe.py \
	tests/examples/test_multi30k_recipe_en_de.py tests/examples/test_language_model_wikitext.py \
	tests/examples/test_language_model_recipe.py

test: setup
	$(PY) -m pytest -q $(SLOW_FIRST) tests $(PYTEST_ARGS)

# then the bytes: the teacher's fp16 export (the reference of the Δ column), post-training
# int4/int2 codes of its E and int4 codes of the 8x student's f(U) (decode only, test set; the
# by-budget table chooses on valid, so it needs the valid decodes: run without --subsets test):
# benchmarks/bytes_frontier.py
demo: setup
	$(PY) -m examples.multi30k.run --profile demo
	$(PY) -m benchmarks.bytes_frontier --results results/multi30k-demo --profile demo \
	    --subsets test --points teacher_fp16 teacher_int4 teacher_int2 distilled_8x_ptq_int4

# use a GPU: up to 12 of the small trainings share it (benchmarks/results/multi30k-full-h100/)
benchmark: setup
	$(PY) -m examples.multi30k.run --profile full --jobs 12

# 2 CPU cores: teacher and dense rows 12 epochs each, 500 updates per student row (README)
benchmark-cpu: setup
	$(PY) -m examples.multi30k.run --profile cpu

clean:
	rm -rf $(VENV) build *.egg-info
