#!/usr/bin/env bash
# Install the lab's Python environment into /opt/venv from uv.lock, the lab's one lock file.
# Used by both images: spark/Dockerfile (runtime packages + lab_utils) and jupyterlab/Dockerfile
# (adds the `jupyter` dependency group). Extra arguments go to `uv sync`.
set -euo pipefail

src=/opt/lab-src
# The uv version is written once, in pyproject.toml; the Makefile reads it the same way.
uv_version=$(sed -n 's/^required-version = "==\(.*\)"/\1/p' "${src}/pyproject.toml")
if ! command -v uv >/dev/null || [[ "$(uv --version)" != "uv ${uv_version} "* ]]; then
    python -m pip install --no-cache-dir --disable-pip-version-check "uv==${uv_version}"
fi

cd "${src}"
# --frozen: install exactly what uv.lock says, never re-resolve at build time.
# --no-editable: lab_utils is copied into site-packages, so the image does not depend on /opt/lab-src.
UV_PROJECT_ENVIRONMENT=/opt/venv UV_PYTHON_DOWNLOADS=never UV_LINK_MODE=copy \
    uv sync --frozen --no-default-groups --no-editable --no-cache "$@"
