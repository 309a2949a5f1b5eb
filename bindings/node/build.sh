#!/usr/bin/env bash
# Builds the Node binding for development: its npm dev dependencies
# (@napi-rs/cli, typescript, zeromq) into ./node_modules, and the addon in
# the dev profile into the workspace's shared target directory, with its
# loader (native.js) and generated declarations (native.d.ts). Idempotent and
# quick when all is built. With --tools, only the npm dev dependencies (napi,
# for scripts/package.sh): nothing is built.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

if [ ! -x node_modules/.bin/napi ] || [ ! -x node_modules/.bin/tsc ] || [ ! -d node_modules/zeromq ] \
  || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
[ "${1:-}" = "--tools" ] && exit 0
npx napi build --platform --js native.js --dts native.d.ts >/dev/null
