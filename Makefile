# make demo  - install into .venv, train the reference recipe on the built-in synthetic data (minutes on a CPU), write the report
# make test  - install into .venv (with test tools) and run lint + the test suite
VENV ?= .venv
TEST_WORKERS ?= 2  # pytest-xdist workers (the suite is mostly single-threaded subprocesses)
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install demo test lint clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

# The demo trains the reference recipe (configs/demo.yaml: light augmentation, 64 px, 10 epochs):
# it learns the built-in synthetic set in minutes; the defaults' heavy regularisation needs more steps.
demo: install
	$(PY) train.py --config configs/demo.yaml --output-dir runs/demo

lint: install
	$(VENV)/bin/ruff check .

test: install lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

clean:
	rm -rf runs .pytest_cache .ruff_cache
