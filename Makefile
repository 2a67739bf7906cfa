# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CORES  ?= 2
CONFIG ?= config/config.yaml
STAMP  := $(VENV)/.endofm-installed

.PHONY: setup demo evidence evidence-bf16 test test-fast gpu-check lint clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/:\t/'

setup: $(STAMP)  ## create .venv and install endofm with its pinned dependencies (idempotent)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup  ## run the whole workflow on the built-in synthetic corpus (CPU, minutes)
	$(VENV)/bin/snakemake all --cores $(CORES) --configfile $(CONFIG)

# The evidence run: its own working folder (resources/ and results/ of its own), then its metrics files and
# report copied to docs/evidence/ (the published evidence; README: Evidence). evidence-bf16: the same with the
# bf16-pretraining overlay, in build/evidence-bf16 -> docs/evidence-bf16/ (a second pretraining replicate).
EVIDENCE_DIR ?= build/evidence
EVIDENCE_OUT ?= docs/evidence
EVIDENCE_CONFIGS ?= $(CURDIR)/config/config.yaml $(CURDIR)/config/evidence.yaml
evidence: setup  ## the paper's claim on the built-in corpus: 10x pretraining, 3 benchmark draws (<= 90 min on 2 cores) -> docs/evidence/
	$(VENV)/bin/snakemake all --cores $(CORES) --directory $(EVIDENCE_DIR) --configfile $(EVIDENCE_CONFIGS)
	rm -rf $(EVIDENCE_OUT).tmp && mkdir -p $(EVIDENCE_OUT).tmp
	cp -r $(EVIDENCE_DIR)/results/metrics $(EVIDENCE_OUT).tmp/metrics
	cp -r $(EVIDENCE_DIR)/results/report/tables.md $(EVIDENCE_DIR)/results/report/tables.csv \
		$(EVIDENCE_DIR)/results/report/index.html $(EVIDENCE_DIR)/results/report/figures $(EVIDENCE_OUT).tmp/
	rm -rf $(EVIDENCE_OUT) && mv $(EVIDENCE_OUT).tmp $(EVIDENCE_OUT)

evidence-bf16:  ## the evidence run with bf16 pretraining (~70 min on 2 cores) -> docs/evidence-bf16/
	$(MAKE) evidence EVIDENCE_DIR=build/evidence-bf16 EVIDENCE_OUT=docs/evidence-bf16 \
		EVIDENCE_CONFIGS="$(CURDIR)/config/config.yaml $(CURDIR)/config/evidence.yaml $(CURDIR)/config/evidence_bf16.yaml"

test: setup  ## unit tests + one end-to-end workflow run on the tiny config
	$(PY) -m pytest

test-fast: setup  ## unit tests only
	$(PY) -m pytest -m "not workflow"

.PHONY: test-slurm
test-slurm: setup  ## the SLURM path on a real one-node SLURM (root: installs and starts slurmctld/slurmd/munge; ~6 min)
	ENDOFM_REAL_SLURM=1 $(PY) -m pytest -rs -s tests/slurm/test_real_slurm.py

gpu-check: setup  ## the prepared device check on the visible GPU (< 8 min on one H100): table + results/benchmarks/gpu_check.json
	$(PY) benchmarks/bench_gpu.py

lint: setup  ## ruff, snakefmt --check and snakemake --lint
	$(VENV)/bin/ruff check endofm tests benchmarks workflow_scripts
	$(VENV)/bin/ruff format --check endofm tests benchmarks workflow_scripts
	$(VENV)/bin/snakefmt --check Snakefile rules
	$(VENV)/bin/snakemake --lint --configfile=$(CONFIG)

clean:  ## remove generated results and resources (keeps .venv)
	rm -rf results resources .snakemake
