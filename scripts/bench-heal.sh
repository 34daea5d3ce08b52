#!/usr/bin/env bash
# Decision -> verified heal of a unit restart inside the site container (a real systemd):
# signed order applied by the agent as its service user under the module's hardening, heal unit
# started through polkit, unit restarted, 2 s settle, health probe, evidence. Prints the median
# and p95 over ROUNDS (default 30) and the time of a failed verification -> rollback ->
# escalation. Needs root and the site tree (`scripts/site-root.sh build`).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-30}
scripts/site-root.sh build >/dev/null
MSP_REAL_TOOLS=1 MSP_HEAL_ROUNDS="$rounds" cargo nextest run --release -p msp-compliance-agent \
  --test heal_site --no-capture -E 'test(heals_against_a_real_systemd)' 2>&1 |
  grep -E '^(decision|failed verification)'
