#!/usr/bin/env bash
# Install the lab's Python environment into /opt/venv from uv.lock, the lab's one lock file.
# Used by both images: spark/Dockerfile (runtime packages + lab_utils) and jupyterlab/Dockerfile
# (adds the `jupyter` dependency group). Extra arguments go to `uv sync`.
set -euo pipefail

src=/opt/lab-src
python=/usr/bin/python3.11
# The uv version is written once, in pyproject.toml; the Makefile reads it the same way.
uv_version=$(sed -n 's/^required-version = "==\(.*\)"/\1/p' "${src}/pyproject.toml")
uv=/opt/uv/bin/uv
if [[ ! -x "${uv}" ]] || [[ "$("${uv}" --version)" != "uv ${uv_version}"* ]]; then
    # uv lives in a venv of its own, so `uv sync` never sees (or removes) it in /opt/venv.
    "${python}" -m venv /opt/uv
    /opt/uv/bin/pip install --quiet --no-cache-dir --disable-pip-version-check "uv==${uv_version}"
fi

cd "${src}"
# --frozen: install exactly what uv.lock says, never re-resolve at build time.
# --no-editable: lab_utils is copied into site-packages, so the image does not depend on /opt/lab-src.
UV_PROJECT_ENVIRONMENT=/opt/venv UV_PYTHON_DOWNLOADS=never UV_LINK_MODE=copy \
    "${uv}" sync --frozen --python "${python}" --no-default-groups --no-editable --no-cache "$@"
