#!/usr/bin/env bash
# The Nix checks that run without nixpkgs (research/nix.md): syntax, format and dead code of
# every .nix file; the NixOS module evaluated with `lib.evalModules` against golden files and
# negative cases; what it renders validated by the agent itself; the rendered unit scored by
# `systemd-analyze security`; the polkit rule run under duktape; the probe runner run; the
# nixpkgs-free flake outputs evaluated and built; flake.lock checked.
#
#   nix/check.sh                                  # with the stand-in lib (nix/lib-stub.nix)
#   MSP_NIX_LIB=/path/to/nixpkgs.lib/lib nix/check.sh
#                                                 # also with a real nixpkgs lib, which must
#                                                 # render byte-identical files
#   MSP_UPDATE_GOLDEN=1 nix/check.sh              # rewrite nix/tests/golden (stand-in lib)
#
# Needs nix (Debian's nix-bin), nixpkgs-fmt, deadnix, jq, python3, duk (duktape) and
# systemd-analyze; builds the agent with cargo unless MSP_AGENT names a binary. Runs every check,
# then lists what failed and exits 1 if anything did.
# shellcheck disable=SC2015 # `a && b || fail` is meant: fail when either a or b fails.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

# No binary cache is reachable here: without this, every nix command waits on it.
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsubstituters =\n'

failed=()
fail() {
  failed+=("$1")
  printf 'FAIL: %s\n' "$1" >&2
}
section() { printf '\n== %s\n' "$1"; }
now_ms() { date +%s%3N; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

section "tools"
for tool in nix nix-instantiate nixpkgs-fmt deadnix jq python3 duk systemd-analyze cargo; do
  command -v "$tool" >/dev/null || fail "tool missing: $tool"
done
if [ ${#failed[@]} -gt 0 ]; then
  printf 'cannot run the Nix checks: %s\n' "${failed[*]}" >&2
  exit 1
fi
nix --version
agent=${MSP_AGENT:-}
if [ -z "$agent" ]; then
  cargo build --quiet --locked -p msp-compliance-agent || fail "cargo build of the agent"
  agent=${CARGO_TARGET_DIR:-target}/debug/msp-compliance-agent
fi
"$agent" --version

mapfile -t nix_files < <(git ls-files --cached --others --exclude-standard -- '*.nix' | sort)

section "parse (${#nix_files[@]} files)"
for file in "${nix_files[@]}"; do
  nix-instantiate --parse "$file" >/dev/null || fail "parse: $file"
done

section "format (nixpkgs-fmt) and dead code (deadnix)"
nixpkgs-fmt --check "${nix_files[@]}" || fail "nixpkgs-fmt --check (run nixpkgs-fmt on the files it names)"
NO_COLOR=1 deadnix --fail "${nix_files[@]}" || fail "deadnix --fail"

section "flake.lock"
lock_ref=$(sed -n 's|.*inputs.nixpkgs.url = "github:NixOS/nixpkgs/\([^"]*\)".*|\1|p' flake.nix)
jq -e --arg ref "$lock_ref" '
  .version == 7 and .root == "root"
  and .nodes.root.inputs == { "nixpkgs": "nixpkgs" }
  and (.nodes | keys) == [ "nixpkgs", "root" ]
  and .nodes.nixpkgs.original == { "owner": "NixOS", "ref": $ref, "repo": "nixpkgs", "type": "github" }
  and (.nodes.nixpkgs.locked | .type == "github" and .owner == "NixOS" and .repo == "nixpkgs"
       and (.rev | test("^[0-9a-f]{40}$"))
       and (.narHash | test("^sha256-[A-Za-z0-9+/]{43}=$"))
       and (.lastModified | type == "number" and . > 1600000000))
' flake.lock >/dev/null || fail "flake.lock is not a well-formed lock of nixpkgs/$lock_ref"

# Evaluates one harness case into a directory of rendered files (the golden layout).
# render LIBEXPR CASE OUTDIR
render() {
  local json key
  json=$(nix-instantiate --eval --strict --json --read-write-mode nix/tests/eval.nix \
    --arg lib "$1" --argstr case "$2") || return 1
  rm -rf "$3"
  mkdir -p "$3"
  while IFS= read -r key; do
    mkdir -p "$3/$(dirname "$key")"
    if [[ $key == *.json ]]; then
      jq --arg k "$key" '.[$k] | fromjson' <<<"$json" >"$3/$key"
    else
      jq -j --arg k "$key" '.[$k]' <<<"$json" >"$3/$key"
    fi
  done < <(jq -r 'keys[]' <<<"$json")
}

libs=("stub=import ./nix/lib-stub.nix")
if [ -n "${MSP_NIX_LIB:-}" ]; then
  libs+=("real=import ${MSP_NIX_LIB}")
fi
cases=()
for file in nix/tests/cases/*.nix; do cases+=("$(basename "$file" .nix)"); done
mapfile -t negatives < <(nix-instantiate --eval --strict --json -E 'builtins.attrNames (import ./nix/tests/negative.nix)' | jq -r '.[]')

for lib in "${libs[@]}"; do
  lib_name=${lib%%=*}
  lib_expr=${lib#*=}
  section "module evaluation, ${lib_name} lib (${lib_expr})"
  for case in "${cases[@]}"; do
    start=$(now_ms)
    if render "$lib_expr" "$case" "$work/$lib_name/$case"; then
      printf '  %-10s rendered in %d ms\n' "$case" $(($(now_ms) - start))
    else
      fail "evaluation of case $case with the $lib_name lib"
      continue
    fi
    if [ "$lib_name" = stub ]; then
      if [ -n "${MSP_UPDATE_GOLDEN:-}" ]; then
        rm -rf "nix/tests/golden/$case"
        cp -r "$work/stub/$case" "nix/tests/golden/$case"
      else
        diff -ru "nix/tests/golden/$case" "$work/stub/$case" || fail "case $case differs from nix/tests/golden/$case (MSP_UPDATE_GOLDEN=1 rewrites it)"
      fi
    else
      diff -ru "$work/stub/$case" "$work/$lib_name/$case" || fail "case $case: the $lib_name lib renders differently from the stand-in lib"
    fi
  done
  nix-instantiate --eval --strict --json nix/tests/baseline-types.nix --arg lib "$lib_expr" >"$work/$lib_name-baseline-types.json" ||
    fail "baseline option types with the $lib_name lib"

  start=$(now_ms)
  for name in "${negatives[@]}"; do
    if nix-instantiate --eval --strict --json -E "import ./nix/tests/eval.nix { lib = ${lib_expr}; case = (import ./nix/tests/negative.nix).\"${name}\".module; }" >/dev/null 2>"$work/error"; then
      fail "negative case $name evaluated without an error ($lib_name lib)"
      continue
    fi
    while IFS= read -r expected; do
      grep -qF -- "$expected" "$work/error" || {
        fail "negative case $name ($lib_name lib): the error does not say: $expected"
        sed 's/^/    /' "$work/error" >&2
      }
    done < <(nix-instantiate --eval --strict --json -E "(import ./nix/tests/negative.nix).\"${name}\".expect" | jq -r '.[]')
  done
  printf '  %d negative cases failed as expected in %d ms\n' "${#negatives[@]}" $(($(now_ms) - start))
done
if [ -n "${MSP_NIX_LIB:-}" ]; then
  cmp -s "$work/stub-baseline-types.json" "$work/real-baseline-types.json" || fail "baseline option types differ between the stand-in and the real lib"
fi

section "the agent accepts what the module renders"
for case in "${cases[@]}"; do
  etc="$work/stub/$case/etc/msp-compliance"
  [ -d "$etc" ] || continue
  "$agent" config validate "$etc/config.json" || fail "case $case: config validate"
  "$agent" baseline validate "$etc/baseline.json" || fail "case $case: baseline validate"
  "$agent" declared validate "$etc/declared.json" || fail "case $case: declared validate"
  # The build-time check the module adds to system.checks, with this agent in the store path's place.
  script="$work/stub/$case/system-checks/msp-compliance-check-config.sh"
  if [ -f "$script" ]; then
    sed "s|/nix/store/[a-z0-9]*-msp-compliance-agent-[^/]*/bin/msp-compliance-agent|$(realpath "$agent")|g" "$script" >"$work/system-check.sh"
    if ! configJsonPath="$etc/config.json" baselineJsonPath="$etc/baseline.json" declaredJsonPath="$etc/declared.json" \
      out="$work/system-check.out" bash -e "$work/system-check.sh" >/dev/null || [ ! -f "$work/system-check.out" ]; then
      fail "case $case: the system.checks script"
    fi
    rm -f "$work/system-check.out"
  fi
done
# With no baseline option set, the rendered baseline is the embedded one: same digest.
embedded=$("$agent" baseline show 2>&1 >/dev/null | awk '{ print $3 }')
rendered=$("$agent" baseline validate "$work/stub/minimal/etc/msp-compliance/baseline.json" | awk '{ print $NF }')
if [ -z "$embedded" ] || [ "$embedded" != "$rendered" ]; then
  fail "the default rendered baseline ($rendered) is not the embedded one ($embedded)"
fi
echo "default baseline digest: $rendered (embedded: $embedded)"
"$agent" config schema >"$work/config-schema.json"
"$agent" baseline schema >"$work/baseline-schema.json"
python3 - "$work/baseline-schema.json" "$work/stub-baseline-types.json" baselines/hipaa.json <<'PY' || fail "baseline option types do not match the agent's baseline schema"
# Every baseline option's type must accept exactly what the agent's field type accepts (or less).
import json, sys
schema, types, hipaa = (json.load(open(path)) for path in sys.argv[1:4])
defs = schema["$defs"]
expected_by_format = {
    "uint32": "32 bit unsigned integer; between 0 and 4294967295 (both inclusive)",
    "uint64": "unsigned integer, meaning >=0",
    "uint16": "16 bit unsigned integer; between 0 and 65535 (both inclusive)",
}
def expected(prop):
    if "$ref" in prop:
        target = defs[prop["$ref"].split("/")[-1]]
        return "one of " + ", ".join(json.dumps(v) for v in target["enum"])
    kind = prop.get("type")
    if kind == "boolean":
        return "boolean"
    if kind == "integer":
        return expected_by_format[prop["format"]]
    if kind == "array":
        item = prop["items"]
        return "list of " + (expected_by_format[item["format"]] if item.get("type") == "integer" else "string")
    if kind == "object":
        return "attribute set of string matching the pattern [0-9]{4}-[0-9]{2}-[0-9]{2}"
    raise SystemExit(f"no expectation for {prop}")
paths = {}
checks = defs["ChecksPolicy"]["properties"]
for check, ref in checks.items():
    for name, prop in defs[ref["$ref"].split("/")[-1]]["properties"].items():
        paths[f"checks.{check}.{name}"] = prop
for name, prop in defs["WindowsPolicy"]["properties"].items():
    paths[f"windows.{name}"] = prop
bad = []
for path in sorted(set(paths) | set(types)):
    if path not in types:
        bad.append(f"{path}: in the agent's schema but no option (is it missing from baselines/hipaa.json?)")
    elif path not in paths:
        bad.append(f"{path}: an option the agent's schema does not know")
    elif types[path] != expected(paths[path]):
        bad.append(f"{path}: option type {types[path]!r}, agent expects {expected(paths[path])!r}")
for line in bad:
    print(line, file=sys.stderr)
print(f"{len(types)} baseline options checked against the baseline schema")
sys.exit(1 if bad else 0)
PY

section "systemd-analyze security (threshold 2.5; the heal unit is scored, without a threshold)"
for case in "${cases[@]}"; do
  units="$work/stub/$case/units"
  [ -f "$units/msp-compliance.service" ] || [ -f "$units/msp-mcp.service" ] || continue
  mkdir -p "$work/score/$case"
  for unit in msp-compliance.service msp-mcp.service; do
    [ -f "$units/$unit" ] && cp "$units/$unit" "$work/score/$case/"
  done
  # A probe instance is the template plus its drop-in, as systemd merges them.
  for dropin in "$units"/msp-compliance-probe@*.service.d/overrides.conf; do
    [ -f "$dropin" ] || continue
    instance=$(basename "$(dirname "$dropin")" .d)
    cat "$units/msp-compliance-probe@.service" "$dropin" >"$work/score/$case/$instance"
  done
  for unit in "$work/score/$case"/*.service; do
    if out=$(systemd-analyze security --offline=true --threshold=25 "$unit" 2>&1); then
      printf '  %-10s %s\n' "$case" "$(grep -o 'Overall exposure level for .*' <<<"$out")"
    else
      fail "case $case: $(basename "$unit") scores above 2.5"
      grep -E 'Overall|✗' <<<"$out" >&2
    fi
  done
  # The heal template as one of its instances. It is root and switches generations, so it has
  # no budget; its figure is printed to notice a change.
  if [ -f "$units/msp-compliance-heal@.service" ]; then
    heal_unit="$work/score/$case-heal/msp-compliance-heal@reactivate-generation.service"
    mkdir -p "$(dirname "$heal_unit")"
    cp "$units/msp-compliance-heal@.service" "$heal_unit"
    if out=$(systemd-analyze security --offline=true --threshold=100 "$heal_unit" 2>&1); then
      printf '  %-10s %s\n' "$case" "$(grep -o 'Overall exposure level for .*' <<<"$out")"
    else
      fail "case $case: systemd-analyze security of the heal unit"
      printf '%s\n' "$out" >&2
    fi
  fi
done

section "probe units match the agent's probes"
python3 - agent/src/facts/probe.rs "$work/stub/minimal/units" <<'PY' || fail "probe units differ from agent/src/facts/probe.rs"
# Each fixed (parameterless) probe of the agent is one drop-in with the same program and
# arguments, and there is no other drop-in.
import pathlib, re, sys
source = pathlib.Path(sys.argv[1]).read_text()
units = pathlib.Path(sys.argv[2])
agent = {}
for name, program, args in re.findall(r'Invocation::new\("([a-z0-9-]+)", "([a-z0-9-]+)", &\[([^\]]*)\]\)', source):
    agent[name] = [program] + re.findall(r'"([^"]*)"', args)
rendered = {}
for dropin in units.glob("msp-compliance-probe@*.service.d/overrides.conf"):
    name = dropin.parent.name[len("msp-compliance-probe@"):-len(".service.d")]
    exec_start = [line[len("ExecStart="):] for line in dropin.read_text().splitlines() if line.startswith("ExecStart=")]
    runner, instance, program, *args = exec_start[0].split()
    rendered[name] = [program.rsplit("/", 1)[-1]] + args
    if instance != name:
        sys.exit(f"{name}: the runner records it as {instance}")
if rendered != agent:
    sys.exit(f"agent probes {agent}\nmodule probes {rendered}")
print(f"{len(rendered)} probes: {', '.join(sorted(rendered))}")
PY

section "probe runner"
runner=$(grep -o '^ExecStart=[^ ]*' "$work/stub/minimal/units/msp-compliance-probe@nft-ruleset.service.d/overrides.conf" | cut -d= -f2)
probe_dir="$work/probe"
mkdir -p "$probe_dir"
sed -e "s|/run/msp-compliance/probe|$probe_dir|g" -e 's|/nix/store/[a-z0-9]*-coreutils-[^/]*/bin/||g' "$runner" >"$work/runner.sh"
bash "$work/runner.sh" nft-ruleset sh -c 'echo out; echo err >&2; exit 3' || fail "probe runner exited non-zero for a failing probe"
bash "$work/runner.sh" auditctl-status sh -c 'printf "enabled 2\n"' || fail "probe runner exited non-zero"
[ "$(cat "$probe_dir/nft-ruleset.stdout")" = out ] && [ "$(cat "$probe_dir/nft-ruleset.stderr")" = err ] &&
  [ "$(cat "$probe_dir/nft-ruleset.exit")" = 3 ] && [ "$(cat "$probe_dir/auditctl-status.exit")" = 0 ] &&
  [ "$(cat "$probe_dir/auditctl-status.stdout")" = "enabled 2" ] ||
  fail "probe runner: the recorded stdout/stderr/exit are not what the command produced"
[ -z "$(find "$probe_dir" -name '.run.*')" ] || fail "probe runner left a temporary directory"
ls "$probe_dir"

section "polkit rule (duktape)"
# The units the rule must allow, worked out independently of the module: the agent's probes, and
# the heal instances the heal contract derives from the case's declared.json. The rule's own list
# must be exactly that; duktape then runs the rule.
for case in minimal full; do
  startable=$(python3 - agent/src/facts/probe.rs "$work/stub/$case/etc/msp-compliance/declared.json" "$work/stub/$case/polkit/10-nixos.rules" <<'PY'
import json, pathlib, re, sys
names = re.findall(r'Invocation::new\("([a-z0-9-]+)", "[a-z0-9-]+", &\[', pathlib.Path(sys.argv[1]).read_text())
units = [f"msp-compliance-probe@{name}.service" for name in sorted(names)]
heal = json.loads(pathlib.Path(sys.argv[2]).read_text()).get("heal") or {}
instances = []
for unit in heal.get("restartableUnits", []):
    stem = unit.removesuffix(".service")
    instances += [f"restart-{stem}", f"rollback-restart-{stem}"]
if heal.get("firewallUnit") is not None:
    instances += ["restore-firewall", "rollback-firewall"]
if heal.get("avUpdateUnit") is not None:
    instances.append("refresh-av")
instances += [f"backup-{job}" for job in heal.get("backupUnits", {})]
instances += ["reactivate-generation", "rollback-generation"]
units += [f"msp-compliance-heal@{instance}.service" for instance in instances]
listed = re.search(r"var startable = (\[.*\]);", pathlib.Path(sys.argv[3]).read_text())
listed = json.loads(listed.group(1)) if listed else []
if sorted(listed) != sorted(units) or len(set(listed)) != len(listed):
    sys.exit(f"the rule lists {sorted(listed)}\nthe contract gives {sorted(units)}")
print(json.dumps(units))
PY
  ) || {
    fail "polkit rule, case $case: the startable units are not the heal contract's"
    continue
  }
  {
    cat nix/tests/polkit-shim.js
    cat "$work/stub/$case/polkit/10-nixos.rules"
    printf 'var caseName = %s;\nvar startableUnits = %s;\n' "\"$case\"" "$startable"
    cat nix/tests/polkit-test.js
  } >"$work/polkit-$case.js"
  printf '  %-10s ' "$case"
  duk "$work/polkit-$case.js" || fail "polkit rule, case $case"
done

section "flake outputs without nixpkgs"
# A copy of the repository as git would see it (tracked and new files, not target/), so the
# flake evaluates before and after a commit alike.
mkdir -p "$work/flake"
git ls-files -z --cached --others --exclude-standard | grep -zv '^target/' | tar --null -T - -cf - | tar -xf - -C "$work/flake"
flake="path:$work/flake"
system=$(uname -m)-linux
for expr in 'nixosModules.default' 'nixosModules.msp-compliance' 'nixosModules.msp-mcp' 'overlays.default'; do
  start=$(now_ms)
  if [ "$(nix eval "$flake#$expr" --apply builtins.isFunction 2>"$work/error")" = true ]; then
    printf '  %s is a function (%d ms)\n' "$expr" $(($(now_ms) - start))
  else
    fail "nix eval .#$expr --apply builtins.isFunction"
    cat "$work/error" >&2
  fi
done
# The output attribute names, per system, without evaluating any package.
shape=$(nix eval --json "$flake#packages" --apply 'builtins.mapAttrs (_: builtins.attrNames)' 2>"$work/error")
[ "$shape" = '{"aarch64-linux":["default","msp-compliance-agent","msp-mcp"],"x86_64-linux":["default","msp-compliance-agent","msp-mcp"]}' ] ||
  fail "flake packages: $shape $(cat "$work/error")"
for output in apps checks devShells; do
  names=$(nix eval --json "$flake#$output" --apply 'outputs: builtins.attrNames outputs.x86_64-linux == builtins.attrNames outputs.aarch64-linux' 2>"$work/error")
  [ "$names" = true ] || fail "flake $output: not the same outputs for both systems $(cat "$work/error")"
done
echo "  packages: $shape"
# The flake's module (the module plus the package default) renders the same as the module.
flake_module="(let flake = (import $work/flake/flake.nix).outputs { self = flake; nixpkgs = throw \"nixpkgs is not available here\"; }; in flake.nixosModules.default)"
json=$(nix-instantiate --eval --strict --json --read-write-mode -E "import ./nix/tests/eval.nix { case = \"minimal\"; module = $flake_module; }" 2>"$work/error") &&
  [ "$json" = "$(nix-instantiate --eval --strict --json --read-write-mode nix/tests/eval.nix --arg lib 'import ./nix/lib-stub.nix' --argstr case minimal)" ] &&
  echo "  nixosModules.default renders the minimal case like modules/msp-compliance.nix" ||
  fail "the flake's nixosModules.default renders the minimal case differently $(cat "$work/error")"
start=$(now_ms)
if nix build --no-link "$flake#checks.$system.module-eval" 2>"$work/error"; then
  printf '  checks.%s.module-eval built (%d ms)\n' "$system" $(($(now_ms) - start))
else
  fail "nix build .#checks.$system.module-eval"
  cat "$work/error" >&2
fi
if [ -n "${MSP_NIX_LIB:-}" ]; then
  # checks.<system>.module-eval-nixpkgs-lib, with the given lib instead of the pinned nixpkgs'.
  nix-build --no-out-link -E "import ./nix/tests/flake-check.nix { lib = import ${MSP_NIX_LIB}; system = builtins.currentSystem; }" >/dev/null 2>"$work/error" &&
    echo "  module-eval with the real lib built" || {
    fail "module-eval check with the real lib (${MSP_NIX_LIB})"
    cat "$work/error" >&2
  }
fi

section "summary"
if [ ${#failed[@]} -gt 0 ]; then
  printf '%d Nix check(s) failed:\n' "${#failed[@]}" >&2
  printf '  - %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "all Nix checks passed (libs: ${libs[*]})"
