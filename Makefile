# Two commands set everything up on a fresh machine:
#   make demo   -- create .venv if missing, then run the main job
#   make test   -- create .venv if missing, then run the whole test suite
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Test-only npm packages (the iwer WebXR emulator for tests/teleop/test_webxr.py); never loaded by the product.
WEBXR := tests/teleop/webxr
WEBXR_STAMP := $(WEBXR)/node_modules/.installed
# Offscreen rendering on the CPU (Mesa llvmpipe through EGL).
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
SYSTEM_PACKAGES := libegl1 libegl-mesa0 libgl1-mesa-dri libgles2 chromium

.PHONY: demo test lint env system-packages clean

env: $(STAMP)

system-packages:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  if ! dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1; then \
	    echo "installing system packages: $(SYSTEM_PACKAGES)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES); \
	  fi; \
	else \
	  echo "not root: make sure these Debian packages (or equivalents) are installed: $(SYSTEM_PACKAGES)"; \
	fi

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-packages
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# Without npm (or when the install fails) make test still runs; test_webxr.py then skips and says why.
$(WEBXR_STAMP): $(WEBXR)/package.json $(WEBXR)/package-lock.json
	@if ! command -v npm >/dev/null; then \
	  echo "npm not found: tests/teleop/test_webxr.py will skip (install Node.js with npm to run it)"; \
	elif npm ci --prefix $(WEBXR) --no-audit --no-fund --loglevel=error; then \
	  touch $@; \
	else \
	  echo "npm ci in $(WEBXR) failed: tests/teleop/test_webxr.py will skip"; \
	fi

demo: $(STAMP)
	$(PY) -m rdp.run task=peel policy=rdp_perception robot.looks=train episodes=3 seed=100 out=outputs/demo
	$(PY) -m grounding.run "peel it again, only the left half" video=outputs/demo/episode0.npz execute=realtime \
	  seed=200 out=outputs/demo/instruction

test: $(STAMP) $(WEBXR_STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -p no:cacheprovider --durations=15

lint: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) outputs runs $(WEBXR)/node_modules

# make check-lerobot -- NOT part of `make test` (benchmarks/check_lerobot.py says what it checks): our LeRobot v3 export
# loaded by the real lerobot 0.6.1 (indexing, delta_timestamps, a DataLoader batch, its stats and split/delete tools),
# a dataset written by lerobot's own writer imported and loaded into rdp training windows, and export -> import round
# trips; writes benchmarks/results/check_lerobot.json. lerobot needs Python >= 3.12, so it gets its own venv. PyPI
# has no CPU-only torch for Linux: where the CPU wheel index (LEROBOT_TORCH_INDEX) is unreachable, pip takes PyPI's
# CUDA build, about 5 GB installed with its nvidia-* wheels (it runs on the CPU all the same). Debian's ffmpeg gives
# torchcodec, lerobot's default video decoder, its shared libraries (without them lerobot falls back to pyav).
LEROBOT_VENV ?= outputs/check-lerobot/venv
LEROBOT_PY := $(LEROBOT_VENV)/bin/python
LEROBOT_STAMP := $(LEROBOT_VENV)/.installed
PYTHON312 ?= $(shell command -v python3.12 2>/dev/null || echo /root/.pyenv/versions/3.12.1/bin/python3.12)
LEROBOT_TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: check-lerobot

$(LEROBOT_STAMP):
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null && ! command -v ffmpeg >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg; \
	fi
	@test -x $(LEROBOT_PY) || $(PYTHON312) -m venv $(LEROBOT_VENV)
	$(LEROBOT_PY) -m pip install --quiet --upgrade pip
	@$(LEROBOT_PY) -m pip install --quiet --retries 1 --timeout 20 --index-url $(LEROBOT_TORCH_INDEX) \
	  'torch>=2.7,<2.12' 'torchvision>=0.22,<0.27' \
	  2>/dev/null || echo "CPU torch index unreachable: pip installs PyPI's (CUDA) torch build"
	$(LEROBOT_PY) -m pip install --quiet 'lerobot[dataset]==0.6.1'
	@touch $@

check-lerobot: $(STAMP) $(LEROBOT_STAMP)
	$(PY) -m benchmarks.check_lerobot lerobot_python=$(LEROBOT_PY)
