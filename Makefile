# cat-seg: two commands on a fresh machine
#   make demo   - install, then the main job on the embedded default (synthetic toy benchmark)
#   make test   - install, then the test suite
PY      ?= .venv/bin/python
VENV    ?= .venv
TOY_OUT ?= output/toy
export VENV

.PHONY: install demo test toy-data clean-toy

install:
	@scripts/setup_env.sh

toy-data: install
	$(PY) datasets/prepare_synthetic.py

demo: install
	$(PY) tools/run_toy.py --output $(TOY_OUT)

test: install
	$(PY) -m pytest tests

clean-toy:
	rm -rf $(TOY_OUT)
