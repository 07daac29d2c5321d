# make quickstart  - set up .venv, generate the ten datasets, train and evaluate the world model
# make test        - set up .venv and run the test suite (what CI runs)
PYTHON ?= python3
PY := .venv/bin/python

.venv/.installed: requirements.txt
	$(PYTHON) -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

setup: .venv/.installed

test: setup
	$(PY) -m pytest

data: setup
	$(PY) data_utils/generate_physics_data.py --dataset all
	$(PY) data_utils/generate_diverse_datasets.py --dataset all

quickstart: data
	$(PY) training/train_sharp_v2.py
	$(PY) evaluation/eval_sharp.py

.PHONY: setup test data quickstart
