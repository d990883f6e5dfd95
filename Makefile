# dltool: `make demo` runs the main job, `make test` the whole test suite.
# Both create .venv (Python 3.11+) and install dltool into it with `pip install .`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
DEMO_DIR ?= build/demo
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools>=64" wheel

install: $(BIN)/python
	$(BIN)/python -m pip install -q .

# Scaffold an image-classifier project, train it briefly on the embedded
# CIFAR-10 sample, evaluate (which writes the run's report), export, predict
# and list the runs, each step visible.
demo: install
	rm -rf $(DEMO_DIR)
	mkdir -p $(dir $(DEMO_DIR))
	$(BIN)/dltool new image-classifier $(DEMO_DIR)
	cd $(DEMO_DIR) && $(BIN)/dltool info
	cd $(DEMO_DIR) && $(BIN)/dltool train --epochs 15
	cd $(DEMO_DIR) && $(BIN)/dltool evaluate
	cd $(DEMO_DIR) && $(BIN)/dltool export
	cd $(DEMO_DIR) && $(BIN)/dltool predict samples/cat.jpg samples/horse.jpg samples/ship.jpg
	cd $(DEMO_DIR) && $(BIN)/dltool runs
	ls $(DEMO_DIR)/runs/*/report.html

# The full suite, as CI runs it, with the optional extras the tests exercise
# (`onnx`: `dltool export --format onnx` is converted and run in ONNX Runtime;
# `client`: the exports' README clients run as written), on two processes
# (`test`: pytest-xdist; each test file runs whole in one of them). Much of
# the suite waits on child processes (servers, workers, `dltool` commands
# starting TensorFlow), which a second process fills.
TEST_PROCESSES ?= 2
test: install
	$(BIN)/python -m pip install -q '.[onnx,client,test]'
	$(BIN)/pytest -q -n $(TEST_PROCESSES) --dist loadfile $(PYTEST_ARGS)

# Everything but the tests that train, export or build a wheel.
test-fast: install
	$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

# Quality and speed on ../shared/data (about 20 minutes; see README).
bench: install
	$(BIN)/python bench/image_classifier.py

clean:
	rm -rf build dist *.egg-info $(VENV)
