//! Tidiness is a test (after rust-analyzer's `xtask/src/tidy.rs`): every Rust file opens with a
//! `//!` paragraph, no `mod.rs`, no should-panic or ignored tests, no trailing whitespace,
//! no shell strings, and no machine-specific paths in the repository.

use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ has a parent")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name == "fixtures" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|it| it == "rs") {
            out.push(path);
        }
    }
}

fn all_rust_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(&workspace_root(), &mut files);
    files.sort();
    assert!(files.len() > 10, "tidy found too few files: {files:?}");
    files
}

#[test]
fn every_file_opens_with_a_module_doc() {
    let offenders: Vec<_> = all_rust_files()
        .into_iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            !text.trim_start().starts_with("//!")
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "files without a `//!` module doc: {offenders:?}"
    );
}

#[test]
fn no_mod_rs_files() {
    let offenders: Vec<_> = all_rust_files()
        .into_iter()
        .filter(|it| it.ends_with("mod.rs"))
        .collect();
    assert!(
        offenders.is_empty(),
        "use `name.rs` next to `name/`, not mod.rs: {offenders:?}"
    );
}

#[test]
fn no_should_panic_ignore_or_trailing_whitespace() {
    let should_panic = ["#[should", "_panic]"].concat();
    let ignore = ["#[ig", "nore]"].concat();
    for path in all_rust_files() {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for (idx, line) in text.lines().enumerate() {
            let at = format!("{}:{}", path.display(), idx + 1);
            assert!(
                !line.contains(&should_panic),
                "{at}: check for the Err instead of should_panic"
            );
            assert!(
                !line.contains(&ignore),
                "{at}: no ignored tests; gate real-tool tests with MSP_REAL_TOOLS"
            );
            assert!(
                !line.ends_with(' ') && !line.ends_with('\t'),
                "{at}: trailing whitespace"
            );
        }
    }
}

#[test]
fn no_shell_strings_in_the_agent() {
    // Commands are fixed argument vectors; a shell would turn data into code.
    let needles = [
        ["\"sh\"", ", \"-c\""].concat(),
        ["\"/bin/", "sh\""].concat(),
        ["\"bash\"", ""].concat(),
    ];
    let src = workspace_root().join("agent/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for needle in &needles {
            assert!(
                !text.contains(needle.as_str()),
                "{}: looks like a shell invocation ({needle})",
                path.display()
            );
        }
    }
}

#[test]
fn no_machine_paths_in_the_repository() {
    let needles = [
        ["/wo", "rk/"].concat(),
        ["/ro", "ot/"].concat(),
        ["/home/", "runner"].concat(),
    ];
    let mut files = all_rust_files();
    for extra in [
        "README.md",
        "ARCHITECTURE.md",
        ".ci/run",
        "baselines/hipaa.json",
    ] {
        files.push(workspace_root().join(extra));
    }
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for needle in &needles {
            assert!(
                !text.contains(needle.as_str()),
                "{} names a path of a build machine ({needle})",
                path.display()
            );
        }
    }
}
