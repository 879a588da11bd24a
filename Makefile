# hwfault: `make demo` runs a sweep on a shipped model; `make test` runs the test suite.
# Both create .venv and install what they need (torch 2.13.0 CPU wheel).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -n 2

.PHONY: demo test test-all bench hardened clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p out
	$(BIN)/hwfault zoo list
	$(BIN)/hwfault sweep --model digits-cnn --data digits --norm 2 --eps 0.01,0.1,0.3,1,3 \
		--methods random,gradient,multistep --trials 10 --json out/sweep.json --plot out/sweep.png
	$(BIN)/hwfault estimate --model digits-cnn --chip int8-sram-0.5v --trials 50 \
		--json out/estimate.json --report out/estimate.html
	@echo "demo: wrote out/sweep.json, out/sweep.png (random vs worst-case corruption over eps)"
	@echo "      and out/estimate.json, out/estimate.html (digits-cnn on the int8-sram-0.5v chip: Monte-Carlo vs worst case)"

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS) -q

test-all: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS) -q -m ''

# auto_LiRPA, the certification peer: 0.3 is its last PyPI release and pins torch < 1.13, so it goes in
# without its dependencies (bench/_lirpa.py bridges the torch 2 / numpy 2 renames)
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python -m pip install -q --no-deps auto_LiRPA==0.3 appdirs tqdm
	$(BIN)/python bench/seed_table1.py --models digits-cnn,digits-mlp,mnist1d-lstm,mnist1d-resnet,mnist1d-transformer
	$(BIN)/python bench/seed_table1.py --models pycode-charlm --eps 0.1,0.3,1,3 --trials 5 --out bench/results/table1_lm.json
	$(BIN)/python bench/probe.py
	$(BIN)/python bench/estimate_presets.py
	$(BIN)/python bench/campaign_vs_pytorchfi.py
	$(BIN)/python bench/seed_table2.py
	$(BIN)/python bench/memory_eval.py
	$(BIN)/python bench/lm_zoo.py
	$(BIN)/python bench/certify.py
	$(BIN)/python bench/scale.py

# retrains the shipped hardened checkpoints (models/*-hard-*.safetensors) and checks the targets (~20 min)
hardened: $(STAMP)
	$(BIN)/python bench/harden_zoo.py

clean:
	rm -rf $(VENV) out .pytest_cache
