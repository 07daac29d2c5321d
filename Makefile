# make quickstart     - set up .venv, generate the ten datasets, train and evaluate the Moving MNIST world model
# make comprehensive  - the same data, then one world model on all ten datasets with its per-dataset evaluation
# make test           - set up .venv and run the test suite (what CI runs)
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

# the ten datasets at full size
data: setup
	$(PY) data_utils/generate_physics_data.py --dataset all
	$(PY) data_utils/generate_diverse_datasets.py --dataset all

# 1,280 clips of 40 frames per dataset, for the comprehensive run's 30-step pictures
data40: setup
	$(PY) data_utils/generate_physics_data.py --dataset all --frames 40 --num 1280 --out data/frames40 --no-preview
	$(PY) data_utils/generate_diverse_datasets.py --dataset all --frames 40 --num 1280 --out data/frames40 --no-preview

quickstart: data
	$(PY) training/train_sharp_v2.py
	$(PY) evaluation/eval_sharp.py

comprehensive: data data40
	$(PY) training/train_comprehensive.py

.PHONY: setup test data data40 quickstart comprehensive
