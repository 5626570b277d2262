# ftlib: every target sets itself up first (a .venv made here), so on a fresh
# machine `make finetune` and `make test` are the only two commands needed.
#
# PyTorch: scripts/install_torch.py installs TORCH_SPEC first: on Linux without an
# NVIDIA GPU the CPU build (PyTorch's CPU index, else the default one), elsewhere the
# default index's build. Another build is one setting away, e.g.
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128
# (any torch >= 2.4 works; pyproject.toml's range never replaces the one installed here).

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
PY          := $(VENV)/bin/python
# Extra arguments for the CLI, e.g. make finetune ARGS="--epochs 2"
ARGS        ?=

.PHONY: setup test-setup test test-notebooks test-exercises test-zh test-browser finetune dpo lab slides student bench data pretrain clean-venv

# setup: what a learner needs (the library, JupyterLab, TensorFlow to read OpenAI's
# checkpoints); test-setup adds the [test] extra (pytest, nbval, transformers, playwright).
setup: $(VENV)/.installed
test-setup: $(VENV)/.installed-test

# jupyter/overrides.json: JupyterLab's own settings for this environment (no "get notified
# about official Jupyter news?" prompt, no update check: classrooms are often offline).
$(VENV)/.installed: pyproject.toml scripts/install_torch.py jupyter/overrides.json
	$(PYTHON) -m venv $(VENV)
	$(PY) scripts/install_torch.py "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index $(TORCH_INDEX))
	$(PY) -m pip install -q -e .
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp jupyter/overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# Unit tests and every lesson notebook (and the answer key) re-executed and compared with
# its committed outputs. Two sets of notebooks run in targets of their own, which CI also
# runs (.ci/run): the exercise solutions (five fine-tuning runs, about 4 minutes: together
# they would take `make test` past its 6-minute budget) and the Chinese edition, whose code
# cells are the English notebooks' (tests/test_zh.py checks that).
# Outputs are compared by tests/nbcompare.py: numbers within the rounding of their last
# printed digit, so the committed outputs hold on every CPU.
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider \
	-p tests.nbcompare
# make test runs its files in parallel (pytest-xdist), one process per core, each file whole
# in one process (--dist loadfile: a notebook's cells share one kernel), each process on one
# thread: on 2 cores, 7 minutes instead of 9 (the same CPU time, both cores busy). The
# notebooks go first, so the longest files start early. At most 4 processes: a notebook's
# kernel can hold 1.5 GB. TEST_WORKERS=0: one process, every thread.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(4, os.cpu_count() or 1))")
ONE_THREAD  := $(if $(filter 0,$(TEST_WORKERS)),,OMP_NUM_THREADS=1)
LESSONS     := $(wildcard notebooks/[0-9][0-9]_*.ipynb) notebooks/answer_keys.ipynb

# ATEN_CPU_CAPABILITY=avx2 or default runs another CPU's kernels here (.ci/run does).
# oneDNN must then be held to the same instructions: otherwise, on a CPU with AMX, bf16
# attention fails ("pack_vnni2 is only supported when avx512 is supported", torch 2.13).
ifeq ($(ATEN_CPU_CAPABILITY),avx2)
export ONEDNN_MAX_CPU_ISA ?= AVX2
endif
ifeq ($(ATEN_CPU_CAPABILITY),default)
export ONEDNN_MAX_CPU_ISA ?= SSE41
endif

test: test-setup
	$(ONE_THREAD) $(PY) -m pytest notebooks tests $(NBVAL) -n $(TEST_WORKERS) --dist loadfile \
		--ignore tests/test_browser.py --ignore notebooks/zh --ignore notebooks/exercise_solutions.ipynb

# The lesson notebooks and the answer key alone (.ci/run runs them again on other kernels).
test-notebooks: test-setup
	$(ONE_THREAD) $(PY) -m pytest $(LESSONS) $(NBVAL) -n $(TEST_WORKERS) --dist loadfile

test-exercises: test-setup
	$(PY) -m pytest notebooks/exercise_solutions.ipynb $(NBVAL)

test-zh: test-setup
	$(ONE_THREAD) $(PY) -m pytest notebooks/zh $(NBVAL) -n $(TEST_WORKERS) --dist loadfile

# The notebooks in JupyterLab in headless Chromium (about 2 minutes): they open unmodified,
# every output renders, the explorer and the chat box work. Needs /usr/bin/chromium
# (.ci/run installs it as root); skipped without it. Screenshots: test-artifacts/screenshots/.
test-browser: test-setup
	$(PY) -m pytest tests/test_browser.py -p no:cacheprovider

# The main job: end-to-end fine-tuning on the embedded defaults (offline, CPU).
finetune: setup
	$(PY) -m ftlib finetune $(ARGS)

# For class (INSTRUCTORS.md): one offline reveal.js HTML file per lesson notebook in slides/
# (the first run fetches reveal.js and MathJax from the npm registry into .cache/vendor/);
# students' copies in student/: outputs cleared, answers removed, no solutions.
slides: setup
	$(PY) scripts/make_slides.py

student: setup
	$(PY) scripts/make_student_copies.py

# Benchmarks (see benchmarks/README.md): ratios against a baseline measured in the same run.
bench: setup
	$(PY) benchmarks/bench_roofline.py --profile
	$(PY) benchmarks/bench_finetune.py
	$(PY) benchmarks/bench_padding.py
	$(PY) benchmarks/bench_generate.py --quick

# After `make finetune`: preference tuning (DPO) of runs/latest into runs/dpo (about a minute).
dpo: setup
	$(PY) -m ftlib dpo $(ARGS)

lab: setup
	$(PY) -m jupyter lab notebooks

# Regenerate data/instruction-data.json and data/preference-data.json (deterministic).
data: setup
	$(PY) scripts/make_instruction_data.py
	$(PY) scripts/make_preference_data.py

# Pretrain the tiny base model (models/gpt2-tiny-base/) on data/pretraining-corpus.txt
# (about 7 minutes on one CPU thread; deterministic). make pretrain ARGS=--augmented: the
# knowledge-augmented corpus instead (docs/base-model.md, about 12 minutes).
pretrain: setup
	$(PY) scripts/pretrain.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
