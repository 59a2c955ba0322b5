#!/usr/bin/env bash
# Builds the release archives of the kubectl plugin (kubectl-tokenbudget) and renders its krew
# manifest with their checksums.
#
#   hack/release.sh [--out DIR] [--binaries DIR]
#
# Builds kubectl-tokenbudget with the `dist` profile (release, LTO, stripped) for
# x86_64-unknown-linux-musl and aarch64-unknown-linux-musl with cargo-zigbuild (zig as the C
# compiler and linker of ring's C parts), both from PyPI into .venv-release/
# (hack/release-requirements.txt): static binaries, from any Linux build machine. Then writes
# to DIR (default dist/):
#
#   kubectl-tokenbudget_v<version>_linux_amd64.tar.gz   the binary alone, reproducible
#   kubectl-tokenbudget_v<version>_linux_arm64.tar.gz   (sorted, owner 0, mtime 0, gzip -n)
#   SHA256SUMS                                          sha256sum's format, both archives
#   tokenbudget.yaml                                    the krew manifest (krew install
#                                                       --manifest=DIR/tokenbudget.yaml)
#
# --binaries DIR takes DIR/linux_amd64/kubectl-tokenbudget and DIR/linux_arm64/kubectl-tokenbudget
# instead of building (the tests use it). Environment: RELEASE_BASE_URL, where the archives
# are published (the manifest's `uri`s): default the GitHub release of the version;
# CARGO_TARGET_DIR as for cargo.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

out=dist
binaries=
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --binaries) binaries=$2; shift 2 ;;
    *) echo "usage: hack/release.sh [--out DIR] [--binaries DIR]" >&2; exit 2 ;;
  esac
done

version=v$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
base_url=${RELEASE_BASE_URL:-https://github.com/tokenbudget/tokenbudget-operator/releases/download/$version}
# Krew's arch names, and Rust's targets for them.
declare -A TARGETS=([amd64]=x86_64-unknown-linux-musl [arm64]=aarch64-unknown-linux-musl)

build() {
  if [ ! -x .venv-release/bin/cargo-zigbuild ]; then
    python3 -m venv .venv-release
    .venv-release/bin/pip install -q --disable-pip-version-check -r hack/release-requirements.txt
  fi
  export PATH=$REPO/.venv-release/bin:$PATH
  rustup target add "${TARGETS[@]}" >/dev/null
  local arch
  for arch in amd64 arm64; do
    cargo zigbuild --locked --quiet --profile dist --bin kubectl-tokenbudget --target "${TARGETS[$arch]}"
  done
}

binary() {
  if [ -n "$binaries" ]; then
    echo "$binaries/linux_$1/kubectl-tokenbudget"
  else
    echo "${CARGO_TARGET_DIR:-target}/${TARGETS[$1]}/dist/kubectl-tokenbudget"
  fi
}

[ -n "$binaries" ] || build
mkdir -p "$out"
out=$(cd "$out" && pwd)
stage=$(mktemp -d "${TMPDIR:-/tmp}/tokenbudget-release.XXXXXX")
trap 'rm -rf "$stage"' EXIT

declare -A SHA
for arch in amd64 arm64; do
  bin=$(binary "$arch")
  [ -x "$bin" ] || { echo "release: no executable $bin" >&2; exit 1; }
  archive=kubectl-tokenbudget_${version}_linux_${arch}.tar.gz
  mkdir -p "$stage/$arch"
  install -m 0755 "$bin" "$stage/$arch/kubectl-tokenbudget"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$stage/$arch" -cf - kubectl-tokenbudget \
    | gzip -9n >"$out/$archive"
  SHA[$arch]=$(sha256sum "$out/$archive" | cut -d' ' -f1)
done
(cd "$out" && sha256sum kubectl-tokenbudget_"${version}"_linux_*.tar.gz >SHA256SUMS)

platform() {
  cat <<EOF
  - selector:
      matchLabels:
        os: linux
        arch: $1
    uri: $base_url/kubectl-tokenbudget_${version}_linux_$1.tar.gz
    sha256: ${SHA[$1]}
    bin: kubectl-tokenbudget
    files:
      - from: kubectl-tokenbudget
        to: .
EOF
}

cat >"$out/tokenbudget.yaml" <<EOF
# The krew manifest of kubectl-tokenbudget $version, written by hack/release.sh.
apiVersion: krew.googlecontainertools.github.com/v1alpha2
kind: Plugin
metadata:
  name: tokenbudget
spec:
  version: $version
  homepage: https://github.com/tokenbudget/tokenbudget-operator
  shortDescription: Show the LLM token budgets of workloads
  description: |
    Shows the TokenBudgets of the tokenbudget-operator: how much of each budget is used, its
    burn rate, when it runs out and resets, which workloads spend, and what the operator
    enforces. \`kubectl tokenbudget status\` and \`kubectl tokenbudget top\`.
  caveats: |
    Needs the tokenbudget-operator's CRDs in the cluster, and get and list on
    tokenbudgets.tokenbudget.io.
  platforms:
$(platform amd64)
$(platform arm64)
EOF
echo "release: $out/tokenbudget.yaml and $(ls "$out"/*.tar.gz | wc -l) archives for $version"
