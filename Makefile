# cat-seg: two commands on a fresh machine
#   make demo   - install, then the main job on the embedded default (synthetic toy benchmark),
#                 then the tests marked `demo` (the toy run's learning check, several CPU minutes)
#   make test   - install, then the test suite
#   make app    - install, then the web app (cat-seg-app)
VENV    ?= .venv
PY      ?= $(VENV)/bin/python
TOY_OUT ?= output/toy
export VENV

.PHONY: install demo test app browser toy-data clean-toy

install:
	@scripts/setup_env.sh

toy-data: install
	$(PY) datasets/prepare_synthetic.py

demo: install
	$(PY) tools/run_toy.py --output $(TOY_OUT)
	CATSEG_DEMO_TESTS=1 $(PY) -m pytest -m demo tests/engine/test_toy_run.py

# the web-app test drives headless Chromium: install it first (apt-get as root / in CI;
# elsewhere the script says what to run and that test skips with its reason)
browser:
	-@scripts/install_browser.sh

# --durations: the slowest tests at the end of the log (the suite must stay under 10 minutes on 2 cores)
test: install browser
	$(PY) -m pytest tests --durations=15

# the web app on http://127.0.0.1:7860 (the toy model after `make demo`, else released weights)
app: install
	$(VENV)/bin/cat-seg-app

clean-toy:
	rm -rf $(TOY_OUT)
