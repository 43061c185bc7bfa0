# cat-seg: two commands on a fresh machine
#   make demo   - install, then the main job on the embedded default (synthetic toy benchmark),
#                 then the tests marked `demo` (the toy run's learning check, several CPU minutes)
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
	CATSEG_DEMO_TESTS=1 $(PY) -m pytest -m demo tests/engine/test_toy_run.py

test: install
	$(PY) -m pytest tests

clean-toy:
	rm -rf $(TOY_OUT)
