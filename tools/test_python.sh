#!/usr/bin/env bash
# `make test-pythons`: the unit tests on another Python spotline runs on, in a venv of its own
# (.venv-pyMAJOR.MINOR) installed from the same lock as .venv (requirements-dev.txt, resolved for
# every Python from 3.11 up). A Python this machine lacks is skipped with how to get it, and
# REQUIRE_PYTHONS=1 (CI's setting where it provides them) makes that a failure.
#
#   tools/test_python.sh 3.12 [pytest arguments]   default arguments: tests/unit -q -n auto
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:?usage: $0 MAJOR.MINOR [pytest arguments]}
shift
if ! python=$(tools/find_python.sh "$version"); then
    if [[ ${REQUIRE_PYTHONS:-0} == 1 ]]; then
        echo "test_python: python$version is required here (REQUIRE_PYTHONS=1)" >&2
        exit 1
    fi
    echo "test_python: skipped the python$version run (see above for how to get it)" >&2
    exit 0
fi
venv=.venv-py$version
stamp=$venv/.installed
if [[ ! -f $stamp || requirements-dev.txt -nt $stamp || pyproject.toml -nt $stamp ]]; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet --require-hashes -r requirements-dev.txt
    for package in . plugins/spotline-drills examples/kmeans; do
        "$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$package"
    done
    touch "$stamp"
fi
echo "test_python: $("$venv/bin/python" --version) in $venv"
if [[ $# == 0 ]]; then
    set -- tests/unit -q -n auto
fi
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$@"
