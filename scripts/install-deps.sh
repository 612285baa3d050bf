#!/usr/bin/env bash
# Installs what building and testing itproxy needs on a fresh Debian machine, only when missing:
# cmake (Pingora's zlib-ng build), a C compiler (ring, zlib-ng), curl, openssl, dig and busybox-static (tests), the
# system CA bundle, libfaketime (mounted into apps that declare `faketime`), the Rust toolchain
# rust-toolchain.toml pins, and the rustfmt and clippy components. Safe to run repeatedly.
# With --python-tests, also what the Python client's suite needs: venv, Chromium and its
# driver (the browser tests), and certutil (the browser's NSS database).
set -euo pipefail

need=()
if [ "${1:-}" = "--python-tests" ]; then
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
  command -v certutil >/dev/null 2>&1 || need+=(libnss3-tools)
fi
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v make >/dev/null 2>&1 || need+=(make)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v dig >/dev/null 2>&1 || need+=(dnsutils)
[ -x /bin/busybox ] || need+=(busybox-static)
ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || need+=(libfaketime)
[ -e /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "need root (or sudo) to install ${need[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

command -v cargo >/dev/null 2>&1 || { echo "cargo is missing: install Rust (https://rustup.rs)" >&2; exit 1; }
# The toolchain rust-toolchain.toml pins. On a machine that cannot download toolchains but whose
# stable is that very version, rustup gets it under the pinned name (a link, nothing fetched).
pinned=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$(dirname "$0")/../rust-toolchain.toml")
if command -v rustup >/dev/null 2>&1 && ! rustup toolchain list | grep -q "^$pinned"; then
  stable=$(rustup run stable rustc --version 2>/dev/null | awk '{print $2}')
  if [ "$stable" = "$pinned" ]; then
    echo "linking the installed stable Rust ($stable) as the pinned toolchain $pinned"
    rustup toolchain link "$pinned" "$(rustup run stable rustc --print sysroot)"
  else
    echo "rust-toolchain.toml pins Rust $pinned and rustup does not have it (stable is ${stable:-missing}): run \`rustup toolchain install $pinned --component rustfmt clippy\`" >&2
    exit 1
  fi
fi
for comp in rustfmt clippy; do
  if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$comp"
  fi
done
