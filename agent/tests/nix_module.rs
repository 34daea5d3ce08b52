//! The NixOS module (`modules/msp-compliance.nix`) against the agent's own types: what the
//! module renders is accepted by `Config`, `Baseline` and the declared.json reader, and every
//! top-level setting of the agent's config schema can be reached from the module (declared
//! options, the module's own keys, or the free-form `settings`).
//!
//! The module is evaluated with `nix-instantiate` through the test harness in `nix/tests/`
//! (`lib.evalModules` with the repository's stand-in lib), so no nixpkgs is needed. `nix/check.sh`
//! covers the Nix side (golden files, negative cases, unit scoring); this file keeps the agent's
//! side honest: a new required config field, a renamed key or a stricter type fails here.
//!
//! Gated by `MSP_REAL_TOOLS=1` (set by `.ci/run` after installing Debian's nix-bin).

use std::path::{Path, PathBuf};
use std::process::Command;

use msp_compliance_agent::baseline::Baseline;
use msp_compliance_agent::config::Config;
use serde_json::{Map, Value};

/// Returns true if and only if real-tool tests should run; otherwise says why they are skipped.
fn real_tools(test: &str) -> bool {
    if std::env::var_os("MSP_REAL_TOOLS").is_some_and(|it| it == "1") {
        return true;
    }
    eprintln!(
        "skipped {test}: set MSP_REAL_TOOLS=1 to run tests that need real tools (.ci/run does)"
    );
    false
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ has a parent")
        .to_path_buf()
}

/// Evaluates the harness (`nix/tests/eval.nix`) for `case`, a Nix expression of a module, with
/// `args` as extra `--argstr`s of the wrapping function; returns file name -> rendered text.
fn render(case: &str, args: &[(&str, &str)]) -> Map<String, Value> {
    let root = workspace_root();
    let call = format!(
        "import {}/nix/tests/eval.nix {{ lib = import {}/nix/lib-stub.nix; case = {case}; }}",
        root.display(),
        root.display(),
    );
    // nix-instantiate calls a function expression only when it is given arguments.
    let expr = if args.is_empty() {
        call
    } else {
        let formals: Vec<&str> = args.iter().map(|(name, _)| *name).collect();
        format!("{{ {} }}: {call}", formals.join(", "))
    };
    let mut command = Command::new("nix-instantiate");
    command
        .args([
            "--eval",
            "--strict",
            "--json",
            "--read-write-mode",
            "-E",
            &expr,
        ])
        // No binary cache is reachable on the build machines; without an empty list every
        // nix command waits for it.
        .env(
            "NIX_CONFIG",
            "experimental-features = nix-command flakes\nsubstituters =\n",
        );
    for (name, value) in args {
        command.args(["--argstr", name, value]);
    }
    let out = command
        .output()
        .expect("nix-instantiate runs (install Debian's nix-bin)");
    assert!(
        out.status.success(),
        "evaluating the module failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("the harness prints JSON") {
        Value::Object(files) => files,
        other => panic!("the harness printed {other}"),
    }
}

fn case_file(name: &str) -> String {
    format!("{}/nix/tests/cases/{name}.nix", workspace_root().display())
}

fn text<'a>(files: &'a Map<String, Value>, name: &str) -> &'a str {
    files
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("the module rendered no {name}"))
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write rendered file");
    path
}

#[test]
fn the_agent_accepts_everything_the_module_renders() {
    if !real_tools("the_agent_accepts_everything_the_module_renders") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for case in ["minimal", "full", "insecure"] {
        let files = render(&case_file(case), &[]);
        let config = write(
            dir.path(),
            "config.json",
            text(&files, "etc/msp-compliance/config.json"),
        );
        let baseline = write(
            dir.path(),
            "baseline.json",
            text(&files, "etc/msp-compliance/baseline.json"),
        );
        let declared = write(
            dir.path(),
            "declared.json",
            text(&files, "etc/msp-compliance/declared.json"),
        );
        let loaded = Config::load(&config).unwrap_or_else(|err| panic!("case {case}: {err}"));
        assert_eq!(
            loaded.baseline_file.as_deref(),
            Some(Path::new("/etc/msp-compliance/baseline.json")),
            "case {case}"
        );
        assert_eq!(
            loaded.declared_file,
            Path::new("/etc/msp-compliance/declared.json"),
            "case {case}"
        );
        let baseline = Baseline::load(&baseline).unwrap_or_else(|err| panic!("case {case}: {err}"));
        if case == "minimal" {
            // No baseline option set: the rendered baseline is the embedded one.
            assert_eq!(baseline.digest(), Baseline::embedded().digest());
        }
        let bytes = std::fs::read(&declared).unwrap();
        msp_compliance_agent::facts::declared::parse(&declared, &bytes)
            .unwrap_or_else(|err| panic!("case {case}: {err}"));
    }
}

#[test]
fn every_config_setting_is_reachable_from_the_module() {
    if !real_tools("every_config_setting_is_reachable_from_the_module") {
        return;
    }
    let schema = serde_json::to_value(msp_compliance_agent::config::schema()).unwrap();
    let properties = schema["properties"]
        .as_object()
        .expect("the config schema has properties");

    // What the module renders on its own (declared options with defaults, its own paths).
    let minimal = render(&case_file("minimal"), &[]);
    let rendered: Value =
        serde_json::from_str(text(&minimal, "etc/msp-compliance/config.json")).unwrap();
    let module_keys: Vec<&String> = rendered.as_object().unwrap().keys().collect();
    for key in &module_keys {
        assert!(
            properties.contains_key(key.as_str()),
            "the module renders `{key}`, which the agent's config schema does not have"
        );
    }

    // Everything else goes through the free-form settings: set each to its schema default.
    let mut settings = Map::new();
    for (key, property) in properties {
        if module_keys.contains(&key) {
            continue;
        }
        let default = property.get("default").unwrap_or_else(|| {
            panic!("config setting `{key}` has no default and the module does not render it")
        });
        settings.insert(key.clone(), default.clone());
    }
    assert!(
        !settings.is_empty(),
        "expected settings only the free-form part reaches"
    );
    let settings = Value::Object(settings);
    let case = r#"{
      services.msp-compliance = {
        enable = true;
        evidenceSigningKeyFile = "/var/lib/msp-compliance-secrets/evidence-signing-key";
        mtlsClientKeyFile = "/var/lib/msp-compliance-secrets/client.key";
        settings = builtins.fromJSON settings // {
          site_id = "clinic-042";
          host_id = "frontdesk";
          control_plane = {
            url = "https://mcp.example-msp.net:8443";
            server_ca_file = "/etc/msp-compliance/mcp/ca.pem";
            client_certificate_file = "/etc/msp-compliance/mcp/client.pem";
          };
          orders.order_public_key_files = [ "/etc/msp-compliance/mcp/order-signing.key.pub" ];
        };
      };
    }"#;
    let files = render(case, &[("settings", &settings.to_string())]);
    let config_text = text(&files, "etc/msp-compliance/config.json");
    let rendered: Value = serde_json::from_str(config_text).unwrap();
    for key in properties.keys() {
        assert!(
            rendered.get(key).is_some(),
            "config setting `{key}` is not reachable from services.msp-compliance"
        );
    }
    for (key, value) in settings.as_object().unwrap() {
        assert_eq!(
            &rendered[key], value,
            "settings.{key} was not passed through unchanged"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "config.json", config_text);
    Config::load(&path).unwrap_or_else(|err| panic!("{err}"));
}
