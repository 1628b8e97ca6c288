# The two commands of the README: `make demo` and `make test`. Both create .venv on
# first use and reuse it afterwards (pip runs again only when requirements.txt changes).
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.requirements-installed
ENV     := DVC_NO_ANALYTICS=1 MPLBACKEND=Agg

# the demo: FC monDEQs (width 40) on mnist5k, a few epochs each, over this m sweep; each run bounds its
# model after training (the experiment's `then`), and Figure 1b is drawn from the three
DEMO_M  := 1 5 20
comma   := ,
empty   :=
space   := $(empty) $(empty)
DEMO_RUNS := $(foreach m,$(DEMO_M),outputs/fig1b/dataset=mnist5k$(comma)m=$(m)$(comma)profile=smoke)

.PHONY: demo test test-slow venv gpu-check wheels

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install -e . --no-deps --no-build-isolation  # the apps' commands: mondeq-train, ...
	touch $(STAMP)

demo: $(STAMP)
	$(ENV) $(PY) -m src.run +experiment=fig1b -m m=$(subst $(space),$(comma),$(DEMO_M)) dataset=mnist5k profile=smoke
	$(ENV) $(PY) -m src.plot --figure fig1b --runs $(DEMO_RUNS) --out outputs/demo
	cat outputs/demo/figures/fig1b.md

# One BLAS/OpenMP thread: the tests' tensors are tiny, and on two cores MKL's threaded
# batched complex inverses run 10-20x slower than single-threaded ones.
TEST    := $(ENV) WANDB_MODE=disabled OMP_NUM_THREADS=1 $(PY) -m pytest -q
test: $(STAMP)
	$(TEST) -m "not slow and not cuda"

# the tests marked slow (end-to-end app runs, conv monDEQs); CI runs both targets
test-slow: $(STAMP)
	$(TEST) -m "slow and not cuda"

# On a CUDA machine only (not CI): the CUDA tests and the monDEQ bench at batch 128 (.ci/gpu-check)
gpu-check: $(STAMP)
	PY=$(PY) .ci/gpu-check

# hydra-core, omegaconf and antlr4 as wheels in .wheels/, for a GPU image that has torch but not them
wheels: $(STAMP)
	$(PY) -m pip wheel --no-deps -w .wheels hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3  # antlr4 is an sdist: built here, since the GPU image cannot fetch a build backend
