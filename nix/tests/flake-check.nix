# The module's golden and negative cases as a flake check that needs nothing but Nix: the
# comparison happens during evaluation (a mismatch throws with the list of differences), and the
# derivation itself is a /bin/sh one-liner, so `nix build .#checks.<system>.module-eval`
# works offline. nix/check.sh runs the same cases with more detail (agent validation, scoring).
{ lib, system }:

let
  inherit (builtins) attrNames concatMap elem filter fromJSON match readDir readFile;

  listFiles = dir: prefix: concatMap
    (name:
      if (readDir dir).${name} == "directory"
      then listFiles (dir + "/${name}") "${prefix}${name}/"
      else [ "${prefix}${name}" ])
    (attrNames (readDir dir));

  cases = map (name: builtins.head (match "(.*)\\.nix" name)) (attrNames (readDir ./cases));

  # Golden JSON is pretty-printed (jq) for review; compare values, and text byte for byte.
  same = path: rendered: golden:
    if match ".*\\.json" path != null then fromJSON rendered == fromJSON golden else rendered == golden;

  caseFailures = case:
    let
      rendered = import ./eval.nix { inherit lib case; };
      goldenDir = ./golden + "/${case}";
      golden = listFiles goldenDir "";
    in
    map (path: "${case}/${path}: rendered but has no golden file") (filter (path: !elem path golden) (attrNames rendered))
    ++ map (path: "${case}/${path}: golden file not rendered") (filter (path: !(rendered ? ${path})) golden)
    ++ map (path: "${case}/${path}: differs from its golden file")
      (filter (path: rendered ? ${path} && !same path rendered.${path} (readFile (goldenDir + "/${path}"))) golden);

  negative = import ./negative.nix;
  negativeFailures = map (name: "negative case ${name} evaluated without an error")
    (filter
      (name: (builtins.tryEval (builtins.deepSeq (import ./eval.nix { inherit lib; case = negative.${name}.module; }) true)).success)
      (attrNames negative));

  failures = concatMap caseFailures cases ++ negativeFailures;
in
if failures != [ ] then throw "msp-compliance module checks failed:\n${lib.concatMapStrings (it: "- ${it}\n") failures}"
else
  derivation {
    name = "msp-compliance-module-eval";
    inherit system;
    builder = "/bin/sh";
    args = [ "-c" "echo ok > $out" ];
    # The rendered files are part of the derivation, so its output changes with them.
    rendered = builtins.toJSON (map (case: import ./eval.nix { inherit lib case; }) cases);
  }
