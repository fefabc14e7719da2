# Two commands set everything up on a fresh machine:
#   make demo   -- create .venv if missing, then run the main job
#   make test   -- create .venv if missing, then run the whole test suite
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
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

demo: $(STAMP)
	$(PY) -m rdp.run task=wipe episodes=3 seed=100 out=outputs/demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) outputs runs
