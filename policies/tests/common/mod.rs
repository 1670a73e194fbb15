#![allow(dead_code)]
use std::path::{Path, PathBuf};

use tappass_policies::{compile, CompileOptions, Compiled, PolicySource, SourceFile};

pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policy")
}

pub const AGENTS: &[&str] = &[
    "support-emailer",
    "code-reviewer",
    "refund-bot",
    "catalog-steward",
];

pub fn load_dir(root: &Path) -> PolicySource {
    let mut files = Vec::new();
    walk(root, root, &mut files);
    PolicySource::new(files)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<SourceFile>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            out.push(SourceFile {
                path: rel,
                text: std::fs::read_to_string(&p).unwrap(),
            });
        }
    }
}

pub fn examples() -> PolicySource {
    load_dir(&examples_dir())
}

pub fn compile_example(agent: &str) -> Compiled {
    compile(&examples(), agent, &CompileOptions::default())
        .unwrap_or_else(|e| panic!("{agent}: {e}"))
}

/// A source tree from inline `(path, text)` pairs.
pub fn tree(files: &[(&str, &str)]) -> PolicySource {
    PolicySource::new(
        files
            .iter()
            .map(|(p, t)| SourceFile {
                path: p.to_string(),
                text: t.to_string(),
            })
            .collect(),
    )
}
