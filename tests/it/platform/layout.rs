//! The module map in docs/architecture.md is the truth about the code: every top-level
//! module of src/ is listed in exactly one layer, and every `crate::…` import goes to the
//! module's own layer or one below it. (Cycles inside a layer are caught by
//! `module-cycles` in CI.) Adding a module or an upward import fails here until the map
//! says so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `| 3 | `db`, `auth` | … |` rows between the `layers:begin`/`end` markers.
fn documented_layers() -> BTreeMap<String, usize> {
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let start = doc
        .find("<!-- layers:begin -->")
        .expect("layers:begin marker");
    let end = doc.find("<!-- layers:end -->").expect("layers:end marker");
    let mut layers = BTreeMap::new();
    for line in doc[start..end].lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Ok(layer) = cells[1].parse::<usize>() else {
            continue;
        };
        for module in cells[2].split(',').map(|m| m.trim().trim_matches('`')) {
            assert!(
                layers.insert(module.to_string(), layer).is_none(),
                "{module} is listed twice in docs/architecture.md"
            );
        }
    }
    layers
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

/// Top-level module of a file under src/ (`src/a.rs`, `src/a/…` → `a`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// Modules named as `crate::x` (also inside `use crate::{x, y::z}` groups), outside
/// comments.
fn imports(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let body = &group[..group.find('}').unwrap_or(group.len())];
            for item in body.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

#[test]
fn every_module_is_on_the_documented_map_and_imports_only_downwards() {
    let layers = documented_layers();
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut modules = BTreeSet::new();
    let mut upward = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        modules.insert(module.clone());
        let Some(&own) = layers.get(&module) else {
            continue;
        };
        for target in imports(&std::fs::read_to_string(file).unwrap()) {
            if target == module || target == "self" || target == "super" {
                continue;
            }
            match layers.get(&target) {
                Some(&layer) if layer <= own => {}
                Some(&layer) => upward.push(format!(
                    "{} (layer {own}) imports {target} (layer {layer})",
                    file.strip_prefix(root()).unwrap().display()
                )),
                None => {}
            }
        }
    }
    let documented: BTreeSet<String> = layers.keys().cloned().collect();
    assert_eq!(
        modules, documented,
        "docs/architecture.md's module map must list exactly the modules of src/"
    );
    assert!(
        upward.is_empty(),
        "imports against the layering:\n{}",
        upward.join("\n")
    );
}
