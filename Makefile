# Two commands a new user needs: `make demo` (the whole study on the built-in synthetic cohort)
# and `make test`. Both create the virtual environment themselves on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The MONAI Deploy app and its tests have their own environment: with the App SDK installed every `import monai`
# loads holoscan and cupy, which the study has no use for.
DEPLOY_VENV ?= .venv-deploy
DEPLOY_PY := $(DEPLOY_VENV)/bin/python
STUDY ?= study-demo
STUDY_EXTRAS := test,dicom,zoo,federated
DEPLOY_EXTRAS := test,dicom,zoo,deploy
# UTF-8 everywhere, whatever the machine locale (reports and tables contain ±, ×, Greek letters).
export PYTHONUTF8 := 1

.PHONY: demo deploy-demo deploy-env map test test-fast test-deploy env wheel clean

env: $(VENV)/.installed
deploy-env: $(DEPLOY_VENV)/.installed

# torch is pinned to the CPU build that lies on local disk (a bare `torch` would pull a multi-GB CUDA build);
# pyradiomics imports numpy in setup.py, so it is built without build isolation after numpy is in place.
# (The 3.1.0 sdist fails to compile: it lacks cmatrices.h; pip then settles on 3.0.1, which builds with numpy 2.)
# $(1): the environment's folder, $(2): the extras. pip's cache serves the second build. torch==2.13.0 is repeated in
# the last install so that no extra (nvflare's dependencies) can pull another torch.
define make_venv
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip setuptools wheel
	$(1)/bin/python -m pip install -q torch==2.13.0 "numpy>=1.26" versioneer
	$(1)/bin/python -m pip install -q --no-build-isolation pyradiomics
	$(1)/bin/python -m pip install -q torch==2.13.0 -e ".[$(2)]"
	touch $(1)/.installed
endef

# the study's environment: no MONAI Deploy SDK
$(VENV)/.installed: pyproject.toml
	$(call make_venv,$(VENV),$(STUDY_EXTRAS))

# the Deploy app's environment: the study's packages and the App SDK + packager
$(DEPLOY_VENV)/.installed: pyproject.toml
	$(call make_venv,$(DEPLOY_VENV),$(DEPLOY_EXTRAS))

demo: env
	$(VENV)/bin/p53hcc study --out $(STUDY)

# after `make demo`: export the chosen DL arm as a zoo bundle and score new DICOM patients with the Deploy app
deploy-demo: deploy-env
	$(DEPLOY_PY) scripts/deploy_demo.py --study $(STUDY)

# the MONAI Application Package (needs Docker): see deploy/README.md
map: deploy-env wheel
	PATH="$(abspath $(DEPLOY_VENV))/bin:$$PATH" bash deploy/package.sh

# the whole suite (what CI runs): every test, those of the Deploy app in their own environment
test: env deploy-env
	$(PY) -m pytest -q -m "not deploy"
	$(MAKE) test-deploy

test-deploy: deploy-env
	$(DEPLOY_PY) -m pytest -q -m deploy

# the unit tier for your own loop (under 3 minutes on 2 cores; no Deploy SDK)
test-fast: env
	$(PY) -m pytest -q -m "not slow and not deploy"

# the wheel users install: p53hcc/... and both bundles
wheel: env
	$(PY) -m build --wheel --no-isolation --outdir dist .

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) $(STUDY) dist build
