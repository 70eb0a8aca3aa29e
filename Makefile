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

# Two workers, whole files each (module fixtures built once): many tests wait on servers,
# subprocesses and Ray rather than compute, so two share 2 cores well.
test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q -n 2 --dist loadfile tests

demo: $(STAMP)
	$(PY) -m ldseg_rt demo

clean:
	rm -rf $(VENV) build *.egg-info ldseg_rt/_C*.so
