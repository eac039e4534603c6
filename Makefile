# make demo  - install into .venv, train on the built-in synthetic data (minutes on a CPU), write the report
# make test  - install into .venv (with test tools) and run lint + the test suite
VENV ?= .venv
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

demo: install
	$(PY) train.py --output-dir runs/demo --image-size 64 --epochs 10

lint: install
	$(VENV)/bin/ruff check .

test: install lint
	$(PY) -m pytest -q

clean:
	rm -rf runs .pytest_cache .ruff_cache
