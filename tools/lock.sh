#!/usr/bin/env bash
# `make lock`: every deployable's lock, with hashes, from its .in file (uv pip compile).
#
#   requirements-dev.txt            .venv, on every Python from 3.11 up (--universal)
#   requirements-bench.txt          the benchmarks' plots (matplotlib), on top of the dev lock
#   requirements-model.txt          `make model`: the model extra but torch (its CPU build is
#                                   installed first and alone)
#   functions/requirements.txt      the Lambda bundle: python3.13 on arm64 (Amazon Linux 2023)
#   gpu_worker/requirements.txt     the worker image: python3.12 of ubuntu 24.04, x86_64
#   gpu_worker/requirements-model.txt  the image's model: PyPI's torch, the CUDA build
#
# The development lock comes first and constrains the others, so every deployable runs the
# versions the tests ran with. An existing lock's versions are kept unless an .in asks for
# another (uv prefers them), so `make lock` after a pin change moves only what it must.
#
# Settings come from the environment (make passes them):
#   UV                the uv to run (make: .venv/bin/uv)
#   TORCH_VERSION     the model's torch pin (make: from requirements-model.in)
#   TORCH_CPU_WHEELS  where torch's CPU build lies: a find-links page or a folder
set -euo pipefail
cd "$(dirname "$0")/.."

: "${UV:?set UV (make lock sets it)}"
: "${TORCH_VERSION:?set TORCH_VERSION (make lock reads it from requirements-model.in)}"
: "${TORCH_CPU_WHEELS:?set TORCH_CPU_WHEELS (a find-links page or folder with the torch CPU build)}"

# PyPI only, whatever the machine's pip or uv configuration says: the hashes are PyPI's.
export UV_NO_CONFIG=1 UV_INDEX_URL=https://pypi.org/simple
unset UV_EXTRA_INDEX_URL UV_FIND_LINKS

compile() {
    "$UV" pip compile --quiet --generate-hashes --custom-compile-command "make lock" "$@"
}

compile requirements-dev.in --universal --python-version 3.11 -o requirements-dev.txt
compile requirements-bench.in -c requirements-dev.txt --universal --python-version 3.11 \
    -o requirements-bench.txt
compile functions/requirements.in -c requirements-dev.txt \
    --python-version 3.13 --python-platform aarch64-manylinux_2_34 -o functions/requirements.txt
compile gpu_worker/requirements.in -c requirements-dev.txt \
    --python-version 3.12 --python-platform x86_64-manylinux_2_39 -o gpu_worker/requirements.txt

# The development model: torch's CPU build resolves the rest (PyPI's Linux torch would pull
# gigabytes of CUDA wheels in), and is left out of the lock: `make model` installs it alone.
override=$(mktemp)
trap 'rm -f "$override"' EXIT
echo "torch==${TORCH_VERSION}+cpu" >"$override"
compile requirements-model.in -c requirements-dev.txt --override "$override" \
    --find-links "$TORCH_CPU_WHEELS" --no-emit-package torch \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements-model.txt
# The image's model: PyPI's torch for Linux, the CUDA build, its CUDA libraries as wheels.
compile requirements-model.in -c gpu_worker/requirements.txt -c requirements-model.txt \
    --python-version 3.12 --python-platform x86_64-manylinux_2_39 \
    -o gpu_worker/requirements-model.txt
