# Two commands do everything on a fresh machine:
#   make app    set up a small environment from deployment/requirements.txt and open the app
#   make test   set up the full environment and run the test suite
PYTHON ?= python3
VENV := .venv
APP_VENV := .venv-app
FASTAI := fastai==2.8.12
HOST ?= 127.0.0.1
PORT ?= 7860

.PHONY: app setup test bench clean

app: $(APP_VENV)/.installed
	$(APP_VENV)/bin/python deployment/app.py --host $(HOST) --port $(PORT)

$(APP_VENV)/.installed: deployment/requirements.txt
	$(PYTHON) -m venv $(APP_VENV)
	$(APP_VENV)/bin/pip install -q -r deployment/requirements.txt
	touch $@

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps $(FASTAI)
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

test: setup
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile  # a file's tests share a worker (and its fixtures)

clean:
	rm -rf $(VENV) $(APP_VENV)
