# Two commands: `make demo` runs the main job, `make test` runs the tests. Both create .venv on
# a fresh machine. torch 2.13.0 goes in first (a CPU build; anything else pulls CUDA wheels), the
# ROS 2 wheels only when `import rclpy` fails (a sourced ROS 2 install wins).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
ROS_WHEELS := ros-rclpy ros-rmw-fastrtps-cpp ros-std-msgs ros-sensor-msgs ros-geometry-msgs \
              ros-diagnostic-msgs ros-rosgraph-msgs
export FASTDDS_DEFAULT_PROFILES_FILE ?= $(CURDIR)/config/fastdds_large_data.xml

.PHONY: env test lint demo bench clean

env: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PY) -c "import rclpy" 2>/dev/null || $(PIP) install -q $(ROS_WHEELS)
	$(PIP) install -q -e ".[test]"
	# TensorRT 10 API as .pyi files, to check the TensorRT backend against; --no-deps because the
	# stubs depend on tensorrt itself, whose wheels need a vendor index.
	$(PIP) install -q --no-deps tensorrt-stubs
	# Meta's SAM2 modeling code, the reference of the SAM2 parity tests (sam2 1.1.0 on PyPI has
	# modeling/ and configs/ byte-identical to facebookresearch/sam2). --no-deps: its requirements
	# (torchvision, hydra-core) would replace the CPU torch with a CUDA build; the tests import
	# its modeling modules, which need only torch and iopath (in the test extra). It is an sdist
	# whose setup.py imports torch: no build isolation, and no CUDA extension.
	SAM2_BUILD_CUDA=0 $(PIP) install -q --no-deps --no-build-isolation sam2==1.1.0
	touch $@

lint: env
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest

demo: env
	$(PY) -m sam_mmseg_ros.cli demo --output demo_output

bench: env
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf build install log demo_output .pytest_cache
