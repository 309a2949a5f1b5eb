#!/usr/bin/env bash
# Proof that the packages of scripts/package.sh install and work without
# Rust: each is installed into a clean environment (a PATH with no cargo and
# no rustc, an empty HOME, nothing else inherited), and with each installed
# SDK a real worker serves a real step sent by the archived `tasker` binary
# (`tasker run` of a one-step workflow, the worker spawned with --spawn):
#
#   Python  a fresh virtualenv, `pip install --no-index` the wheel
#   Ruby    a fresh GEM_HOME, `gem install --local` the platform gem
#   Node    a fresh project, `npm install --offline` the tarball
#
# It prints each install's time and each artifact's size, and fails loudly
# when an install builds anything, a native file is not stripped, a worker
# did not serve the step, or the step's output did not come from the
# installed package. Every process it
# starts is stopped and its temporary files removed, whatever happens.
#
#   scripts/test-packages.sh                 package (release, into dist/), then test
#   scripts/test-packages.sh --profile dev   package the test suite's debug builds into a
#                                            temporary directory, then test (scripts/test.sh)
#   scripts/test-packages.sh --dist DIR      test the artifacts already in DIR
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

profile="${TASKER_PACKAGE_PROFILE:-release}"
dist=""
while (($#)); do
  case "$1" in
    --profile) profile="${2:?--profile needs a value}"; shift 2 ;;
    --profile=*) profile="${1#*=}"; shift ;;
    --dist) dist="${2:?--dist needs a value}"; shift 2 ;;
    --dist=*) dist="${1#*=}"; shift ;;
    *) echo "usage: scripts/test-packages.sh [--profile release|dev] [--dist DIR]" >&2; exit 2 ;;
  esac
done

say() { echo "test-packages: $*" >&2; }
fail() { echo "test-packages: FAILED: $*" >&2; exit 1; }

tmp="$(mktemp -d)"
groups=()
cleanup() {
  local status=$?
  # Each `tasker run` runs in a session of its own with its workers: stop
  # those process groups (TERM, then KILL what is left).
  for group in "${groups[@]}"; do kill -TERM -- "-$group" 2>/dev/null || true; done
  for group in "${groups[@]}"; do
    for _ in $(seq 50); do kill -0 -- "-$group" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$group" 2>/dev/null || true
  done
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

started=$SECONDS
if [ -z "$dist" ]; then
  if [ "$profile" = release ]; then dist="$root/dist"; else dist="$tmp/dist"; fi
  say "scripts/package.sh --profile $profile --out ${dist#"$root"/}"
  bash scripts/package.sh --profile "$profile" --out "$dist"
  say "packaged in $((SECONDS - started)) s"
fi

[ -d "$dist" ] || fail "no directory $dist"
dist="$(cd "$dist" && pwd)"
one() { # the single artifact of $dist matching a pattern
  local matches=()
  for file in "$dist"/$1; do [ -f "$file" ] && matches+=("$file"); done
  [ ${#matches[@]} -eq 1 ] || fail "expected one $1 in $dist, found ${#matches[@]} (run scripts/package.sh)"
  echo "${matches[0]}"
}
platform="$(uname -m)-linux"
cli_archive="$(one "tasker-*-$platform.tar.gz")"
wheel="$(one "tasker_core-*.whl")"
gem_file="$(one "tasker_core-*-$platform.gem")"
tarball="$(one "tasker-core-*.tgz")"

# The clean environment: PATH without any directory holding cargo or rustc
# (~/.cargo/bin), a fresh HOME, and no other variable inherited (no
# CARGO_*, RUBYLIB, PIP_*, npm_config_*).
clean_path=""
IFS=: read -r -a path_dirs <<<"$PATH"
for dir in "${path_dirs[@]}"; do
  [ -n "$dir" ] || continue
  [ -e "$dir/cargo" ] || [ -e "$dir/rustc" ] || [ "$dir" = "${CARGO_HOME:-$HOME/.cargo}/bin" ] && continue
  [[ ":$clean_path:" == *":$dir:"* ]] || clean_path="${clean_path:+$clean_path:}$dir"
done
mkdir -p "$tmp/home" "$tmp/logs"
clean() { env -i HOME="$tmp/home" PATH="$clean_path" LANG=C.UTF-8 TMPDIR="$tmp" "$@"; }
if clean sh -c 'command -v cargo || command -v rustc'; then
  fail "cargo or rustc is still on the clean PATH ($clean_path)"
fi
# pyenv's shims need the real HOME: take the interpreter they resolve to.
python="$(python3 -c 'import sys; print(sys.executable)')"
say "clean environment: PATH=$clean_path (no cargo, no rustc), HOME=$tmp/home"

# An installed native file must be stripped: no symbol table, no debug info.
stripped() {
  [ -f "$1" ] || fail "$1 is not installed"
  if readelf -S "$1" | grep -Eq '\.symtab|\.debug_info'; then fail "$1 is not stripped"; fi
}

now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
megabytes() { awk -v s="$(stat -c %s "$1")" 'BEGIN { printf "%.1f", s / 1e6 }'; }
results=()
record() { # artifact, install seconds, how
  results+=("$(printf '  %-55s %5s MB  %5s s  %s' "$(basename "$1")" "$(megabytes "$1")" "$2" "$3")")
}

# --- the tasker binary -------------------------------------------------------
t0="$(now)"
mkdir "$tmp/cli"
clean tar -xzf "$cli_archive" -C "$tmp/cli"
record "$cli_archive" "$(seconds "$t0" "$(now)")" "tar -xzf"
binaries=("$tmp"/cli/tasker-*/tasker)
[ -x "${binaries[0]}" ] || fail "no tasker binary in $(basename "$cli_archive")"
tasker="${binaries[0]}"
stripped "$tasker"
clean "$tasker" --version >&2 || fail "the archived tasker does not run"
# Every relative link of the README it carries leads to a file it carries.
readme="$(dirname "$tasker")/README.md"
while read -r link; do
  [ -e "$(dirname "$tasker")/$link" ] || fail "the archive's README links to $link, which it does not hold"
done < <(grep -o '](\([^)#h][^)]*\))' "$readme" | sed 's/](\(.*\))/\1/; s/#.*//' | sort -u)

# One step, served by whichever SDK's worker is spawned.
cat >"$tmp/greet.yaml" <<'YAML'
name: package_check
defaults:
  timeout_ms: 10000
  retry: { max_attempts: 1 }
steps:
  - name: greet
    handler: greet
YAML

# Runs the workflow with one spawned worker (NAME=COMMAND) and checks its
# report: the step completed on a NAME-* worker, with the greeting, and the
# package it came from is under the install directory given.
serve_step() {
  local lang="$1" command="$2" installed="$3"
  local report="$tmp/$lang-report.json"
  say "$lang: tasker run with a worker of the installed SDK"
  setsid timeout -k 5 120 env -i HOME="$tmp/home" PATH="$clean_path" LANG=C.UTF-8 TMPDIR="$tmp" \
    "$tasker" run "$tmp/greet.yaml" --endpoint tcp://127.0.0.1:0 --wait 60 --json \
    --context "{\"name\": \"$lang\"}" --logs "$tmp/logs" --spawn "$lang=$command" \
    >"$report" 2>"$tmp/logs/$lang-run.log" </dev/null &
  local pid=$!
  groups+=("$pid")
  local status=0
  wait "$pid" || status=$?
  if [ "$status" -ne 0 ]; then
    cat "$tmp/logs/$lang-run.log" "$tmp/logs/$lang.log" >&2 2>/dev/null || true
    fail "$lang: tasker run exited $status"
  fi
  "$python" - "$report" "$lang" "$installed" <<'PY' || { cat "$tmp/logs/$lang.log" >&2 2>/dev/null; fail "$lang: the report is not right"; }
import json, sys
report_file, lang, installed = sys.argv[1:]
report = json.load(open(report_file))
step = report["steps"][0]
output = step.get("output") or {}
problems = []
if report["status"] != "complete":
    problems.append(f"task status {report['status']!r}")
if step.get("outcome") != "completed":
    problems.append(f"step outcome {step.get('outcome')!r}: {step.get('error')}")
if not (step.get("worker_id") or "").startswith(lang + "-"):
    problems.append(f"served by {step.get('worker_id')!r}, not a {lang} worker")
if output.get("greeting") != f"hello {lang}":
    problems.append(f"output {output!r}")
if not str(output.get("package", "")).startswith(installed):
    problems.append(f"the SDK was loaded from {output.get('package')!r}, not from under {installed}")
if problems:
    print(f"{lang}: " + "; ".join(problems), file=sys.stderr)
    print(json.dumps(report, indent=2), file=sys.stderr)
    sys.exit(1)
print(f"{lang}: step served by {step['worker_id']} with the SDK from {output['package']}", file=sys.stderr)
PY
}

# --- Python: a fresh virtualenv, pip install --no-index the wheel -------------
clean "$python" -m venv "$tmp/venv"
t0="$(now)"
clean "$tmp/venv/bin/python" -m pip install --no-index --disable-pip-version-check --quiet "$wheel" \
  || fail "pip install --no-index $(basename "$wheel")"
record "$wheel" "$(seconds "$t0" "$(now)")" "pip install --no-index (fresh venv)"
[[ "$(basename "$wheel")" == *-abi3-* ]] || fail "$(basename "$wheel") is not an abi3 wheel"
stripped "$(echo "$tmp"/venv/lib/python3*/site-packages/tasker_core/_native*.so)"
cat >"$tmp/worker.py" <<'PY'
import os
import tasker_core

worker = tasker_core.Worker()  # built-in defaults and TASKER_* (TASKER_ENDPOINT from tasker run)


@worker.handler("greet")
def greet(step):
    return {"greeting": f"hello {step.task_context['name']}", "package": os.path.dirname(tasker_core.__file__)}


worker.run()
PY
serve_step python "$tmp/venv/bin/python $tmp/worker.py" "$tmp/venv/"

# --- Ruby: a fresh GEM_HOME, gem install --local the platform gem ------------
t0="$(now)"
clean GEM_HOME="$tmp/gems" GEM_PATH="$tmp/gems" gem install --local --no-document "$gem_file" >"$tmp/gem-install.log" 2>&1 \
  || { cat "$tmp/gem-install.log" >&2; fail "gem install --local $(basename "$gem_file")"; }
record "$gem_file" "$(seconds "$t0" "$(now)")" "gem install --local (fresh GEM_HOME)"
if grep -qi 'native extension' "$tmp/gem-install.log"; then
  cat "$tmp/gem-install.log" >&2
  fail "gem install built a native extension"
fi
stripped "$(echo "$tmp"/gems/gems/tasker_core-*/lib/tasker_core/tasker_core.so)"
cat >"$tmp/worker.rb" <<'RUBY'
require "tasker_core"

worker = TaskerCore::Worker.from_config(nil) # built-in defaults and TASKER_* (TASKER_ENDPOINT from tasker run)
worker.handle("greet") do |step|
  { greeting: "hello #{step.task_context['name']}", package: $LOADED_FEATURES.grep(%r{/tasker_core/tasker_core\.so\z}).first }
end
worker.run
RUBY
serve_step ruby "env GEM_HOME=$tmp/gems GEM_PATH=$tmp/gems ruby $tmp/worker.rb" "$tmp/gems/"

# --- Node: a fresh project, npm install --offline the tarball ----------------
mkdir "$tmp/project"
echo '{ "name": "package-check", "version": "1.0.0", "private": true }' >"$tmp/project/package.json"
t0="$(now)"
# The registry is an address where nothing listens: a request would fail.
(cd "$tmp/project" && clean npm_config_cache="$tmp/npm-cache" npm_config_registry=http://127.0.0.1:9/ \
  npm_config_update_notifier=false npm install --offline --no-audit --no-fund --loglevel=error "$tarball" >&2) || fail "npm install --offline $(basename "$tarball")"
record "$tarball" "$(seconds "$t0" "$(now)")" "npm install --offline (fresh project)"
addons=("$tmp"/project/node_modules/tasker-core/*.node)
[ ${#addons[@]} -eq 1 ] || fail "expected one addon in the npm package, found: ${addons[*]}"
stripped "${addons[0]}"
cat >"$tmp/project/worker.js" <<'JS'
const { Worker } = require("tasker-core");

const worker = new Worker(); // built-in defaults and TASKER_* (TASKER_ENDPOINT from tasker run)
worker.handle("greet", (step) => ({
  greeting: `hello ${step.taskContext.name}`,
  package: require.resolve("tasker-core"),
}));
worker.run();
JS
serve_step node "node $tmp/project/worker.js" "$tmp/project/node_modules/tasker-core/"

say "all packages installed without cargo or rustc and served a step ($((SECONDS - started)) s in all):"
printf '%s\n' "  artifact                                                  size   install  how" "${results[@]}" >&2
