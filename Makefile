# `make run` and `make test` set up everything they need (idempotent) and then do their job.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: run test lint bench bench-gpu system-deps clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Debian packages the tests need: Chromium for the browser tests, libturbojpeg for JPEG output.
system-deps:
	@missing=""; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	ldconfig -p | grep -q libturbojpeg || missing="$$missing libturbojpeg0"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

run: $(STAMP)
	$(PY) -m server $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline server tests bench
	$(VENV)/bin/ruff format --check pipeline server tests bench
	$(VENV)/bin/mypy

test: $(STAMP) system-deps lint
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(PY) -m bench.engine --model tiny --batch-sizes 1,2,4,8 --seconds 5
	$(PY) -m bench.live --model tiny --peers 1,4 --seconds 15
	$(PY) -m bench.jobs --model tiny --seconds 10

# On a CUDA machine: the real SD-Turbo architecture (random weights, nothing to download), fp16, 512².
bench-gpu: $(STAMP)
	$(PY) -m bench.engine --model arch:sd-turbo --batch-sizes 1,2,4,8,16 --seconds 10
	$(PY) -m bench.engine --model arch:sd-turbo --batch-sizes 1,8 --seconds 10 --compile reduce-overhead

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
