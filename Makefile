# Two commands a new user needs: `make demo` (the whole study on the built-in synthetic cohort)
# and `make test`. Both create the virtual environment themselves on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STUDY ?= study-demo
# UTF-8 everywhere, whatever the machine locale (reports and tables contain ±, ×, Greek letters).
export PYTHONUTF8 := 1

.PHONY: demo deploy-demo test test-fast env wheel clean

env: $(VENV)/.installed

# torch is pinned to the CPU build that lies on local disk (a bare `torch` would pull a multi-GB CUDA build);
# pyradiomics imports numpy in setup.py, so it is built without build isolation after numpy is in place.
# (The 3.1.0 sdist fails to compile: it lacks cmatrices.h; pip then settles on 3.0.1, which builds with numpy 2.)
# torch==2.13.0 is repeated in the last install so no extra (nvflare's dependencies) can pull another torch.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0 "numpy>=1.26" versioneer
	$(PY) -m pip install -q --no-build-isolation pyradiomics
	$(PY) -m pip install -q torch==2.13.0 -e ".[test,deploy,federated]"
	touch $@

demo: env
	$(VENV)/bin/p53hcc study --out $(STUDY)

# after `make demo`: export the chosen DL arm as a zoo bundle and score new DICOM patients with the Deploy app
deploy-demo: env
	$(PY) scripts/deploy_demo.py --study $(STUDY)

# the whole suite (what CI runs): unit tests and the end-to-end tests marked slow
test: env
	$(PY) -m pytest -q

# the unit tier for your own loop (under 3 minutes on 2 cores)
test-fast: env
	$(PY) -m pytest -q -m "not slow"

# the wheel users install: p53hcc/... and both bundles
wheel: env
	$(PY) -m build --wheel --no-isolation --outdir dist .

clean:
	rm -rf $(VENV) $(STUDY) dist build
