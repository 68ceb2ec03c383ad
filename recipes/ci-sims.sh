#!/usr/bin/env bash
# Run sims in the VM from CI: boot, run them with a JUnit file and an HTML report, copy
# the run folder, and always bring the VM down. The GitHub Actions recipe calls it.
#
#   recipes/ci-sims.sh SIM_OR_DIR...
#
# Results go to $PATCHBAY_CI_OUT (default ci-results/): sims.xml, report.html, run/.
# Exit code: sim.run's (0 all passed, 1 a sim failed, 2 bad input, 69 no VM or no
# runner, 130 interrupted). INVOKE overrides the invoke command; PATCHBAY_CI_KEEP_VM=1
# leaves the VM running (for a developer's machine).
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 SIM_OR_DIR..." >&2; exit 2; }
out="${PATCHBAY_CI_OUT:-ci-results}"
read -r -a invoke <<< "${INVOKE:-invoke}"
mkdir -p "$out"
if [ "${PATCHBAY_CI_KEEP_VM:-}" != 1 ]; then
  trap '"${invoke[@]}" vm.down >/dev/null 2>&1 || true' EXIT
fi

"${invoke[@]}" vm.up
files=()
for sim in "$@"; do files+=(--file "$sim"); done
status=0
"${invoke[@]}" sim.run "${files[@]}" --junit "$out/sims.xml" || status=$?
if [ -e .patchbay-work/latest ]; then
  "${invoke[@]}" sim.report -o "$out/report.html" || true
  rm -rf "$out/run" && cp -rL .patchbay-work/latest "$out/run"
fi
exit "$status"
