#!/usr/bin/env bash
# Fresh machine -> .venv with quantize (editable) and its pinned dependencies, tests included.
#
# llama-cpp-python is a source package: pip compiles llama.cpp with -march=native by default,
# and such builds died with SIGILL (illegal instruction) on AVX-512/AMX machines. Here it is
# compiled once, portable (GGML_NATIVE=OFF: the x86-64 AVX2/FMA/F16C baseline, no
# build-machine-only instructions), into a wheel cache keyed by its version, these flags and
# the interpreter, so a native wheel is never reused for a portable install or the reverse.
# pip's own wheel cache is bypassed for it, as pip keys that cache by URL only.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3.11}
LLAMA_CPP_FLAGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"
version=$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)
[ -n "$version" ] || { echo "install.sh: pyproject.toml pins no llama-cpp-python==VERSION" >&2; exit 2; }

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
tag=$(.venv/bin/python -c 'import platform, sys; print(sys.implementation.cache_tag, platform.machine())')
key=$(printf '%s\n' "$version" "$LLAMA_CPP_FLAGS" "$tag" | sha256sum | cut -c1-12)
wheels="${QUANTIZE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/quantize/wheels}/llama-cpp-python-$version-$key"

if ! ls "$wheels"/llama_cpp_python-"$version"-*.whl >/dev/null 2>&1; then
    echo "install.sh: compiling llama-cpp-python $version ($LLAMA_CPP_FLAGS), about 4 minutes on 2 cores, once; cached in $wheels"
    mkdir -p "$(dirname "$wheels")"
    tmp=$(mktemp -d "$wheels.partial-XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    CMAKE_ARGS="$LLAMA_CPP_FLAGS" .venv/bin/pip wheel --quiet --no-cache-dir --no-deps -w "$tmp" "llama-cpp-python==$version"
    mv -T "$tmp" "$wheels" 2>/dev/null || rm -rf "$tmp"   # another install finished first: keep its wheel
fi
# --only-binary: pip must take the portable wheel above and never compile llama.cpp natively itself.
.venv/bin/pip install --quiet --find-links "$wheels" --only-binary llama-cpp-python -e ".[test]"
echo "install.sh: done; .venv/bin/python -m quantize --help"
