//! The shape of the code, checked: modules import downwards only (`docs/design.md`,
//! "Layers"), no source file grows past what a reader can hold, `main.rs` stays a thin
//! binary, and comments cite only documents that are in the repository.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module of the library and its floor: a module may import only
/// modules on lower floors. A new module must be placed here.
const FLOORS: &[(&str, u32)] = &[
    // Ground floor: imports nothing of the crate.
    ("flow", 0),
    ("time", 0),
    ("tls", 0),
    ("units", 0),
    ("failpoint", 0),
    ("durable", 0),
    ("settings", 0),
    ("telemetry", 0),
    ("workload", 0),
    // Logs and traces (their HTTP exporter needs `tls`); the connector sections of the
    // configuration; then the aggregate.
    ("traces", 1),
    ("kafka", 1),
    ("nats", 1),
    ("config", 2),
    // The stages, in pipeline order.
    ("policy", 3),
    ("event", 3),
    ("state", 4),
    ("source", 5),
    ("archive", 6),
    ("publish", 7),
    ("hold_check", 7),
    ("restore", 7),
    ("lifecycle", 7),
    ("audit", 8),
    // Wiring.
    ("pipeline", 9),
    // The read side.
    ("index", 10),
    ("read", 11),
    ("replay", 12),
    // The API replays flows for the console and GraphQL.
    ("api", 13),
    // On top.
    ("service", 14),
    ("demo", 14),
    ("bench", 14),
    ("cli", 15),
];

const MAX_FILE_LINES: usize = 800;
const MAX_MAIN_LINES: usize = 250;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The library's top-level module a file belongs to; `None` for the binary.
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root().join("src")).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    match name.as_str() {
        "main" | "lib" => None,
        _ => Some(name),
    }
}

/// The code of a file without comments and without its unit-test module (tests may
/// use helpers from anywhere below them; the rule is about what ships).
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The crate modules `code` names: `crate::x` and `crate::{x, y::z}`.
fn imports(code: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            found.extend(
                group
                    .split(',')
                    .map(|item| ident(item.trim()))
                    .filter(|m| !m.is_empty()),
            );
        } else {
            found.push(ident(rest));
        }
    }
    found
}

#[test]
fn modules_import_only_lower_floors() {
    let floors: BTreeMap<&str, u32> = FLOORS.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut problems = Vec::new();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        let Some(&floor) = floors.get(module.as_str()) else {
            problems.push(format!(
                "module `{module}` ({}) has no floor: add it to FLOORS in tests/e2e/layout.rs",
                file.display()
            ));
            continue;
        };
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for target in imports(&code) {
            if target == module {
                continue;
            }
            match floors.get(target.as_str()) {
                Some(&to) if to < floor => {}
                Some(&to) => problems.push(format!(
                    "{} imports `{target}` (floor {to}) from `{module}` (floor {floor}): imports go down only",
                    file.strip_prefix(root()).unwrap().display()
                )),
                None => problems.push(format!(
                    "{} imports `{target}`, which is not in FLOORS",
                    file.strip_prefix(root()).unwrap().display()
                )),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn source_files_stay_small_and_main_stays_thin() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut too_long = Vec::new();
    for file in &files {
        let lines = std::fs::read_to_string(file).unwrap().lines().count();
        let limit = if file.ends_with("src/main.rs") {
            MAX_MAIN_LINES
        } else {
            MAX_FILE_LINES
        };
        if lines > limit {
            too_long.push(format!(
                "{} has {lines} lines (limit {limit})",
                file.display()
            ));
        }
    }
    assert!(too_long.is_empty(), "split these:\n{}", too_long.join("\n"));
}

/// Every Markdown file a comment names exists in the repository (at that path, or
/// under `docs/` or `schemas/` when named by file name alone).
#[test]
fn comments_cite_only_documents_in_the_repository() {
    let root = root();
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches"] {
        if root.join(dir).is_dir() {
            rust_files(&root.join(dir), &mut files);
        }
    }
    for dir in ["scripts", ".ci", "deploy"] {
        collect_all(&root.join(dir), &mut files);
    }
    files.push(root.join("Dockerfile"));
    files.push(root.join("docker-compose.yml"));
    files.push(root.join("Cargo.toml"));
    let mut missing = Vec::new();
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines() {
            let trimmed = line.trim_start();
            if !(trimmed.starts_with("//") || trimmed.starts_with('#')) {
                continue;
            }
            for cited in cited_documents(trimmed) {
                let found = [
                    root.join(&cited),
                    root.join("docs").join(&cited),
                    root.join("schemas").join(&cited),
                ]
                .iter()
                .any(|p| p.is_file());
                if !found {
                    missing.push(format!(
                        "{}: {cited}",
                        file.strip_prefix(&root).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "comments cite documents that are not in the repository:\n{}",
        missing.join("\n")
    );
}

fn collect_all(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_all(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// The `.md` paths in a comment line.
fn cited_documents(line: &str) -> Vec<String> {
    line.split(|c: char| !(c.is_ascii_alphanumeric() || "._/-".contains(c)))
        .filter(|word| word.ends_with(".md") && word.len() > 3)
        .map(|word| word.trim_start_matches("./").to_string())
        .collect()
}

#[test]
fn the_checks_see_what_they_check() {
    assert_eq!(
        imports("use crate::{flow::Labels, time};\nlet x = crate::config::Config::default();"),
        ["flow", "time", "config"]
    );
    assert_eq!(
        code_of("// crate::api\nuse crate::flow;"),
        "use crate::flow;"
    );
    assert_eq!(
        cited_documents("//! See NOTES.md §3 and `docs/design.md`."),
        ["NOTES.md", "docs/design.md"]
    );
    assert_eq!(
        module_of(&root().join("src/state/embedded/mod.rs")).as_deref(),
        Some("state")
    );
    assert_eq!(
        module_of(&root().join("src/flow.rs")).as_deref(),
        Some("flow")
    );
    assert_eq!(
        module_of(&root().join("src/cli/dispatch.rs")).as_deref(),
        Some("cli")
    );
    assert_eq!(module_of(&root().join("src/main.rs")), None);
}
