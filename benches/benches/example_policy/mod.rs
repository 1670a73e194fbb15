//! The reference policy tree shipped with the policy engine
//! (`policies/examples/policy`: org `acme` with the OWASP LLM Top 10 pack,
//! project `payments` with PCI-DSS, agent `refund-bot` with its own Rego),
//! compiled by the real compiler.

use std::path::{Path, PathBuf};

use tappass_policies::{compile, CompileOptions, CompiledPolicy, PolicySource, SourceFile};

fn tree() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/examples/policy")
}

fn read_tree(root: &Path, dir: &Path, out: &mut Vec<SourceFile>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            read_tree(root, &path, out);
        } else if let Ok(rel) = path.strip_prefix(root) {
            let rel = rel.to_string_lossy().to_string();
            if PolicySource::is_policy_file(&rel) {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
                out.push(SourceFile { path: rel, text });
            }
        }
    }
}

/// The Compiled Policy of `agent` in the reference tree.
pub fn compiled(agent: &str, version: u64) -> CompiledPolicy {
    let root = tree();
    let mut files = Vec::new();
    read_tree(&root, &root, &mut files);
    let source = PolicySource::new(files);
    compile(
        &source,
        agent,
        &CompileOptions {
            policy_version: version,
        },
    )
    .unwrap_or_else(|e| panic!("compiling {agent}: {e}"))
    .policy
}
