#!/usr/bin/env bash
# The daemon's idle budget (issue 4: RSS <= 12 MB between cycles; CPU per cycle and per hour):
# a real `msp-mcp serve` on 127.0.0.1, one enrolled host, the agent daemon with the shortest
# poll interval (10 s) on the fixture host, and every 10 s its VmRSS, RssAnon and RssFile
# (/proc/<pid>/status) and CPU ticks (utime + stime, /proc/<pid>/stat).
#
#   cargo build --release -p msp-compliance-agent -p msp-mcp
#   scripts/bench-daemon-idle.sh [CYCLES]          # default 6
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${MSP_BIN_DIR:-$repo/target/release}
cycles=${1:-6}
work=$(mktemp -d)
cleanup() {
  [ -n "${agent:-}" ] && kill -TERM "$agent" 2>/dev/null || true
  [ -n "${server:-}" ] && kill -TERM "$server" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
"$bin/msp-mcp" --state-dir "$work/mcp" init >/dev/null
"$bin/msp-compliance-agent" keygen --output "$work/evidence.key" >/dev/null
"$bin/msp-mcp" --state-dir "$work/mcp" enroll --site clinic-a --host nixos-1 \
  --agent-key "$work/evidence.key.pub" --out "$work/bundle" >/dev/null
"$bin/msp-mcp" --state-dir "$work/mcp" serve --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.err" &
server=$!
for _ in $(seq 50); do [ -s "$work/serve.out" ] && break; sleep 0.1; done
port=$(head -1 "$work/serve.out" | sed 's/.*://')
cat >"$work/config.json" <<JSON
{"site_id": "clinic-a", "host_id": "nixos-1", "state_dir": "$work/state", "poll_interval_secs": 10,
 "evidence": {"signing_key_file": "$work/evidence.key"},
 "control_plane": {"url": "https://127.0.0.1:$port", "server_ca_file": "$work/bundle/ca.pem",
   "client_certificate_file": "$work/bundle/client.pem", "client_key_file": "$work/bundle/client.key"},
 "orders": {"order_public_key_files": ["$work/mcp/order-signing.key.pub"]}}
JSON
"$bin/msp-compliance-agent" run --config "$work/config.json" \
  --root "$repo/agent/tests/fixtures/hosts/nixos-site" 2>"$work/agent.log" &
agent=$!
for i in $(seq "$cycles"); do
  sleep 10
  mem=$(grep -E '^(VmRSS|RssAnon|RssFile)' "/proc/$agent/status" | awk '{ printf "%s %s kB  ", $1, $2 }')
  ticks=$(awk '{ print $14 + $15 }' "/proc/$agent/stat")
  echo "t=$((i * 10))s  $mem cpu_ticks=$ticks cycles=$(grep -c 'cycle done' "$work/agent.log")"
done
