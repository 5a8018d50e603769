# hizfo: set-up, the embedded demo, tests, benchmarks and the paper's tables.
# `make demo` and `make test` do all set-up themselves.

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
# Exact versions of every dependency come from a lock file (pip-compile output of pyproject.toml's ranges):
# requirements-cuda.txt where `nvidia-smi` exists, else requirements-cpu.txt (torch's CPU build, which
# this project's machines have on local disk; elsewhere add the CPU wheel index with
# PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"). `make lock` re-resolves both.
LOCK        ?= $(if $(shell command -v nvidia-smi 2>/dev/null),requirements-cuda.txt,requirements-cpu.txt)
PIP_ARGS    ?=
MODEL_DIR   := artifacts/models/smollm2-135m-instruct
# Release files: $HIZFO_DATA_DIR if set, else ../shared/data when it exists (else the loaders try the hub).
DATA_DIR    ?= $(firstword $(HIZFO_DATA_DIR) $(wildcard ../shared/data))
ifneq ($(strip $(DATA_DIR)),)
export HIZFO_DATA_DIR := $(abspath $(DATA_DIR))
endif
export TOKENIZERS_PARALLELISM := false

.PHONY: help setup model demo test lint bench bench-selection clean

help:  ## list every target with one line each (the comment after its name in this Makefile)
	@awk -F ':.*## ' '/^[a-z][a-z0-9 -]*:.*## / { n = split($$1, names, " "); \
		for (i = 1; i <= n; i++) printf "make %-16s %s\n", names[i], $$2 }' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PIP_ARGS) -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m hizfo.lockcheck $(LOCK)
	touch $@

setup: $(VENV)/.installed  ## create .venv (VENV) with the locked versions (LOCK) and hizfo editable

check-lock: setup  ## check that .venv holds exactly the locked versions (LOCK)
	$(PY) -m hizfo.lockcheck $(LOCK)

# pip-tools in its own venv, so resolving never changes .venv. The CUDA lock starts from the CPU lock's
# pins and resolves against PyPI alone (its Linux torch wheel is the CUDA build).
LOCK_TOOLS := .venv-lock/bin/pip-compile
LOCK_FLAGS := --quiet --extra dev --extra notebook --strip-extras --no-emit-find-links --no-emit-index-url
$(LOCK_TOOLS):
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet "pip-tools>=7.4"

.PHONY: lock check-lock
lock: $(LOCK_TOOLS)  ## re-resolve requirements-cpu.txt and requirements-cuda.txt from pyproject.toml
	$(LOCK_TOOLS) $(LOCK_FLAGS) $(PIP_ARGS) --output-file requirements-cpu.txt pyproject.toml
	sed 's/^torch==\(.*\)+cpu$$/torch==\1/' requirements-cpu.txt > requirements-cuda.txt
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(LOCK_TOOLS) $(LOCK_FLAGS) \
		--index-url https://pypi.org/simple --output-file requirements-cuda.txt pyproject.toml

$(MODEL_DIR)/config.json: | $(VENV)/.installed
	$(PY) -m hizfo.models.prepare --out $(MODEL_DIR)

model: $(MODEL_DIR)/config.json  ## build the embedded SmolLM2-135M-Instruct in artifacts/models (once)

demo: setup model  ## set up, then fine-tune SmolLM2-135M on DialogSum on this CPU (a few minutes)
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) -m hizfo.train experiment=demo

test: setup  ## set up, then run the fast test suite (-m "not slow and not cuda")
	$(PY) -m pytest -q -m "not slow and not cuda" tests

lint: setup  ## ruff on hizfo, tests and experiments
	$(VENV)/bin/ruff check hizfo tests experiments

bench: setup model  ## step time / peak memory of each method (one process each)
	$(PY) experiments/bench_methods.py --model smollm2 --seq-len 48 --steps 5 --out results/bench/smollm2-48.json
	$(PY) experiments/bench_methods.py --model smollm2
	$(PY) experiments/bench_methods.py --model opt-350m-shape --seq-len 128 --steps 2

bench-selection: setup  ## speed of the tensor selection (results/bench/selection_cpu.txt)
	mkdir -p results/bench && $(PY) experiments/bench_selection.py | tee results/bench/selection_cpu.txt

# The first-GPU checklist (experiments/GPU_CHECK.md): about 7 minutes on one GPU. Sets up only where
# nvidia-smi exists; elsewhere the preflight stops it at once with the reason (exit code 1).
.PHONY: gpu-check
gpu-check: $(if $(shell command -v nvidia-smi 2>/dev/null),setup)  ## GPU checklist: preflight, pytest -m cuda, every method, bf16, evals, torchrun (results/gpu_check/)
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) experiments/gpu_check.py $(ARGS)

clean:  ## remove outputs, multirun, wandb and the pytest cache
	rm -rf outputs multirun wandb .pytest_cache

# ---- the paper's tables (GPU machines): run the grid, then rebuild the table beside the paper's numbers.
# LAUNCHER picks the Hydra launcher (conf/hydra/launcher/). local (default): the joblib launcher, JOBS
# members at a time, each in its own worker process when JOBS >= 2 (1 torch thread each on CPU). One
# GPU: keep JOBS=1 (also keeps the timings undisturbed; each run's peak memory is its own either way).
# slurm: each member is its own SLURM job, one task per GPU (conf/hydra/launcher/slurm.yaml,
# conf/README.md "Clusters"), e.g.
#   make table3 LAUNCHER=slurm ARGS="hydra.launcher.gpus_per_node=8 hydra.launcher.partition=gpu"
# make waits for the jobs (run it in tmux/screen), then renders the table from the records.
LAUNCHER    ?= local
JOBS        ?= 1
LAUNCH      := hydra/launcher=$(LAUNCHER) $(if $(filter local,$(LAUNCHER)),hydra.launcher.n_jobs=$(JOBS))
.PHONY: table1 table2 table3 table4 table5 fig-alpha fig-ratio tables plots
table1 table2 table3 table4 table5: setup  ## train the paper table's grid (LAUNCHER, JOBS, ARGS), then render the tables
	$(PY) -m hizfo.train sweep=$@ $(LAUNCH) $(ARGS)
	$(PY) -m hizfo.report tables

fig-alpha fig-ratio: setup  ## train the figure's grid (alpha or ratio sweep), then render the plots
	$(PY) -m hizfo.train sweep=$(subst fig-,,$@) $(LAUNCH) $(ARGS)
	$(PY) -m hizfo.report plots

tables: setup  ## render the paper's tables from the records beside the paper's numbers
	$(PY) -m hizfo.report tables

plots: setup  ## render the plots from the records
	$(PY) -m hizfo.report plots

# ---- notebooks/analysis.ipynb: executed headless on the committed records, outputs saved in place
.PHONY: notebook
$(VENV)/.notebook: $(VENV)/.installed  # the lock already holds the notebook extra
	touch $@

notebook: $(VENV)/.notebook  ## execute notebooks/analysis.ipynb headless on the committed records
	$(PY) experiments/execute_notebook.py notebooks/analysis.ipynb

.PHONY: demo-methods
demo-methods: setup model  ## every method at demo scale on this CPU (results/demo/summary.md)
	bash experiments/demo_methods.sh

# ---- the paper's claims at CPU scale (results/README.md; `make mini` is about 8.5 h
# of a 2-core CPU: the records' summed member times over two). Each grid is a Hydra multirun, 2 members
# at a time, one torch thread each.
# Re-running a target trains only the members without a completed record (a killed member resumes from
# its checkpoint) and re-renders results/mini/ from the records.
MINI_RUN := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=$${WANDB_MODE:-offline} $(PY) -m hizfo.train
.PHONY: mini mini-table1 mini-table4 mini-table5 mini-fig3 mini-fig4 mini-checks mini-depth mini-report
mini: mini-table1 mini-table5 mini-table4 mini-fig3 mini-fig4 mini-checks mini-depth  ## all the CPU-scale study grids (about 8.5 h on 2 cores)

mini-table1: setup model  ## CPU study: zero-shot + 8 methods x 2 tasks x 3 seeds (Table 1)
	$(MINI_RUN) sweep=mini_zero_shot $(ARGS)
	$(MINI_RUN) sweep=mini_table1 $(ARGS)
	$(MAKE) mini-report

mini-table4: setup model  ## CPU study: Hi-ZFO rho 0.2-0.8 at seed 0, seeds 1-2 at the ends (Table 4)
	$(MINI_RUN) sweep=mini_table4 $(ARGS)
	$(MINI_RUN) sweep=mini_table4 method.rho=0.2,0.8 seed=1,2 $(ARGS)
	$(MAKE) mini-report

mini-table5: setup model  ## CPU study: Hi-ZFO alpha 0 and the ZO part off, 3 seeds (Table 5)
	$(MINI_RUN) sweep=mini_table5 $(ARGS)
	$(MAKE) mini-report

mini-fig3: setup model  ## CPU study: r 0.01-1 at seed 0, seeds 1-2 at r 0.5, 0.7 (Figure 3)
	$(MINI_RUN) sweep=mini_fig3 $(ARGS)
	$(MINI_RUN) sweep=mini_fig3 method.zo_lr_ratio=0.5,0.7 seed=1,2 $(ARGS)
	$(MAKE) mini-report

mini-fig4: setup model  ## CPU study: alpha 0.01 / 0.4 / 1, one seed (Figure 4)
	$(MINI_RUN) sweep=mini_fig4 $(ARGS)
	$(MAKE) mini-report

mini-checks: setup model  ## CPU study: ZO optimizer AdamW vs SGD; Hi-ZFO 5 epochs vs 3
	$(MINI_RUN) sweep=mini_checks method=hizfo method.zo_optimizer=adamw $(ARGS)
	$(MINI_RUN) sweep=mini_checks trainer.num_epochs=5 $(ARGS)
	$(MAKE) mini-report

mini-depth: setup model  ## CPU study: Hi-ZFO on DialogSum at rho 0.7, and at 0.6 with the ZO part off
	$(MINI_RUN) sweep=mini_depth method=hizfo method.rho=0.7 $(ARGS)
	$(MINI_RUN) sweep=mini_depth method=hizfo method.zo_enabled=false method.alpha=0.0 $(ARGS)
	$(MAKE) mini-report

mini-report: setup  ## re-render results/mini/ from the records only
	$(PY) -m hizfo.study

# ---- the tuned CPU-scale study (protocol `study`, results/study/): DialogSum, a learning-rate grid
# per method at seed 0 chosen on dev ROUGE-1, then seeds at the chosen rate, scored on all 500 test
# dialogues (conf/experiment/study_dialogsum.yaml). Two members at a time, one torch thread each;
# re-running a target trains only members without a completed record and re-renders results/study/.
STUDY_RUN := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=$${WANDB_MODE:-offline} $(PY) -m hizfo.train
STUDY_LR_METHODS ?= full_ft,hizfo,greentrainer,lora
STUDY_LR = $$($(PY) -m hizfo.study.tuned chosen-lr $(1))
STUDY_WEBQ_LR = $$($(PY) -m hizfo.study.tuned chosen-lr $(1) --task webquestions)
STUDY_WEBQ_METHODS ?= full_ft,hizfo,greentrainer
STUDY_EXTEND_METHODS ?= full_ft hizfo greentrainer lora mezo
STUDY_LATER_METHODS ?= ft_topk,prefix
# Bilevel-ZOFO's members in the study: K 10, the reference's smallest, gives its evaluated copy 25 outer
# updates in 250 steps (K 30, the method's default, gives 8); its `lr` (the upper rate) is what its grid varies
STUDY_BILEVEL ?= method.outer_every=10
# Seeds 1-2 skip the dev-loss curve: only seed 0's is read (convergence, time-to-target), and evaluating
# it does not change training (tests/test_eval_cadence.py); it cost 8-20 min of a 55-90-min member.
LATER_SEEDS ?= seed=1,2 trainer.eval_every_steps=null
MEZO_STEPS = $$($(PY) experiments/study_timing.py --mezo-steps $(1))
.PHONY: study-lr study-lr-extend study-queue study-webq-check study-timing study-timing-later study-mezo study-seeds study-ablations study-sweeps study-report
.PHONY: study-webq-timing study-webq study-webq-seeds study-later study-bilevel study-decoding study-horizon
study-lr: setup model  ## tuned study: zero-shot, then each method's 3 learning rates at seed 0 (dev + test)
	$(STUDY_RUN) experiment=study_dialogsum method=zero_shot run_name=study_zero_shot_s0 $(ARGS)
	$(STUDY_RUN) -m experiment=study_dialogsum sweep=study_lr method=$(STUDY_LR_METHODS) $(ARGS)
	$(MAKE) study-report

study-webq-check: setup model  ## tuned study: does WebQuestions qualify (Full FT >= zero-shot + 5 EM on dev)?
	$(STUDY_RUN) experiment=study_webq_check method=zero_shot run_name=study_webq_zero_shot_s0 $(ARGS)
	$(STUDY_RUN) experiment=study_webq_check method=full_ft method.lr=6.3e-5 run_name=study_webq_full_ft_s0 $(ARGS)
	$(MAKE) study-report

study-decoding: setup model  ## tuned study: zero-shot dev ROUGE-1 under the decodings it dropped, token lengths (decoding.md)
	$(PY) experiments/study_decoding.py $(ARGS)

study-timing: setup model  ## tuned study: s/step of each arm alone on an idle machine, 3 repeats (timing.json)
	$(PY) experiments/study_timing.py --out results/study/timing.json $(ARGS)

study-timing-later: setup model  ## tuned study: s/step of FT-Top2, Prefix and Bilevel-ZOFO alone, with Full FT again as reference (timing_later.json)
	$(PY) experiments/study_timing.py --out results/study/timing_later.json \
		--arms full_ft ft_topk prefix bilevel_zofo --arm-set="bilevel_zofo:$(STUDY_BILEVEL)" $(ARGS)

study-mezo: setup model  ## tuned study: MeZO's 3 learning rates at Full FT's CPU time (after study-timing)
	$(STUDY_RUN) -m experiment=study_dialogsum sweep=study_lr method=mezo \
		study.horizon.mezo=$(call MEZO_STEPS,results/study/timing.json) $(ARGS)
	$(MAKE) study-report

study-lr-extend: setup model  ## tuned study: a method whose best rate sits at its grid's edge gets the next half-decade rate (run until it adds none)
	for m in $(STUDY_EXTEND_METHODS); do \
		r=$$($(PY) -m hizfo.study.tuned next-lr $$m) || exit 1; [ -n "$$r" ] || continue; \
		k=""; [ "$$m" != bilevel_zofo ] || k="$(STUDY_BILEVEL)"; \
		$(STUDY_RUN) -m experiment=study_dialogsum sweep=study_seeds method=$$m method.lr=$$r seed=0 $$k \
			study.horizon.mezo=$(call MEZO_STEPS,results/study/timing.json) $(ARGS) || exit 1; \
	done
	$(MAKE) study-report

study-seeds: setup model  ## tuned study: seeds 1-2 of every method at its chosen rate (after study-lr)
	for m in full_ft hizfo greentrainer lora; do \
		$(STUDY_RUN) -m experiment=study_dialogsum sweep=study_seeds method=$$m method.lr=$(call STUDY_LR,$$m) $(LATER_SEEDS) $(ARGS) || exit 1; \
	done
	$(STUDY_RUN) -m experiment=study_dialogsum sweep=study_seeds method=mezo method.lr=$(call STUDY_LR,mezo) \
		study.horizon.mezo=$(call MEZO_STEPS,results/study/timing.json) $(LATER_SEEDS) $(ARGS)
	$(MAKE) study-report

study-ablations: setup model  ## tuned study: Hi-ZFO at equal steps, without the ZO loss (alpha 0), with the ZO part off; seeds 0-2
	$(STUDY_RUN) -m experiment=study_dialogsum sweep=study_seeds method=hizfo method.lr=$(call STUDY_LR,hizfo) study.horizon.hizfo=250 \
		seed=0 $(ARGS)
	$(STUDY_RUN) -m experiment=study_dialogsum sweep=study_seeds method=hizfo method.lr=$(call STUDY_LR,hizfo) method.alpha=0.0 \
		seed=0 $(ARGS)
	$(STUDY_RUN) -m experiment=study_dialogsum sweep=study_seeds method=hizfo method.lr=$(call STUDY_LR,hizfo) method.zo_enabled=false \
		method.alpha=0.0 seed=0 $(ARGS)
	$(STUDY_RUN) -m experiment=study_dialogsum sweep=study_seeds method=hizfo method.lr=$(call STUDY_LR,hizfo) study.horizon.hizfo=250 \
		$(LATER_SEEDS) $(ARGS)
	$(STUDY_RUN) -m experiment=study_dialogsum sweep=study_seeds method=hizfo method.lr=$(call STUDY_LR,hizfo) method.alpha=0.0 \
		$(LATER_SEEDS) $(ARGS)
	$(STUDY_RUN) -m experiment=study_dialogsum sweep=study_seeds method=hizfo method.lr=$(call STUDY_LR,hizfo) method.zo_enabled=false \
		method.alpha=0.0 $(LATER_SEEDS) $(ARGS)
	$(MAKE) study-report

study-sweeps: setup model  ## tuned study: Hi-ZFO's rho 0.5/0.7/0.8 and r 0.5/0.7/1.0 at seed 0 (Table 4, Fig. 3)
	$(STUDY_RUN) -m experiment=study_dialogsum sweep=study_seeds method=hizfo method.lr=$(call STUDY_LR,hizfo) method.rho=0.5,0.7,0.8 \
		seed=0 $(ARGS)
	$(STUDY_RUN) -m experiment=study_dialogsum sweep=study_seeds method=hizfo method.lr=$(call STUDY_LR,hizfo) \
		method.zo_lr_ratio=0.5,0.7,1.0 seed=0 $(ARGS)
	$(MAKE) study-report

study-horizon: setup model  ## tuned study: the horizon check, Full FT at twice the steps (500) and Hi-ZFO at 3/5 of that (300), seed 0, chosen rates
	$(STUDY_RUN) -m experiment=study_dialogsum sweep=study_seeds method=full_ft method.lr=$(call STUDY_LR,full_ft) \
		study.horizon.full_ft=500 seed=0 $(ARGS)
	$(STUDY_RUN) -m experiment=study_dialogsum sweep=study_seeds method=hizfo method.lr=$(call STUDY_LR,hizfo) \
		study.horizon.hizfo=300 seed=0 $(ARGS)
	$(MAKE) study-report

study-later: setup model  ## tuned study, as the budget allows after every required arm: FT-Top2's and Prefix's 3 rates at seed 0 (then study-lr-extend STUDY_EXTEND_METHODS="ft_topk prefix")
	$(STUDY_RUN) -m experiment=study_dialogsum sweep=study_lr method=$(STUDY_LATER_METHODS) $(ARGS)
	$(MAKE) study-report

study-bilevel: setup model  ## tuned study, as the budget allows, after FT-Top2 and Prefix: Bilevel-ZOFO's 3 upper rates at seed 0, K 10 (then study-lr-extend STUDY_EXTEND_METHODS=bilevel_zofo)
	$(STUDY_RUN) -m experiment=study_dialogsum sweep=study_lr method=bilevel_zofo $(STUDY_BILEVEL) $(ARGS)
	$(MAKE) study-report

study-webq-timing: setup model  ## tuned study, WebQuestions: s/step of each of its arms alone on an idle machine (its timing.json)
	$(PY) experiments/study_timing.py --experiment study_webq --arms full_ft greentrainer hizfo mezo \
		--out results/study/webq/timing.json $(ARGS)

study-webq: setup model  ## tuned study, WebQuestions: zero-shot and each method's 3 rates (after study-webq-check, -timing)
	$(STUDY_RUN) experiment=study_webq method=zero_shot run_name=study_webq_zero_shot_s0 $(ARGS)
	$(STUDY_RUN) -m experiment=study_webq sweep=study_lr method=$(STUDY_WEBQ_METHODS) $(ARGS)
	$(STUDY_RUN) -m experiment=study_webq sweep=study_lr method=mezo \
		study.horizon.mezo=$(call MEZO_STEPS,results/study/webq/timing.json) $(ARGS)
	$(MAKE) study-report

study-webq-seeds: setup model  ## tuned study, WebQuestions: seeds 1-2 of every method at its chosen rate there
	for m in full_ft hizfo greentrainer; do \
		$(STUDY_RUN) -m experiment=study_webq sweep=study_seeds method=$$m method.lr=$(call STUDY_WEBQ_LR,$$m) $(LATER_SEEDS) $(ARGS) || exit 1; \
	done
	$(STUDY_RUN) -m experiment=study_webq sweep=study_seeds method=mezo method.lr=$(call STUDY_WEBQ_LR,mezo) \
		study.horizon.mezo=$(call MEZO_STEPS,results/study/webq/timing.json) $(LATER_SEEDS) $(ARGS)
	$(MAKE) study-report

study-queue: setup model  ## tuned study: every member not yet run, two at a time, in the order of experiments/study_queue.txt
	# the report is rendered whether the queue ends well or not; no $$(MAKE) on the queue's line, so that
	# `make -n study-queue` prints the queue instead of running it
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) experiments/study_queue.py $(ARGS) || { $(PY) -m hizfo.study.tuned; exit 1; }
	$(MAKE) study-report

study-report: setup  ## re-render results/study/ from its records only
	$(PY) -m hizfo.study.tuned
