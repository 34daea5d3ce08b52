// The agent's polkit rule against a stand-in of polkit's rule API (polkit(8): polkit.addRule,
// polkit.Result, action.id, action.lookup, subject.user), run with duktape, the JavaScript
// engine polkitd itself embeds. nix/check.sh prepends, per case (`caseName`), the rule that
// eval.nix rendered and `startableUnits`: the agent's probes and the heal instances that the heal
// contract derives from the case's declared.json, worked out without the module.
//
// Each case: user, action id, unit, verb -> expected result ("yes", "no" or null = not handled).
var failures = [];
var cases = [];
var manage = "org.freedesktop.systemd1.manage-units";
var heal = function (instance) { return "msp-compliance-heal@" + instance + ".service"; };
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
  "msp-compliance-heal@.service",
  heal("restart-sshd"),
  heal("restart-msp-compliance"),
  heal("restart-"),
  heal("backup-unknown-job"),
  heal("restart-pacs-bridge.service"),
  "sshd.service",
  "nftables.service",
  "pacs-bridge.service",
  undefined
].forEach(function (unit) {
  cases.push(["msp-compliance", manage, unit, "start", "no"]);
});

// A generation switch (live, or as the boot default with a reboot) is allowed by pattern:
// 1 to 999999999, decimal, no leading zero.
["switch-generation-1", "switch-generation-12", "switch-generation-999999999",
 "boot-generation-1", "boot-generation-12", "boot-generation-999999999"].forEach(function (name) {
  var unit = heal(name);
  cases.push(["msp-compliance", manage, unit, "start", "yes"]);
  ["stop", "restart", "reload", ""].forEach(function (verb) {
    cases.push(["msp-compliance", manage, unit, verb, "no"]);
  });
  cases.push(["alice", manage, unit, "start", null]);
});
[
  heal("switch-generation-0"),
  heal("switch-generation-012"),
  heal("switch-generation-1x"),
  heal("switch-generation-1234567890"),
  heal("switch-generation--1"),
  heal("switch-generation-"),
  heal("switch-generation-12") + "\n",
  heal("switch-generation-12") + ".d",
  heal("switch-generation-12") + "/../sshd.service",
  "../" + heal("switch-generation-12"),
  "/etc/systemd/system/" + heal("switch-generation-12"),
  "x" + heal("switch-generation-12"),
  "msp-compliance-heal@switch-generation-12",
  "msp-compliance-heal@switch-generation-12.socket",
  "msp-compliance-heal@switch-generation-12Xservice",
  heal("boot-generation-0"),
  heal("boot-generation-012"),
  heal("boot-generation-1234567890"),
  heal("reboot-generation-12"),
  heal("switchboot-generation-12"),
  heal("boot-generation-12") + "/../sshd.service"
].forEach(function (unit) {
  cases.push(["msp-compliance", manage, unit, "start", "no"]);
});

// What each case declares, so the list above is not empty by mistake.
var expected = {
  minimal: ["restart-systemd-timesyncd", "rollback-restart-systemd-timesyncd", "restore-firewall", "rollback-firewall",
    "reactivate-generation", "rollback-generation"],
  full: ["restart-pacs-bridge", "rollback-restart-pacs-bridge", "restart-hl7-listener", "restart-auditd", "restart-chronyd",
    "restart-clamav-daemon", "restore-firewall", "refresh-av", "backup-ehr", "backup-scans", "reactivate-generation"]
}[caseName];
expected.forEach(function (instance) {
  if (startableUnits.indexOf(heal(instance)) < 0) {
    failures.push("case " + caseName + " does not declare " + heal(instance));
  }
});
if (caseName == "minimal") {
  [heal("refresh-av"), heal("restart-chronyd"), heal("backup-ehr")].forEach(function (unit) {
    cases.push(["msp-compliance", manage, unit, "start", "no"]);
  });
}
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
