#!/usr/bin/env bash
# Checks deploy/kubernetes/ and the Dockerfile offline:
#   1. installs kubernetes-validate (pinned; PyPI) into target/k8s-venv/: its wheel carries the
#      Kubernetes JSON schemas of every release it knows, so validation needs no network;
#   2. validates every manifest, strictly (an unknown field is an error), against Kubernetes
#      $K8S_VERSION, and checks that the validator refuses a manifest with a misspelt field
#      (a check that cannot fail is no check);
#   3. scripts/check_deploy.py: the numbers and names that must agree between the manifests,
#      the Dockerfile, the server's own --help and its metrics.
set -euo pipefail
cd "$(dirname "$0")/.."

KV_VERSION=1.37.0
K8S_VERSION="${K8S_VERSION:-1.33.0}"
VENV=target/k8s-venv

if ! "$VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KV_VERSION"; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
fi

"$VENV/bin/kubernetes-validate" --strict -k "$K8S_VERSION" deploy/kubernetes/*.yaml

BROKEN="$(mktemp --suffix=.yaml)"
trap 'rm -f "$BROKEN"' EXIT
sed 's/readinessProbe:/readinesProbe:/' deploy/kubernetes/deployment.yaml >"$BROKEN"
if "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$BROKEN" >/dev/null 2>&1; then
    echo "check-deploy: the validator accepted a misspelt field (readinesProbe): it checks nothing" >&2
    exit 1
fi

cargo build --quiet --bin crossrank ${CROSSRANK_FEATURES:+--features "$CROSSRANK_FEATURES"}
"$VENV/bin/python" scripts/check_deploy.py "${CARGO_TARGET_DIR:-target}/debug/crossrank"
echo "check-deploy: ok (kubernetes-validate $KV_VERSION, Kubernetes $K8S_VERSION, strict)"
