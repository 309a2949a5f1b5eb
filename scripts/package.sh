#!/usr/bin/env bash
# Packages tasker-core so that installing it compiles nothing: no Rust, no
# libzmq. Writes to dist/ (each run replaces that kind's earlier artifact):
#
#   tasker_core-VERSION-cp39-abi3-manylinux_*_x86_64.whl  Python ≥ 3.9 (abi3), built by maturin
#   tasker_core-VERSION-x86_64-linux.gem                  Ruby platform gem: `gem build tasker_core.gemspec`
#   tasker-core-VERSION.tgz                               npm package with the addon
#   tasker-VERSION-x86_64-linux.tar.gz                    the `tasker` binary, with README.md and what it links to
#
# Every native library and binary in them is stripped.
#
#   scripts/package.sh [--profile release|dev] [--out DIR] [--only python,ruby,node,cli]
#
# --profile (or TASKER_PACKAGE_PROFILE) is the cargo profile: release by
# default. dev packages the debug builds the test suite has already made
# (scripts/test-packages.sh --profile dev does, in scripts/test.sh), so it
# compiles next to nothing. --out (or TASKER_PACKAGE_OUT): another directory
# than dist/. --only: some of the artifacts.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

profile="${TASKER_PACKAGE_PROFILE:-release}"
out="${TASKER_PACKAGE_OUT:-$root/dist}"
only="python,ruby,node,cli"
usage() { echo "usage: scripts/package.sh [--profile release|dev] [--out DIR] [--only python,ruby,node,cli]" >&2; exit 2; }
while (($#)); do
  case "$1" in
    --profile) profile="${2:?--profile needs a value}"; shift 2 ;;
    --profile=*) profile="${1#*=}"; shift ;;
    --out) out="${2:?--out needs a value}"; shift 2 ;;
    --out=*) out="${1#*=}"; shift ;;
    --only) only="${2:?--only needs a value}"; shift 2 ;;
    --only=*) only="${1#*=}"; shift ;;
    -h | --help) usage ;;
    *) echo "package.sh: unknown argument $1" >&2; usage ;;
  esac
done
wants() { [[ ",$only," == *",$1,"* ]]; }
for part in ${only//,/ }; do
  case "$part" in python | ruby | node | cli) ;; *) echo "package.sh: --only takes python, ruby, node, cli" >&2; exit 2 ;; esac
done

# The cargo profile's flags for each tool, and its directory under target/.
case "$profile" in
  release) cargo_profile=(--release); profile_dir=release ;;
  dev | debug) profile=dev; cargo_profile=(); profile_dir=debug ;;
  *) cargo_profile=(--profile "$profile"); profile_dir="$profile" ;;
esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
target="$CARGO_TARGET_DIR"
platform="$(uname -m)-linux"

bash scripts/setup.sh
mkdir -p "$out"
out="$(cd "$out" && pwd)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

say() { echo "package: $*" >&2; }
started=$SECONDS
done_in() { say "$1 in $((SECONDS - started)) s"; started=$SECONDS; }

if wants cli; then
  say "tasker binary ($profile profile)"
  cargo build --quiet "${cargo_profile[@]}" -p tasker-cli
  version="$("$target/$profile_dir/tasker" --version | awk '{print $2}')"
  name="tasker-$version-$platform"
  mkdir "$stage/$name"
  cp "$target/$profile_dir/tasker" "$stage/$name/tasker"
  strip "$stage/$name/tasker"
  for doc in README.md LICENSE LICENSE.md LICENSE.txt; do
    if [ -f "$doc" ]; then cp "$doc" "$stage/$name/"; fi
  done
  # What the README links to and a user of the binary alone needs: the
  # protocol (to write a worker), the example workflows (`serve`'s default
  # workflows_dir, so `./tasker serve` in this folder has them), the SDKs'
  # READMEs, the config. Without them every such link was broken.
  for doc in protocol/SPEC.md protocol/CLIENT.md protocol/openapi.json protocol/schema \
    examples/workflows examples/python-client config/zeromq.yaml docs/dashboard.png \
    bindings/python/README.md bindings/node/README.md bindings/ruby/README.md; do
    mkdir -p "$stage/$name/$(dirname "$doc")"
    cp -R "$doc" "$stage/$name/$doc"
  done
  rm -f "$out"/tasker-*-"$platform".tar.gz
  tar -C "$stage" -czf "$out/$name.tar.gz" "$name"
  done_in "$name.tar.gz"
fi

if wants python; then
  say "Python wheel ($profile profile, maturin)"
  bash bindings/python/build.sh --tools
  # Invoked as bindings/python/test.sh invokes it (same interpreter found,
  # same flags but --strip), so the dev profile finds its build up to date.
  (cd bindings/python && .venv/bin/maturin build --quiet --profile "$profile" --strip --out "$stage/wheels" >/dev/null)
  wheels=("$stage"/wheels/tasker_core-*.whl)
  [ ${#wheels[@]} -eq 1 ] || { say "expected one wheel, got: ${wheels[*]}"; exit 1; }
  rm -f "$out"/tasker_core-*.whl
  mv "${wheels[0]}" "$out/"
  done_in "$(basename "${wheels[0]}")"
fi

if wants ruby; then
  say "Ruby platform gem ($profile profile, gem build tasker_core.gemspec)"
  # In the checkout the gemspec makes the platform gem: it builds the
  # extension with cargo and carries it, stripped, as lib/tasker_core/tasker_core.so.
  gem_name="$(cd bindings/ruby && ruby -e 'print Gem::Specification.load("tasker_core.gemspec").file_name')"
  rm -f "$out"/tasker_core-*.gem
  (cd bindings/ruby && TASKER_CORE_CARGO_PROFILE="$profile" gem build --quiet tasker_core.gemspec --output "$out/$gem_name" >/dev/null)
  done_in "$gem_name"
fi

if wants node; then
  say "npm package ($profile profile, napi)"
  bash bindings/node/build.sh --tools
  # A staged copy of the package: `npm pack` in bindings/node would ship
  # whichever addon was built there last (the test suite's is the debug one).
  pkg="$stage/node"
  mkdir "$pkg"
  napi_profile=()
  case "$profile" in release) napi_profile=(--release) ;; dev) ;; *) napi_profile=(--profile "$profile") ;; esac
  (cd bindings/node && npx napi build --platform "${napi_profile[@]}" --output-dir "$pkg" \
    --js native.js --dts native.d.ts >/dev/null)
  cp -R bindings/node/package.json bindings/node/README.md bindings/node/lib "$pkg/"
  addons=("$pkg"/*.node)
  [ ${#addons[@]} -eq 1 ] || { say "expected one addon, got: ${addons[*]}"; exit 1; }
  strip "${addons[0]}"
  rm -f "$out"/tasker-core-*.tgz
  tarball="$(cd "$pkg" && npm pack --ignore-scripts --silent --pack-destination "$out")"
  done_in "$tarball"
fi

say "$profile profile artifacts in ${out#"$root"/}:"
for file in "$out"/tasker_core-*.whl "$out"/tasker_core-*.gem "$out"/tasker-core-*.tgz "$out"/tasker-*-"$platform".tar.gz; do
  if [ -f "$file" ]; then
    printf '  %-55s %5.1f MB\n' "$(basename "$file")" "$(stat -c %s "$file" | awk '{print $1 / 1e6}')" >&2
  fi
done
