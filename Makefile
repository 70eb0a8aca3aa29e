# Set-up commands that work on a fresh machine: each creates .venv/ with the pinned
# dependencies (requirements.txt) and installs ldseg_rt into it in editable mode.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo clean

$(STAMP): requirements.txt setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m ldseg_rt demo

clean:
	rm -rf $(VENV) build *.egg-info ldseg_rt/_C*.so
