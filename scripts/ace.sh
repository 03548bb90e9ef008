#!/usr/bin/env bash
# Runs appc's ACE validator (manifests/ace-validator.yaml) as a user would:
# builds its images if needed (scripts/build-ace-validator.sh), signs them
# with a throwaway key trusted for coreos.com/ in a throwaway data and
# configuration directory, runs the pod in a namespace pod and in a VM pod
# (or the one isolation given: namespace | vm), and prints each app's log.
# Exits non-zero unless every check printed OK: `prestart OK`, `main OK`,
# `poststop OK` (main's) and `sidekick OK`.
set -euo pipefail
cd "$(dirname "$0")/.."
pod=${POD:-$(command -v pod || echo target/release/pod)}
isolations=${1:-namespace vm}
bash scripts/build-ace-validator.sh
images=$(dirname "${POD_TEST_BIN:-/usr/local/lib/pod-test/bin}")/ace-v0.8.11
[ -s "$images/ace-validator-main.aci" ] || { echo "the ACE validator's images were not built" >&2; exit 1; }
work=$(mktemp -d /var/tmp/pod-ace.XXXXXX)
export POD_DIR=$work/data POD_CONFIG=$work/config
cleanup() {
  "$pod" gc >/dev/null 2>&1 || true
  pid=$(cat "$POD_DIR/metadata/service.pid" 2>/dev/null || true)
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
"$pod" key gen --out "$work/key" >/dev/null
"$pod" trust add --prefix coreos.com/ "$work/key/pod.pub" 2>/dev/null
for typ in main sidekick; do
  cp "$images/ace-validator-$typ.aci" "$work/"
  "$pod" image sign --key "$work/key/pod.key" "$work/ace-validator-$typ.aci" >/dev/null
  "$pod" fetch "$work/ace-validator-$typ.aci" >/dev/null
done
failed=0
for isolation in $isolations; do
  stage1=ns
  [ "$isolation" = vm ] && stage1=vm
  echo "== the ACE validator in a $isolation pod"
  status=0
  "$pod" run --stage1 "$stage1" --name "ace-$isolation" manifests/ace-validator.yaml >/dev/null 2>"$work/run.err" || status=$?
  for app in ace-validator-main ace-validator-sidekick; do
    "$pod" logs "ace-$isolation" "$app" | sed "s/^/[$app] /"
  done
  oks=$( ("$pod" logs "ace-$isolation" ace-validator-main; "$pod" logs "ace-$isolation" ace-validator-sidekick) |
    grep -cE '^(prestart|main|poststop|sidekick) OK$' || true)
  if [ "$status" -ne 0 ] || [ "$oks" -ne 4 ]; then
    echo "FAILED in the $isolation pod (pod run exit $status, $oks of 4 OK)"
    cat "$work/run.err"
    failed=1
  else
    echo "PASSED in the $isolation pod: prestart, main, poststop and sidekick OK"
  fi
  "$pod" rm "ace-$isolation" >/dev/null 2>&1 || true
done
exit "$failed"
