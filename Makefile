# `make run` and `make test` set up everything they need (idempotent) and then do their job.
VENV ?= .venv
PY := $(VENV)/bin/python
# What running needs, and on top of it what testing needs (pytest, ruff, mypy, playwright).
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
ARGS ?=

.PHONY: run cluster test lint bench bench-gpu gpu-check system-deps wheelhouse clean

# `make wheelhouse`: the project's dependencies but torch, as wheels for another machine's Python,
# and installed from them into .whl/site, ready for PYTHONPATH there (README: "On an offline GPU box").
PY_VERSION ?= 3.12
PLATFORM ?= manylinux2014_x86_64
ARCH := $(patsubst manylinux2014_%,%,$(PLATFORM))
WHEELS ?= .whl
WHEEL_TARGET := --only-binary=:all: --python-version $(PY_VERSION) --implementation cp \
	--platform $(PLATFORM) --platform manylinux_2_17_$(ARCH) --platform manylinux_2_28_$(ARCH)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cluster,mdns]'
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(DEV_STAMP)

# Debian packages the tests need: Chromium for the browser tests, libturbojpeg for JPEG output,
# redis-server for the cluster's tests (and `make cluster`).
# GStreamer's webrtcbin, the second WebRTC stack of tests/test_webrtcbin.py, run by Debian's python3.
GSTREAMER_WEBRTC := gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
	gstreamer1.0-nice python3-gst-1.0 gir1.2-gst-plugins-bad-1.0
export GST_PROBE := import gi; gi.require_version("Gst", "1.0"); gi.require_version("GstWebRTC", "1.0"); \
	from gi.repository import Gst; Gst.init(None); \
	assert all(Gst.ElementFactory.find(e) for e in ("webrtcbin", "nicesrc", "vp8enc", "vp8dec", "videotestsrc"))

system-deps:
	@missing=""; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	ldconfig -p | grep -q libturbojpeg || missing="$$missing libturbojpeg0"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	/usr/bin/python3 -c "$$GST_PROBE" 2>/dev/null || missing="$$missing $(GSTREAMER_WEBRTC)"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

run: $(STAMP)
	$(PY) -m server $(ARGS)

# A cluster on this box, started as separate commands the way an operator starts one on several
# machines (README: Past one GPU): redis-server on a free port (data in $(DATA)/redis), N workers on
# ports PORT+1... (worker i on GPU i mod the GPU count), a front on PORT. Ctrl-C stops them all.
N ?= 2
PORT ?= 8080
DATA ?= data
cluster: $(STAMP)
	@command -v redis-server >/dev/null || { echo "redis-server is missing: make system-deps"; exit 2; }
	@mkdir -p $(DATA)/redis
	@redis_port=$$($(PY) -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'); \
	url=redis://127.0.0.1:$$redis_port/0; \
	trap 'kill $$(jobs -p) 2>/dev/null; wait' EXIT INT TERM; \
	set -x; \
	redis-server --port $$redis_port --bind 127.0.0.1 --dir $(abspath $(DATA))/redis --appendonly yes --save "" \
		--logfile redis.log & \
	gpus=$$(nvidia-smi -L 2>/dev/null | wc -l); \
	for i in $$(seq 1 $(N)); do \
		if [ "$$gpus" -gt 0 ]; then export CUDA_VISIBLE_DEVICES=$$(( (i - 1) % gpus )); fi; \
		$(PY) -m server --role worker --redis-url $$url --host 127.0.0.1 --port $$(( $(PORT) + i )) \
			--data-dir $(DATA) $(ARGS) & \
	done; \
	unset CUDA_VISIBLE_DEVICES; \
	$(PY) -m server --role front --redis-url $$url --port $(PORT) --data-dir $(DATA) $(ARGS)

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check pipeline server tests bench
	$(VENV)/bin/ruff format --check pipeline server tests bench
	$(VENV)/bin/mypy

test: $(DEV_STAMP) system-deps lint
	$(VENV)/bin/pytest -q -n 2 -m "not heavy and not cluster"
	$(VENV)/bin/pytest -q -m "heavy or cluster"

bench: $(STAMP)
	$(PY) -m bench.engine --model tiny --batch-sizes 1,2,4,8 --seconds 5
	$(PY) -m bench.live --model tiny --size 256 --peers 1,4 --engine-batch 4 --seconds 15
	$(PY) -m bench.jobs --model tiny --seconds 10
	$(PY) -m bench.json_check
	$(PY) -m bench.cluster --model tiny --size 256 --workers 1,2 --peers 4 --seconds 15

# On a CUDA machine: the real SD-Turbo architecture (random weights, nothing to download), fp16, 512².
bench-gpu: $(STAMP)
	$(PY) -m bench.engine --model arch:sd-turbo --batch-sizes 1,2,4,8,16 --seconds 10
	$(PY) -m bench.engine --model arch:sd-turbo --batch-sizes 1,8 --seconds 10 --compile reduce-overhead

# Proves the engine on a GPU and measures it, one JSON under bench/results/ per call; a device call is
# at most 10 minutes, so it runs as three: `make gpu-check ONLY=tests,engine,live`, ONLY=families,flicker and
# ONLY=looks,stream_batch (the looks' cost; StreamDiffusion's stream batch against the engine's schedule).
# On a box without a venv (the lent GPU machine): the interpreter there, with the wheelhouse on its path.
# `make gpu-check DEVICE=cpu` is the same script in seconds on tiny models (make test runs it).
DEVICE ?= cuda
ONLY ?= tests,engine,families,live,flicker,looks,stream_batch
GPU_OUT ?= bench/results
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	PYTHONPATH=$(CURDIR):$(CURDIR)/$(WHEELS)/site$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PY) -m bench.gpu_check --device $(DEVICE) --only $(ONLY) --out $(GPU_OUT)

wheelhouse:
	rm -rf $(WHEELS)/site
	mkdir -p $(WHEELS)
	python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
		extras = p["optional-dependencies"]; \
		deps = p["dependencies"] + extras["cluster"] + extras["mdns"] + [d for d in extras["dev"] if d.startswith("pytest")]; \
		print("\n".join(d for d in deps if not d.startswith("torch")))' > $(WHEELS)/requirements.txt
	# PyTurboJPEG ships no wheel: build its (pure Python) one here.
	python3 -m pip wheel -q --no-deps -w $(WHEELS) "$$(grep -i '^pyturbojpeg' $(WHEELS)/requirements.txt)"
	python3 -m pip download -q $(WHEEL_TARGET) -d $(WHEELS) --find-links $(WHEELS) -r $(WHEELS)/requirements.txt
	# pip checks requires-python against this interpreter, not --python-version: the wheel tags decide.
	python3 -m pip install -q $(WHEEL_TARGET) --ignore-requires-python --no-index --find-links $(WHEELS) \
		--target $(WHEELS)/site -r $(WHEELS)/requirements.txt
	@echo "wheels in $(WHEELS)/, installed for Python $(PY_VERSION) $(PLATFORM) in $(WHEELS)/site"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
