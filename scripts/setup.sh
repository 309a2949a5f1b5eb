#!/usr/bin/env bash
# Installs what building and testing tasker-core needs on a fresh Debian
# machine that has only cargo, python3, node and npm. Idempotent; quiet when
# all is there. Language packages (pip, npm) are installed per binding by
# bindings/<lang>/build.sh, into the binding's own folder.
set -euo pipefail

need_apt=()
# A package counts as present only when dpkg says it is installed: a file
# pattern can match the wrong library (libclang-cpp14, which ships with other
# packages, is not the libclang that bindgen loads).
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }
want() { installed "$1" || need_apt+=("$1"); }
# Tools count by command, libraries by package.
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)   # zmq-sys builds libzmq from C++ source
command -v make >/dev/null 2>&1 || need_apt+=(make)   # and libsodium, for CURVE (vendor/zmq-sys)
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
command -v strip >/dev/null 2>&1 || need_apt+=(binutils)   # scripts/package.sh strips what it packs
# The Ruby binding: Ruby with headers, and libclang for rb-sys's bindgen.
command -v ruby >/dev/null 2>&1 || need_apt+=(ruby)
want ruby-dev
want libclang-dev
# The Ruby benchmark's plain worker uses Debian's ffi-rzmq.
want ruby-ffi-rzmq
# The store's tests start throwaway PostgreSQL servers (crates/tasker-pgtest)
# from Debian's server binaries.
want postgresql
# Issue 17's tests: a real Prometheus scrapes `tasker serve`, and a real
# headless Chromium drives the dashboard through ChromeDriver.
want prometheus
want chromium
want chromium-driver
# Debian's python3 needs python3-venv for the Python binding's virtualenv.
python3 -c 'import ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)

if ((${#need_apt[@]})); then
  echo "setup: installing ${need_apt[*]} from Debian" >&2
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy >/dev/null 2>&1 || true
