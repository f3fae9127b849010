#!/usr/bin/env bash
# tools/find_python.sh 3.12: the path of a python3.12 interpreter, or exit 1 with how to get one.
# Looks on PATH first, then in pyenv's versions (whatever PYENV_VERSION says), so no particular
# pyenv layout is required.
set -euo pipefail
version=${1:?usage: $0 MAJOR.MINOR}
[[ $version =~ ^3\.[0-9]+$ ]] || { echo "find_python: $version is not MAJOR.MINOR" >&2; exit 2; }

works() { "$1" -c 'import sys, venv; sys.exit(0)' >/dev/null 2>&1; }

candidate=$(command -v "python$version" 2>/dev/null || true)
if [[ -n $candidate ]] && works "$candidate" \
    && [[ $("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])') == "$version" ]]; then
    echo "$candidate"
    exit 0
fi
if command -v pyenv >/dev/null 2>&1; then
    root=$(pyenv root)
    for installed in $(pyenv versions --bare 2>/dev/null | grep -E "^${version//./\\.}(\.[0-9]+)?$" | sort -rV); do
        candidate="$root/versions/$installed/bin/python$version"
        if [[ -x $candidate ]] && works "$candidate"; then
            echo "$candidate"
            exit 0
        fi
    done
fi
echo "find_python: no python$version here; install it (pyenv install $version, or your system's" \
    "python$version and python$version-venv packages)" >&2
exit 1
