//! Standalone mode: the agents' signed Compiled Policies read from a local
//! directory instead of a control plane. Every `*.json` file is a signed
//! policy (`tappass policy compile --sign-key`); each is verified against the
//! configured public key before it is used, a newer version replaces an
//! older one, and the directory is watched: a changed file is verified and
//! swapped in without a restart, while a file that does not verify (or an
//! older version) is refused and the last good policy keeps serving.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tappass_policies::PublicKeyFile;

use crate::config::LocalPoliciesConfig;
use crate::control::{Pushed, PushedPolicy, Rebuild};
use crate::gateway::GatewayState;

/// How often the directory is checked for changes.
const POLL: Duration = Duration::from_secs(1);

/// What the directory looked like (name, modified time, length).
type Listing = Vec<(PathBuf, Option<SystemTime>, u64)>;

fn listing(dir: &Path) -> Listing {
    let mut out: Listing = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .map(|p| {
                    let m = std::fs::metadata(&p).ok();
                    let modified = m.as_ref().and_then(|m| m.modified().ok());
                    let len = m.map_or(0, |m| m.len());
                    (p, modified, len)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Verify every policy file; `held` gives the versions already in use
/// (a policy must not go back to an older version).
fn load(
    dir: &Path,
    keys: &[PublicKeyFile],
    held: &BTreeMap<String, PushedPolicy>,
) -> (BTreeMap<String, PushedPolicy>, Vec<String>) {
    let mut policies = held.clone();
    let mut errors = Vec::new();
    for (path, _, _) in listing(dir) {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        match tappass_policies::verify(&text, keys, None) {
            Ok(p) => {
                let agent = p.identity.agent.clone();
                let version = p.identity.policy_version;
                match policies.get(&agent) {
                    Some(old) if old.version > version => errors.push(format!(
                        "{}: version {version} of `{agent}` is older than the {} in use",
                        path.display(),
                        old.version
                    )),
                    _ => {
                        policies.insert(
                            agent,
                            PushedPolicy {
                                version,
                                document: text,
                            },
                        );
                    }
                }
            }
            Err(e) => errors.push(format!("{}: {e}", path.display())),
        }
    }
    (policies, errors)
}

fn install(
    policies: &BTreeMap<String, PushedPolicy>,
    state: &ArcSwap<GatewayState>,
    rebuild: &Rebuild,
) -> Result<(), String> {
    let pushed = Pushed::with_policies(policies.clone());
    state.store(Arc::new(rebuild(&pushed)?));
    Ok(())
}

/// Load the directory (every file must verify at start) and watch it.
pub fn start(
    cfg: &LocalPoliciesConfig,
    state: Arc<ArcSwap<GatewayState>>,
    rebuild: Box<Rebuild>,
) -> Result<(), String> {
    let key_text = std::fs::read_to_string(&cfg.public_key_file)
        .map_err(|e| format!("cannot read {}: {e}", cfg.public_key_file.display()))?;
    let key: PublicKeyFile = serde_json::from_str(&key_text)
        .map_err(|e| format!("{}: {e}", cfg.public_key_file.display()))?;
    let keys = vec![key];
    let (policies, errors) = load(&cfg.dir, &keys, &BTreeMap::new());
    if let Some(e) = errors.first() {
        return Err(format!("a local policy does not verify: {e}"));
    }
    install(&policies, &state, &rebuild)?;
    let dir = cfg.dir.clone();
    std::thread::Builder::new()
        .name("tappass-policy-watch".into())
        .spawn(move || {
            let mut seen = listing(&dir);
            let mut held = policies;
            loop {
                std::thread::sleep(POLL);
                let now = listing(&dir);
                if now == seen {
                    continue;
                }
                seen = now;
                let (next, errors) = load(&dir, &keys, &held);
                for e in &errors {
                    tracing::warn!(error = %e, "refused a local policy; the last good one keeps serving");
                }
                if next != held {
                    match install(&next, &state, &rebuild) {
                        Ok(()) => {
                            tracing::info!(agents = next.len(), "local policies reloaded");
                            held = next;
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot apply the local policies"),
                    }
                }
            }
        })
        .map_err(|e| format!("cannot start the policy watcher: {e}"))?;
    Ok(())
}
