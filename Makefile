# The two commands of the README. Both set up everything on a fresh machine:
#   make run    installs alignx into .venv and runs the main job (no download, no server)
#   make test   installs alignx, the plugins under plugins/ and pytest, then runs the whole suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.alignx-installed
# The CPU build of torch is installed first and by exact version: a bare `torch` requirement
# would pull several GB of CUDA packages on a CPU-only machine.
TORCH  ?= torch==2.13.0
ARGS   ?=
# The suite runs on this many pytest-xdist workers, each with one intra-op thread: on 2 cores that
# keeps both cores busy (the models in tests are too small for two threads to help one process)
# --dist loadfile: a test file's tests share one worker, so its module-scoped fixtures (a trained model,
# a sweep, CLI runs started early) run once, not once on each worker that draws one of its tests
WORKERS ?= 2

.PHONY: run test install clean

$(STAMP): pyproject.toml plugins/*/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test,sweep]"
	for p in plugins/*/; do $(BIN)/python -m pip install --quiet -e "$$p" || exit 1; done
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/alignx experiment=pipeline_sft_dpo $(ARGS)

test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest tests plugins -n $(WORKERS) --dist loadfile --durations=25 $(ARGS)

clean:
	rm -rf outputs/runs outputs/sweeps outputs/mlflow.db outputs/mlartifacts outputs/cache
