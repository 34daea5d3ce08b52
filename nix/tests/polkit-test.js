// The agent's polkit rule against a stand-in of polkit's rule API (polkit(8): polkit.addRule,
// polkit.Result, action.id, action.lookup, subject.user), run with duktape, the JavaScript
// engine polkitd itself embeds. nix/check.sh prepends the rule that eval.nix rendered
// (`startable` names the units the module declares) and this file's `startable` check list.
//
// Each case: user, action id, unit, verb -> expected result ("yes", "no" or null = not handled).
var failures = [];
var cases = [];
startableUnits.forEach(function (unit) {
  cases.push(["msp-compliance", "org.freedesktop.systemd1.manage-units", unit, "start", "yes"]);
  ["stop", "restart", "reload", "try-restart", "reload-or-restart", "kill", ""].forEach(function (verb) {
    cases.push(["msp-compliance", "org.freedesktop.systemd1.manage-units", unit, verb, "no"]);
  });
  cases.push(["root", "org.freedesktop.systemd1.manage-units", unit, "start", null]);
  cases.push(["alice", "org.freedesktop.systemd1.manage-units", unit, "start", null]);
});
[
  "msp-compliance.service",
  "msp-compliance-probe@.service",
  "msp-compliance-probe@evil.service",
  "msp-compliance-probe@nft-ruleset.service.d",
  "msp-compliance-heal@anything.service",
  "sshd.service",
  "nftables.service",
  undefined
].forEach(function (unit) {
  cases.push(["msp-compliance", "org.freedesktop.systemd1.manage-units", unit, "start", "no"]);
});
[
  "org.freedesktop.systemd1.reload-daemon",
  "org.freedesktop.systemd1.manage-unit-files",
  "org.freedesktop.systemd1.set-environment",
  "org.freedesktop.systemd1.bypass-dump-ratelimit"
].forEach(function (id) {
  cases.push(["msp-compliance", id, startableUnits[0], "start", "no"]);
});
cases.push(["msp-compliance", "org.freedesktop.login1.reboot", undefined, undefined, null]);
cases.push(["msp-compliance", "org.freedesktop.systemd1X.manage-units", startableUnits[0], "start", null]);

cases.forEach(function (c) {
  var details = { unit: c[2], verb: c[3] };
  var action = { id: c[1], lookup: function (key) { return details[key]; } };
  var subject = { user: c[0] };
  var result = null;
  for (var i = 0; i < rules.length && result === null; i++) {
    var res = rules[i](action, subject);
    result = res === undefined ? null : res;
  }
  if (result !== c[4]) {
    failures.push(JSON.stringify(c) + " -> " + JSON.stringify(result));
  }
});
if (rules.length !== 1) {
  failures.push("expected exactly one rule, found " + rules.length);
}
if (failures.length > 0) {
  throw new Error("polkit rule: " + failures.length + " of " + cases.length + " cases wrong:\n" + failures.join("\n"));
}
print("polkit rule: " + cases.length + " cases as expected");
