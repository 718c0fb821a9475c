# Everything runs in .venv, created and kept up to date here: `make demo` and `make test` work on a
# fresh machine with nothing but python3, a C++ compiler and (optionally) nvcc.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUILD_INPUTS := requirements.txt setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*.cu)

.PHONY: train demo test bench lint clean wheels

$(STAMP): $(BUILD_INPUTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	# tinysoundfont renders the scenes' music; its one dependency (pyaudio, live playback) needs
	# system headers and is not used, so it is installed without dependencies
	$(PY) -m pip install --no-deps tinysoundfont==0.3.7
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/torchrun --standalone --nproc_per_node=1 train.py

demo: $(STAMP)
	$(PY) -m topoaudio.demo --out outputs

test: $(STAMP)
	$(PY) -m pytest tests

# quick: the sizes behind the README's claims; `make bench FULL=1` adds the large cases
bench: $(STAMP)
	$(PY) -m pytest bench --benchmark-only $(if $(FULL),--full) --benchmark-json bench/last.json
	$(PY) bench/report.py bench/last.json

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf build topoaudio/_C*.so *.egg-info

# pytest wheels for an offline GPU machine (bench/gpu.sh installs them there)
wheels: $(STAMP)
	$(PY) -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d bench/wheels \
		pytest pytest-benchmark pluggy iniconfig packaging py-cpuinfo
