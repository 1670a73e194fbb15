//! The control plane's state and operations: every change is validated,
//! written to the store in one batch, then recompiled, signed and
//! published to the xDS snapshot cache.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use prost::Message as _;
use sha2::{Digest, Sha256};
use tappass_keys::{Jwks, SigningKeyPair};
use tappass_policies::{
    compile, keypair_from_seed, preview, sign, CompileOptions, Compiled, PolicySource,
    PublicKeyFile, SecretKeyFile, SourceFile, MAX_SOURCE_BYTES,
};
use tappass_tokens::{mint, Audience, Claims, Revocations, Scope, Verifier};
use tappass_xds::pb::tappass::v1 as tp;
use tappass_xds::types::{API_KEY_HASHES, POLICY_SNAPSHOT, REVOCATIONS, TRUST_BUNDLE};
use tappass_xds::{pack, AdsServer, Resource, SnapshotCache, SnapshotSigner, TypeSnapshot};

use crate::crypto::{random, write_private, MasterKey, MasterKeySource};
use crate::error::{ControlError, Result};
use crate::records::*;
use crate::store::{Batch, Store};

/// Name of the trust-bundle resource.
pub const TRUST_BUNDLE_NAME: &str = "jwks";
/// Name of the revocations resource.
pub const REVOCATIONS_NAME: &str = "revocations";
/// Name of the API-key-hashes resource.
pub const API_KEYS_NAME: &str = "api-keys";
/// Prefix of file names the control plane generates in a policy tree.
pub const GENERATED_PREFIX: &str = "_tappass";

/// Types the control plane publishes, in a fixed order.
pub const PUBLISHED_TYPES: [&str; 4] = [POLICY_SNAPSHOT, TRUST_BUNDLE, REVOCATIONS, API_KEY_HASHES];

/// Settings of a control plane.
#[derive(Debug, Clone)]
pub struct Options {
    /// xDS (ADS gRPC) listener.
    pub xds_addr: std::net::SocketAddr,
    /// Admin API listener.
    pub admin_addr: std::net::SocketAddr,
    pub master_key: MasterKeySource,
    /// How long a gateway may use a snapshot without fresh contact.
    /// Snapshots are re-issued (new envelope version) after half of it.
    pub snapshot_ttl: Duration,
    /// Default lifetime of a minted token.
    pub default_token_ttl: Duration,
    /// Longest lifetime of a minted token; a retired signing key stays in
    /// the JWKS this long after its retirement.
    pub max_token_ttl: Duration,
    /// `iss` of minted tokens.
    pub issuer: String,
    /// `aud` of minted tokens (and the audience `/v1/tokens/verify` checks).
    pub audience: String,
    /// Clock skew tolerated by `/v1/tokens/verify`.
    pub token_leeway: Duration,
    /// How often expired keys and revocations are pruned and snapshots
    /// refreshed.
    pub maintenance_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            xds_addr: ([127, 0, 0, 1], 18000).into(),
            admin_addr: ([127, 0, 0, 1], 18001).into(),
            master_key: MasterKeySource::default(),
            snapshot_ttl: Duration::from_secs(3600),
            default_token_ttl: Duration::from_secs(300),
            max_token_ttl: Duration::from_secs(3600),
            issuer: "tappass-control".into(),
            audience: "tappass-gateway".into(),
            token_leeway: Duration::from_secs(5),
            maintenance_interval: Duration::from_secs(1),
        }
    }
}

pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn secs(d: Duration) -> i64 {
    d.as_secs().min(i64::MAX as u64) as i64
}

struct TokenKey {
    record: TokenKeyRecord,
    pair: SigningKeyPair,
}

/// One published resource: what it was built from and how it was signed.
struct Published {
    payload_hash: [u8; 32],
    version: u64,
    resource: Resource,
}

#[derive(Default)]
struct Mutable {
    token_keys: Vec<TokenKey>,
    published: HashMap<(String, String), Published>,
    type_versions: BTreeMap<String, u64>,
    last_issue: Option<SystemTime>,
}

pub(crate) struct Inner {
    pub(crate) data_dir: PathBuf,
    pub(crate) opts: Options,
    pub(crate) store: Store,
    pub(crate) fleet: crate::fleet::FleetLock,
    /// Leases of budget limits shared by the gateways.
    pub(crate) leases: crate::budget_leases::Leases,
    master: MasterKey,
    pub(crate) cache: Arc<SnapshotCache>,
    pub(crate) ads: AdsServer,
    pub(crate) admin_token: String,
    snapshot_signer: SnapshotSigner,
    snapshot_secret: SecretKeyFile,
    snapshot_public: PublicKeyFile,
    state: Mutex<Mutable>,
}

/// A control plane over one data directory. Cheap to clone.
#[derive(Clone)]
pub struct ControlPlane {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("data_dir", &self.inner.data_dir)
            .finish_non_exhaustive()
    }
}

const MASTER_CHECK: &str = "meta/master-key-check";
const SNAPSHOT_KEY: &str = "keys/snapshot";

impl ControlPlane {
    /// Opens (or initializes) the data directory: the state store, the
    /// master key, the admin token (`admin.token`, mode 0600), the
    /// snapshot-signing key (public half in `snapshot-key.pub`) and the
    /// first token-signing key; then compiles, signs and publishes every
    /// resource. Listeners are opened by [`ControlPlane::bind`].
    pub fn open(data_dir: &Path, opts: Options) -> Result<ControlPlane> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| ControlError::io(format!("creating {}", data_dir.display()), e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700));
        }
        let master = MasterKey::load(&opts.master_key, data_dir)?;
        let store = Store::open(&data_dir.join("state"))?;

        // The master key must be the one the store was sealed with.
        match store.get::<String>(MASTER_CHECK)? {
            Some(sealed) => {
                let bytes = B64
                    .decode(sealed)
                    .map_err(|_| ControlError::Store("master key check is not base64".into()))?;
                master.open(MASTER_CHECK.as_bytes(), &bytes).map_err(|_| {
                    ControlError::Crypto(
                        "the master key does not open this data directory's secrets".into(),
                    )
                })?;
            }
            None => {
                let mut b = Batch::default();
                b.put(
                    MASTER_CHECK,
                    &B64.encode(master.seal(MASTER_CHECK.as_bytes(), b"tappass")?),
                )?;
                store.commit(b)?;
            }
        }

        let admin_token = load_or_create_token(&data_dir.join("admin.token"))?;

        let seed = match store.get::<SealedSecret>(SNAPSHOT_KEY)? {
            Some(s) => open_seed(&master, SNAPSHOT_KEY, &s.sealed)?,
            None => {
                let seed = random::<32>()?;
                let now = now_secs();
                let mut b = Batch::default();
                b.put(
                    SNAPSHOT_KEY,
                    &SealedSecret {
                        sealed: B64.encode(master.seal(SNAPSHOT_KEY.as_bytes(), &seed)?),
                        created_at: now,
                        updated_at: now,
                    },
                )?;
                store.commit(b)?;
                seed
            }
        };
        let snapshot_signer = SnapshotSigner::from_seed(seed);
        let (snapshot_secret, snapshot_public) = keypair_from_seed(seed);
        let pub_path = data_dir.join("snapshot-key.pub");
        let pub_json = serde_json::to_string_pretty(&snapshot_public)
            .map_err(|e| ControlError::Store(e.to_string()))?;
        std::fs::write(&pub_path, pub_json + "\n")
            .map_err(|e| ControlError::io(pub_path.display().to_string(), e))?;

        let cache = SnapshotCache::new();
        let ads = AdsServer::new(cache.clone());
        let cp = ControlPlane {
            inner: Arc::new(Inner {
                data_dir: data_dir.to_path_buf(),
                opts,
                store,
                fleet: Default::default(),
                leases: Default::default(),
                master,
                cache,
                ads,
                admin_token,
                snapshot_signer,
                snapshot_secret,
                snapshot_public,
                state: Mutex::new(Mutable::default()),
            }),
        };
        {
            let mut st = cp.lock();
            cp.load_token_keys(&mut st)?;
            if st.token_keys.iter().all(|k| k.record.retired_at.is_some()) {
                cp.add_token_key(&mut st)?;
            }
            for t in PUBLISHED_TYPES {
                let v = cp
                    .inner
                    .store
                    .get::<u64>(&type_version_key(t))?
                    .unwrap_or(0);
                st.type_versions.insert(t.to_string(), v);
            }
            cp.recompile_and_publish(&mut st)?;
        }
        Ok(cp)
    }

    fn lock(&self) -> MutexGuard<'_, Mutable> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// The xDS snapshot cache the ADS server serves from.
    pub fn snapshot_cache(&self) -> Arc<SnapshotCache> {
        self.inner.cache.clone()
    }

    /// The ADS server (per-node status lives here).
    pub fn ads(&self) -> &AdsServer {
        &self.inner.ads
    }

    /// The admin token (also in `<data dir>/admin.token`).
    pub fn admin_token(&self) -> &str {
        &self.inner.admin_token
    }

    /// The public key gateways verify snapshots (and the Compiled Policy
    /// inside) with.
    pub fn snapshot_public_key(&self) -> &PublicKeyFile {
        &self.inner.snapshot_public
    }

    /// Raw 32 bytes of the snapshot public key.
    pub fn snapshot_verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.inner.snapshot_signer.verifying_key()
    }

    // ------------------------------------------------------------- agents

    /// Registers an agent (and its project, when new).
    pub fn create_agent(&self, req: &CreateAgent) -> Result<AgentRecord> {
        let name = valid_name("agent", &req.name)?;
        let project = valid_name("project", req.project.as_deref().unwrap_or("default"))?;
        if let Some(t) = &req.tier {
            if !matches!(t.as_str(), "observer" | "worker" | "standard" | "full") {
                return Err(ControlError::BadRequest(format!(
                    "tier `{t}`: expected observer, worker, standard or full"
                )));
            }
        }
        let mut st = self.lock();
        if self
            .inner
            .store
            .get::<AgentRecord>(&agent_key(&name))?
            .is_some()
        {
            return Err(ControlError::Conflict(format!(
                "agent `{name}` already exists"
            )));
        }
        let rec = AgentRecord {
            name: name.clone(),
            project: project.clone(),
            function: req.function.clone(),
            tier: req.tier.clone(),
            created_at: now_secs(),
        };
        let mut b = Batch::default();
        b.put(&agent_key(&name), &rec)?;
        if self
            .inner
            .store
            .get::<ProjectRecord>(&project_key(&project))?
            .is_none()
        {
            b.put(
                &project_key(&project),
                &ProjectRecord {
                    name: project,
                    created_at: now_secs(),
                },
            )?;
        }
        let mut agents = self.agents()?;
        agents.push(rec.clone());
        let sources = self.sources()?;
        let packs = self.packs()?;
        let compiled = self.compile_all(&agents, &sources, &packs)?;
        self.commit_and_publish(&mut st, b, compiled)?;
        Ok(rec)
    }

    pub fn agents(&self) -> Result<Vec<AgentRecord>> {
        Ok(self
            .inner
            .store
            .scan::<AgentRecord>("agent/")?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    pub fn agent(&self, name: &str) -> Result<AgentRecord> {
        self.inner
            .store
            .get::<AgentRecord>(&agent_key(name))?
            .ok_or_else(|| {
                ControlError::NotFound(format!(
                    "agent `{name}` does not exist (create it with `tappass agent create {name}`)"
                ))
            })
    }

    /// The signed Compiled Policy currently published for an agent.
    pub fn agent_policy(&self, name: &str) -> Result<PolicyRecord> {
        self.agent(name)?;
        self.inner
            .store
            .get::<PolicyRecord>(&policy_key(name))?
            .ok_or_else(|| ControlError::NotFound(format!("agent `{name}` has no policy yet")))
    }

    /// Every effective rule of an agent with its because-trail, compiled
    /// from the stored sources.
    pub fn preview(&self, name: &str) -> Result<String> {
        let agent = self.agent(name)?;
        let src = self.policy_source(
            std::slice::from_ref(&agent),
            &self.sources()?,
            &self.packs()?,
        )?;
        let c = compile(&src, name, &CompileOptions::default())
            .map_err(|e| ControlError::Policy(e.to_string()))?;
        Ok(preview(&c))
    }

    // ------------------------------------------------------------- policy

    /// Stored policy sources: PolicySource path → text.
    pub fn sources(&self) -> Result<BTreeMap<String, String>> {
        Ok(self
            .inner
            .store
            .scan::<String>("src/")?
            .into_iter()
            .map(|(k, v)| (k["src/".len()..].to_string(), v))
            .collect())
    }

    /// Packs applied per level directory (`org`, `projects/P`, `agents/A`).
    pub fn packs(&self) -> Result<BTreeMap<String, Vec<String>>> {
        Ok(self
            .inner
            .store
            .scan::<Vec<String>>("packs/")?
            .into_iter()
            .map(|(k, v)| (k["packs/".len()..].to_string(), v))
            .collect())
    }

    fn check_level(&self, level: &Level) -> Result<()> {
        match level {
            Level::Org => Ok(()),
            Level::Project(p) => {
                if self
                    .inner
                    .store
                    .get::<ProjectRecord>(&project_key(p))?
                    .is_none()
                {
                    return Err(ControlError::NotFound(format!(
                        "project `{p}` does not exist (projects are created with their first agent: `tappass agent create NAME --project {p}`)"
                    )));
                }
                Ok(())
            }
            Level::Agent(a) => self.agent(a).map(|_| ()),
        }
    }

    /// Adds or replaces policy files at a level; with `replace`, the level
    /// holds exactly these files afterwards. Every agent is recompiled
    /// first: if any fails, nothing changes.
    pub fn apply_sources(&self, req: &ApplySources) -> Result<ApplyReport> {
        let level = Level::parse(&req.level)?;
        if req.files.is_empty() && !req.replace {
            return Err(ControlError::BadRequest("no policy files given".into()));
        }
        let mut seen = BTreeSet::new();
        for f in &req.files {
            validate_file_name(&f.name)?;
            if !seen.insert(f.name.as_str()) {
                return Err(ControlError::BadRequest(format!(
                    "file `{}` given twice",
                    f.name
                )));
            }
            if f.text.len() > MAX_SOURCE_BYTES {
                return Err(ControlError::BadRequest(format!(
                    "{}: {} bytes, larger than the limit of {MAX_SOURCE_BYTES} bytes",
                    f.name,
                    f.text.len()
                )));
            }
        }
        let mut st = self.lock();
        self.check_level(&level)?;
        let dir = level.dir();
        let mut sources = self.sources()?;
        let mut b = Batch::default();
        if req.replace {
            let old: Vec<String> = sources
                .keys()
                .filter(|p| in_dir(p, &dir))
                .cloned()
                .collect();
            for p in old {
                sources.remove(&p);
                b.delete(&format!("src/{p}"));
            }
        }
        for f in &req.files {
            let path = format!("{dir}/{}", f.name);
            b.put(&format!("src/{path}"), &f.text)?;
            sources.insert(path, f.text.clone());
        }
        if let Level::Agent(a) = &level {
            self.check_agent_header(&self.agent(a)?, &sources)?;
        }
        let compiled = self.compile_all(&self.agents()?, &sources, &self.packs()?)?;
        let report = self.commit_and_publish(&mut st, b, compiled)?;
        Ok(ApplyReport {
            level: level.label(),
            ..report
        })
    }

    /// Adds (or removes) a built-in compliance pack at a level.
    pub fn apply_pack(&self, req: &ApplyPack) -> Result<ApplyReport> {
        let level = Level::parse(&req.level)?;
        let builtins = tappass_policies::compiler::builtin_content()
            .map_err(|e| ControlError::Policy(e.to_string()))?;
        if !builtins.packs.contains_key(&req.pack) {
            let known: Vec<&str> = builtins.packs.keys().map(String::as_str).collect();
            return Err(ControlError::NotFound(format!(
                "pack `{}` does not exist (built-in packs: {})",
                req.pack,
                known.join(", ")
            )));
        }
        let mut st = self.lock();
        self.check_level(&level)?;
        let mut packs = self.packs()?;
        let list = packs.entry(level.dir()).or_default();
        if req.remove {
            if !list.contains(&req.pack) {
                return Err(ControlError::NotFound(format!(
                    "pack `{}` is not applied at {}",
                    req.pack,
                    level.label()
                )));
            }
            list.retain(|p| p != &req.pack);
        } else if !list.contains(&req.pack) {
            list.push(req.pack.clone());
            list.sort();
        }
        let mut b = Batch::default();
        b.put(&format!("packs/{}", level.dir()), list)?;
        let compiled = self.compile_all(&self.agents()?, &self.sources()?, &packs)?;
        let report = self.commit_and_publish(&mut st, b, compiled)?;
        Ok(ApplyReport {
            level: level.label(),
            ..report
        })
    }

    /// An agent-level file may carry the agent header; it must agree with
    /// the registered agent.
    fn check_agent_header(
        &self,
        agent: &AgentRecord,
        sources: &BTreeMap<String, String>,
    ) -> Result<()> {
        for (path, text) in sources {
            if !in_dir(path, &format!("agents/{}", agent.name)) {
                continue;
            }
            if let Some((name, project)) = agent_header(path, text)? {
                if name != agent.name || project != agent.project {
                    return Err(ControlError::BadRequest(format!(
                        "{path}: the agent header names agent `{name}` in project `{project}`, but agent `{}` is registered in project `{}`",
                        agent.name, agent.project
                    )));
                }
            }
        }
        Ok(())
    }

    /// The policy tree for compilation: stored files, generated pack files
    /// and generated agent headers.
    fn policy_source(
        &self,
        agents: &[AgentRecord],
        sources: &BTreeMap<String, String>,
        packs: &BTreeMap<String, Vec<String>>,
    ) -> Result<PolicySource> {
        let mut files: Vec<SourceFile> = sources
            .iter()
            .map(|(p, t)| SourceFile {
                path: p.clone(),
                text: t.clone(),
            })
            .collect();
        for (dir, list) in packs {
            if list.is_empty() {
                continue;
            }
            files.push(SourceFile {
                path: format!("{dir}/{GENERATED_PREFIX}-packs.yaml"),
                text: format!(
                    "packs: [{}]\n",
                    list.iter()
                        .map(|p| format!("{p:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let projects: BTreeSet<String> = self
            .inner
            .store
            .scan::<ProjectRecord>("project/")?
            .into_iter()
            .map(|(_, p)| p.name)
            .chain(agents.iter().map(|a| a.project.clone()))
            .collect();
        for p in projects {
            let dir = format!("projects/{p}");
            if !files.iter().any(|f| in_dir(&f.path, &dir)) {
                files.push(SourceFile {
                    path: format!("{dir}/{GENERATED_PREFIX}-project.yaml"),
                    text: "packs: []\n".into(),
                });
            }
        }
        for a in agents {
            let dir = format!("agents/{}", a.name);
            let mut has_header = false;
            for (p, t) in sources.iter().filter(|(p, _)| in_dir(p, &dir)) {
                has_header |= agent_header(p, t)?.is_some();
            }
            if !has_header {
                let mut text =
                    format!("agent:\n  name: {:?}\n  project: {:?}\n", a.name, a.project);
                if let Some(f) = &a.function {
                    text.push_str(&format!("  function: {f:?}\n"));
                }
                if let Some(t) = &a.tier {
                    text.push_str(&format!("  tier: {t:?}\n"));
                }
                files.push(SourceFile {
                    path: format!("{dir}/{GENERATED_PREFIX}-agent.yaml"),
                    text,
                });
            }
        }
        Ok(PolicySource::new(files))
    }

    /// Compiles every agent (content only: versions are stamped later).
    fn compile_all(
        &self,
        agents: &[AgentRecord],
        sources: &BTreeMap<String, String>,
        packs: &BTreeMap<String, Vec<String>>,
    ) -> Result<Vec<(String, Compiled)>> {
        let src = self.policy_source(agents, sources, packs)?;
        agents
            .iter()
            .map(|a| {
                compile(&src, &a.name, &CompileOptions { policy_version: 1 })
                    .map(|c| (a.name.clone(), c))
                    .map_err(|e| ControlError::Policy(format!("agent `{}`: {e}", a.name)))
            })
            .collect()
    }

    /// Stamps versions on the agents whose content changed, signs them,
    /// commits the batch together with the new policy records, publishes.
    fn commit_and_publish(
        &self,
        st: &mut Mutable,
        mut b: Batch,
        compiled: Vec<(String, Compiled)>,
    ) -> Result<ApplyReport> {
        let mut report = ApplyReport {
            level: String::new(),
            changed: BTreeMap::new(),
            unchanged: Vec::new(),
        };
        for (agent, mut c) in compiled {
            let prev = self.inner.store.get::<PolicyRecord>(&policy_key(&agent))?;
            if let Some(p) = &prev {
                if p.content_hash == c.policy.identity.content_hash {
                    report.unchanged.push(agent);
                    continue;
                }
            }
            let version = prev.map_or(1, |p| p.policy_version + 1);
            c.policy.identity.policy_version = version;
            let signed = sign(&c.policy, &self.inner.snapshot_secret)
                .and_then(|s| s.to_canonical_json())
                .map_err(|e| ControlError::Policy(format!("signing `{agent}`: {e}")))?;
            b.put(
                &policy_key(&agent),
                &PolicyRecord {
                    agent: agent.clone(),
                    policy_version: version,
                    content_hash: c.policy.identity.content_hash.clone(),
                    signed_json: signed,
                    compiled_at: now_secs(),
                },
            )?;
            report.changed.insert(agent, version);
        }
        self.inner.store.commit(b)?;
        self.publish(st, false)?;
        Ok(report)
    }

    /// Recompiles every agent from the stored state (at start: the compiler
    /// may have changed) and publishes.
    fn recompile_and_publish(&self, st: &mut Mutable) -> Result<()> {
        let agents = self.agents()?;
        let compiled = self.compile_all(&agents, &self.sources()?, &self.packs()?);
        match compiled {
            Ok(c) => {
                self.commit_and_publish(st, Batch::default(), c)?;
            }
            Err(e) => {
                // Keep serving the last signed policies.
                tracing::error!(error = %e, "stored policy no longer compiles; serving the last compiled policies");
                self.publish(st, false)?;
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ API keys

    /// Creates a gateway API key for an agent. The key is returned once;
    /// only its SHA-256 is stored.
    pub fn create_api_key(&self, agent: &str) -> Result<CreatedApiKey> {
        let mut st = self.lock();
        let rec = self.agent(agent)?;
        let key_id = format!("tpk_{}", hex::encode(random::<6>()?));
        let secret = hex::encode(random::<24>()?);
        let key = format!("{key_id}_{secret}");
        let hash = hex::encode(Sha256::digest(key.as_bytes()));
        let mut b = Batch::default();
        b.put(
            &format!("apikey/{hash}"),
            &ApiKeyRecord {
                hash,
                key_id: key_id.clone(),
                agent: rec.name.clone(),
                project: rec.project,
                created_at: now_secs(),
            },
        )?;
        self.inner.store.commit(b)?;
        self.publish(&mut st, false)?;
        Ok(CreatedApiKey {
            key,
            key_id,
            agent: rec.name,
        })
    }

    pub fn api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        Ok(self
            .inner
            .store
            .scan::<ApiKeyRecord>("apikey/")?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Deletes an API key by its key id.
    pub fn delete_api_key(&self, key_id: &str) -> Result<()> {
        let mut st = self.lock();
        let Some(k) = self.api_keys()?.into_iter().find(|k| k.key_id == key_id) else {
            return Err(ControlError::NotFound(format!(
                "API key `{key_id}` does not exist"
            )));
        };
        let mut b = Batch::default();
        b.delete(&format!("apikey/{}", k.hash));
        self.inner.store.commit(b)?;
        self.publish(&mut st, false)
    }

    // -------------------------------------------------------------- tokens

    fn load_token_keys(&self, st: &mut Mutable) -> Result<()> {
        st.token_keys.clear();
        for (k, rec) in self.inner.store.scan::<TokenKeyRecord>("tokkey/")? {
            let seed = open_seed(&self.inner.master, &k, &rec.sealed_seed)?;
            st.token_keys.push(TokenKey {
                pair: SigningKeyPair::from_seed(seed),
                record: rec,
            });
        }
        st.token_keys.sort_by_key(|k| k.record.created_at);
        Ok(())
    }

    fn add_token_key(&self, st: &mut Mutable) -> Result<String> {
        let seed = random::<32>()?;
        let pair = SigningKeyPair::from_seed(seed);
        let now = now_secs();
        let key = format!("tokkey/{}", pair.kid());
        let rec = TokenKeyRecord {
            kid: pair.kid().to_string(),
            sealed_seed: B64.encode(self.inner.master.seal(key.as_bytes(), &seed)?),
            created_at: now,
            retired_at: None,
        };
        let mut b = Batch::default();
        for old in st
            .token_keys
            .iter()
            .filter(|k| k.record.retired_at.is_none())
        {
            let mut r = old.record.clone();
            r.retired_at = Some(now);
            b.put(&format!("tokkey/{}", r.kid), &r)?;
        }
        b.put(&key, &rec)?;
        self.inner.store.commit(b)?;
        self.load_token_keys(st)?;
        Ok(pair.kid().to_string())
    }

    /// Retires the active token-signing key and makes a new one active.
    /// The old key stays in the JWKS for the longest token lifetime.
    pub fn rotate_token_keys(&self) -> Result<Vec<TokenKeyInfo>> {
        let mut st = self.lock();
        self.add_token_key(&mut st)?;
        self.publish(&mut st, false)?;
        Ok(self.key_infos(&st))
    }

    pub fn token_keys(&self) -> Vec<TokenKeyInfo> {
        let st = self.lock();
        self.key_infos(&st)
    }

    fn key_infos(&self, st: &Mutable) -> Vec<TokenKeyInfo> {
        let max = secs(self.inner.opts.max_token_ttl) + secs(self.inner.opts.token_leeway);
        st.token_keys
            .iter()
            .map(|k| TokenKeyInfo {
                kid: k.record.kid.clone(),
                active: k.record.retired_at.is_none(),
                created_at: k.record.created_at,
                retired_at: k.record.retired_at,
                published_until: k.record.retired_at.map(|r| r + max),
            })
            .collect()
    }

    /// The JWKS of the token-signing keys: the active key and every retired
    /// key that may still have signed a valid token.
    fn jwks_value(&self, st: &Mutable, now: i64) -> serde_json::Value {
        let max = secs(self.inner.opts.max_token_ttl) + secs(self.inner.opts.token_leeway);
        let keys: Vec<serde_json::Value> = st
            .token_keys
            .iter()
            .rev()
            .filter(|k| k.record.retired_at.is_none_or(|r| now < r + max))
            .map(|k| k.pair.public_jwk())
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// The published JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        let st = self.lock();
        self.jwks_value(&st, now_secs())
    }

    /// Mints a capability token for a registered agent.
    pub fn mint_token(&self, req: &MintRequest) -> Result<MintedToken> {
        let agent = self.agent(&req.agent)?;
        let max = secs(self.inner.opts.max_token_ttl);
        let ttl = req
            .ttl_seconds
            .unwrap_or(secs(self.inner.opts.default_token_ttl).min(max));
        if ttl <= 0 || ttl > max {
            return Err(ControlError::BadRequest(format!(
                "ttl_seconds {ttl} is outside 1..={max}"
            )));
        }
        let sandbox = req
            .sandbox
            .as_deref()
            .map(|s| valid_name("sandbox", s))
            .transpose()?;
        if let Some(sb) = &sandbox {
            if self
                .inner
                .store
                .get::<Revoked>(&format!("rev/sandbox/{sb}"))?
                .is_some()
            {
                return Err(ControlError::Conflict(format!(
                    "sandbox `{sb}` has been revoked"
                )));
            }
        }
        let policy_version = self
            .inner
            .store
            .get::<PolicyRecord>(&policy_key(&agent.name))?
            .map(|p| p.policy_version);
        let st = self.lock();
        let key = st
            .token_keys
            .iter()
            .find(|k| k.record.retired_at.is_none())
            .ok_or_else(|| ControlError::Store("no active token-signing key".into()))?;
        let now = now_secs();
        let jti = format!("tok-{}", hex::encode(random::<12>()?));
        let claims = Claims {
            iss: self.inner.opts.issuer.clone(),
            aud: Audience::One(self.inner.opts.audience.clone()),
            sub: agent.name.clone(),
            org: None,
            project: Some(agent.project.clone()),
            sandbox: sandbox.clone(),
            tier: agent.tier.clone(),
            scope: Scope {
                tools_allow: req.tools_allow.clone(),
                tools_deny: req.tools_deny.clone(),
                schemas_acl: req.schemas_acl.clone(),
                models: req.models.clone(),
            },
            policy_version,
            iat: now,
            nbf: None,
            exp: now + ttl,
            jti: jti.clone(),
        };
        let token = mint(&claims, &key.pair);
        let mut b = Batch::default();
        b.put(
            &format!("issued/{jti}"),
            &IssuedToken {
                jti: jti.clone(),
                agent: agent.name.clone(),
                sandbox,
                kid: key.pair.kid().to_string(),
                exp: now + ttl,
            },
        )?;
        self.inner.store.commit(b)?;
        Ok(MintedToken {
            token,
            jti,
            kid: key.pair.kid().to_string(),
            agent: agent.name,
            exp: now + ttl,
        })
    }

    /// Whether a token is valid now, as a gateway would decide with the
    /// current JWKS and revocations.
    pub fn verify_token(&self, token: &str) -> VerifyAnswer {
        let now = now_secs();
        let (jwks, revoked) = {
            let st = self.lock();
            let jwks = self.jwks_value(&st, now).to_string();
            (jwks, self.revocations(now))
        };
        let revoked = match revoked {
            Ok(r) => r,
            Err(e) => {
                return VerifyAnswer {
                    valid: false,
                    error: Some("unavailable".into()),
                    message: Some(e.to_string()),
                    claims: None,
                }
            }
        };
        let verifier = Verifier {
            jwks: Jwks::from_json(&jwks).unwrap_or_default(),
            audience: self.inner.opts.audience.clone(),
            issuer: Some(self.inner.opts.issuer.clone()),
            max_ttl_seconds: secs(self.inner.opts.max_token_ttl),
            leeway_seconds: secs(self.inner.opts.token_leeway),
        };
        let set = Revocations {
            jti: revoked.0.into_iter().map(|r| r.id).collect(),
            sandboxes: revoked.1.into_iter().map(|r| r.id).collect(),
        };
        match verifier.verify(token, now, &set) {
            Ok(c) => VerifyAnswer {
                valid: true,
                error: None,
                message: None,
                claims: Some(c),
            },
            Err(e) => VerifyAnswer {
                valid: false,
                error: Some(e.code().to_string()),
                message: Some(e.to_string()),
                claims: None,
            },
        }
    }

    /// Revokes a token by `jti` until it would have expired.
    pub fn revoke_token(&self, jti: &str) -> Result<Revoked> {
        if jti.is_empty() || jti.len() > 128 {
            return Err(ControlError::BadRequest(
                "jti must be 1-128 characters".into(),
            ));
        }
        let mut st = self.lock();
        let now = now_secs();
        let expires_at = match self
            .inner
            .store
            .get::<IssuedToken>(&format!("issued/{jti}"))?
        {
            Some(t) => t.exp,
            None => now + secs(self.inner.opts.max_token_ttl),
        } + secs(self.inner.opts.token_leeway);
        let rec = Revoked {
            id: jti.to_string(),
            revoked_at: now,
            expires_at,
        };
        let mut b = Batch::default();
        b.put(&format!("rev/jti/{jti}"), &rec)?;
        self.inner.store.commit(b)?;
        self.publish(&mut st, false)?;
        Ok(rec)
    }

    /// Revokes a sandbox: its tokens are refused, and no new token is
    /// minted for it.
    pub fn revoke_sandbox(&self, sandbox: &str) -> Result<Revoked> {
        let sandbox = valid_name("sandbox", sandbox)?;
        let mut st = self.lock();
        let now = now_secs();
        let rec = Revoked {
            id: sandbox.clone(),
            revoked_at: now,
            expires_at: now
                + secs(self.inner.opts.max_token_ttl)
                + secs(self.inner.opts.token_leeway),
        };
        let mut b = Batch::default();
        b.put(&format!("rev/sandbox/{sandbox}"), &rec)?;
        self.inner.store.commit(b)?;
        self.publish(&mut st, false)?;
        Ok(rec)
    }

    /// Unexpired revocations: (tokens, sandboxes).
    pub fn revocations(&self, now: i64) -> Result<(Vec<Revoked>, Vec<Revoked>)> {
        let live = |p: &str| -> Result<Vec<Revoked>> {
            Ok(self
                .inner
                .store
                .scan::<Revoked>(p)?
                .into_iter()
                .map(|(_, v)| v)
                .filter(|r| r.expires_at > now)
                .collect())
        };
        Ok((live("rev/jti/")?, live("rev/sandbox/")?))
    }

    // --------------------------------------------------------- credentials

    /// Stores a provider credential, encrypted with the master key. It is
    /// never returned by any API.
    pub fn put_credential(&self, name: &str, value: &str) -> Result<CredentialInfo> {
        let name = valid_name("credential", name)?;
        if value.is_empty() || value.len() > 16 * 1024 {
            return Err(ControlError::BadRequest(
                "credential value must be 1-16384 bytes".into(),
            ));
        }
        let _st = self.lock();
        let key = format!("cred/{name}");
        let now = now_secs();
        let created_at = self
            .inner
            .store
            .get::<SealedSecret>(&key)?
            .map_or(now, |s| s.created_at);
        let rec = SealedSecret {
            sealed: B64.encode(self.inner.master.seal(key.as_bytes(), value.as_bytes())?),
            created_at,
            updated_at: now,
        };
        let mut b = Batch::default();
        b.put(&key, &rec)?;
        self.inner.store.commit(b)?;
        Ok(CredentialInfo {
            name,
            created_at,
            updated_at: now,
        })
    }

    /// Names and dates of the stored credentials (never their values).
    pub fn credentials(&self) -> Result<Vec<CredentialInfo>> {
        Ok(self
            .inner
            .store
            .scan::<SealedSecret>("cred/")?
            .into_iter()
            .map(|(k, v)| CredentialInfo {
                name: k["cred/".len()..].to_string(),
                created_at: v.created_at,
                updated_at: v.updated_at,
            })
            .collect())
    }

    /// The decrypted value of a credential, for an embedding process that
    /// injects it upstream (e.g. the all-in-one). Not reachable over any
    /// API.
    pub fn credential_value(&self, name: &str) -> Result<String> {
        let key = format!("cred/{name}");
        let rec =
            self.inner.store.get::<SealedSecret>(&key)?.ok_or_else(|| {
                ControlError::NotFound(format!("credential `{name}` does not exist"))
            })?;
        let sealed = B64
            .decode(rec.sealed)
            .map_err(|_| ControlError::Crypto("sealed credential is not base64".into()))?;
        String::from_utf8(self.inner.master.open(key.as_bytes(), &sealed)?)
            .map_err(|_| ControlError::Crypto("credential is not UTF-8".into()))
    }

    pub fn delete_credential(&self, name: &str) -> Result<()> {
        let _st = self.lock();
        let key = format!("cred/{name}");
        if self.inner.store.get::<SealedSecret>(&key)?.is_none() {
            return Err(ControlError::NotFound(format!(
                "credential `{name}` does not exist"
            )));
        }
        let mut b = Batch::default();
        b.delete(&key);
        self.inner.store.commit(b)
    }

    // -------------------------------------------------------------- status

    /// Published versions and every gateway seen by the xDS server.
    pub fn status(&self) -> Result<Status> {
        let (versions, token_kid) = {
            let st = self.lock();
            (
                st.type_versions
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_string()))
                    .collect(),
                st.token_keys
                    .iter()
                    .find(|k| k.record.retired_at.is_none())
                    .map(|k| k.record.kid.clone())
                    .unwrap_or_default(),
            )
        };
        Ok(Status {
            versions,
            snapshot_key_id: self.inner.snapshot_signer.key_id().to_string(),
            token_key_id: token_kid,
            agents: self.agents()?.len(),
            gateways: self
                .inner
                .ads
                .node_status()
                .into_iter()
                .map(crate::admin::gateway_status)
                .collect(),
        })
    }

    // ----------------------------------------------------------- publish

    /// Periodic work: drops expired keys and revocations from what is
    /// published and re-issues snapshots before their TTL runs out.
    pub fn maintain(&self) -> Result<()> {
        let mut st = self.lock();
        let refresh = st
            .last_issue
            .is_none_or(|t| t.elapsed().unwrap_or_default() >= self.inner.opts.snapshot_ttl / 2);
        self.publish(&mut st, refresh)?;
        // Forget issued-token records past their expiry.
        let now = now_secs();
        let mut b = Batch::default();
        let mut any = false;
        for (k, t) in self.inner.store.scan::<IssuedToken>("issued/")? {
            if t.exp + secs(self.inner.opts.token_leeway) < now {
                b.delete(&k);
                any = true;
            }
        }
        if any {
            self.inner.store.commit(b)?;
        }
        Ok(())
    }

    /// Builds every resource from the store; signs the ones whose payload
    /// changed (or all, with `refresh`) with new versions; bumps the
    /// version of each type that changed and sets the cache.
    fn publish(&self, st: &mut Mutable, refresh: bool) -> Result<()> {
        let now = now_secs();
        let mut wanted: BTreeMap<&'static str, Vec<(String, Vec<u8>)>> = BTreeMap::new();

        let mut policies = Vec::new();
        for (_, p) in self.inner.store.scan::<PolicyRecord>("policy/")? {
            policies.push((p.agent.clone(), p.signed_json.into_bytes()));
        }
        wanted.insert(POLICY_SNAPSHOT, policies);

        let jwks = self.jwks_value(st, now).to_string();
        wanted.insert(
            TRUST_BUNDLE,
            vec![(
                TRUST_BUNDLE_NAME.to_string(),
                tp::TrustBundlePayload { jwks_json: jwks }.encode_to_vec(),
            )],
        );

        let (tokens, sandboxes) = self.revocations(now)?;
        let ts = |s: i64| prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        };
        let rev = tp::RevocationsPayload {
            tokens: tokens
                .iter()
                .map(|r| tp::RevokedToken {
                    jti: r.id.clone(),
                    expires_at: Some(ts(r.expires_at)),
                })
                .collect(),
            sandboxes: sandboxes
                .iter()
                .map(|r| tp::RevokedSandbox {
                    sandbox_id: r.id.clone(),
                    expires_at: Some(ts(r.expires_at)),
                })
                .collect(),
        };
        wanted.insert(
            REVOCATIONS,
            vec![(REVOCATIONS_NAME.to_string(), rev.encode_to_vec())],
        );

        let keys = tp::ApiKeyHashesPayload {
            keys: self
                .api_keys()?
                .into_iter()
                .map(|k| tp::ApiKeyHash {
                    alg: "sha256".into(),
                    hash: k.hash,
                    agent: k.agent,
                    project: k.project,
                    key_id: k.key_id,
                    expires_at: None,
                })
                .collect(),
        };
        wanted.insert(
            API_KEY_HASHES,
            vec![(API_KEYS_NAME.to_string(), keys.encode_to_vec())],
        );

        let issued_at = SystemTime::now();
        let ttl = self.inner.opts.snapshot_ttl;
        let mut batch = Batch::default();
        let mut snapshots = Vec::new();
        for (type_url, items) in wanted {
            let mut changed = refresh;
            let names: BTreeSet<&str> = items.iter().map(|(n, _)| n.as_str()).collect();
            // Removed resources change the type.
            let before = st.published.len();
            st.published
                .retain(|(t, n), _| t != type_url || names.contains(n.as_str()));
            changed |= st.published.len() != before;
            let mut resources = Vec::new();
            for (name, payload) in items {
                let hash: [u8; 32] = Sha256::digest(&payload).into();
                let k = (type_url.to_string(), name.clone());
                if !refresh {
                    if let Some(p) = st.published.get(&k) {
                        if p.payload_hash == hash {
                            resources.push(p.resource.clone());
                            continue;
                        }
                    }
                }
                changed = true;
                let vkey = resource_version_key(type_url, &name);
                let version = self
                    .inner
                    .store
                    .get::<u64>(&vkey)?
                    .unwrap_or(0)
                    .max(st.published.get(&k).map_or(0, |p| p.version))
                    + 1;
                batch.put(&vkey, &version)?;
                let any = self.sign_resource(type_url, &name, version, issued_at, ttl, payload);
                let resource = Resource::with_version(name.clone(), version.to_string(), any);
                resources.push(resource.clone());
                st.published.insert(
                    k,
                    Published {
                        payload_hash: hash,
                        version,
                        resource,
                    },
                );
            }
            let tv = st.type_versions.entry(type_url.to_string()).or_insert(0);
            if changed || *tv == 0 {
                *tv += 1;
                batch.put(&type_version_key(type_url), &*tv)?;
            }
            snapshots.push((
                type_url.to_string(),
                TypeSnapshot::new(tv.to_string(), resources),
            ));
        }
        self.inner.store.commit(batch)?;
        if refresh || st.last_issue.is_none() {
            st.last_issue = Some(issued_at);
        }
        self.inner.cache.set_many(snapshots);
        Ok(())
    }

    fn sign_resource(
        &self,
        type_url: &str,
        name: &str,
        version: u64,
        issued_at: SystemTime,
        ttl: Duration,
        payload: Vec<u8>,
    ) -> prost_types::Any {
        let s = &self.inner.snapshot_signer;
        match type_url {
            POLICY_SNAPSHOT => {
                pack(&s.resource::<tp::PolicySnapshot>(name, version, issued_at, ttl, payload))
            }
            TRUST_BUNDLE => {
                pack(&s.resource::<tp::TrustBundle>(name, version, issued_at, ttl, payload))
            }
            REVOCATIONS => {
                pack(&s.resource::<tp::Revocations>(name, version, issued_at, ttl, payload))
            }
            _ => pack(&s.resource::<tp::ApiKeyHashes>(name, version, issued_at, ttl, payload)),
        }
    }

    /// Flushes the store (called at shutdown).
    pub fn flush(&self) -> Result<()> {
        self.inner.store.flush()
    }

    /// Constant-time comparison with the admin token.
    pub fn check_admin_token(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        let a = Sha256::digest(presented.as_bytes());
        let b = Sha256::digest(self.inner.admin_token.as_bytes());
        bool::from(a.ct_eq(&b))
    }
}

fn agent_key(name: &str) -> String {
    format!("agent/{name}")
}

fn project_key(name: &str) -> String {
    format!("project/{name}")
}

fn policy_key(agent: &str) -> String {
    format!("policy/{agent}")
}

fn type_version_key(type_url: &str) -> String {
    format!("ver/type/{type_url}")
}

fn resource_version_key(type_url: &str, name: &str) -> String {
    format!("ver/res/{type_url}/{name}")
}

/// Whether a PolicySource path is a file directly in `dir`.
fn in_dir(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir)
        .and_then(|r| r.strip_prefix('/'))
        .is_some_and(|r| !r.contains('/'))
}

fn validate_file_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && PolicySource::is_policy_file(name);
    if !ok {
        return Err(ControlError::BadRequest(format!(
            "file name `{name}` is invalid: a plain file name ending in .yaml, .yml or .rego"
        )));
    }
    if name.starts_with(GENERATED_PREFIX) {
        return Err(ControlError::BadRequest(format!(
            "file name `{name}`: names starting with `{GENERATED_PREFIX}` are reserved"
        )));
    }
    Ok(())
}

/// `(name, project)` of the `agent:` header of a YAML file, if it has one.
fn agent_header(path: &str, text: &str) -> Result<Option<(String, String)>> {
    if !(path.ends_with(".yaml") || path.ends_with(".yml")) {
        return Ok(None);
    }
    let v: serde_json::Value = match serde_norway::from_str(text) {
        Ok(v) => v,
        Err(e) => return Err(ControlError::Policy(format!("{path}: not valid YAML: {e}"))),
    };
    let Some(h) = v.get("agent") else {
        return Ok(None);
    };
    let field = |k: &str| h.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    Ok(Some((field("name"), field("project"))))
}

fn open_seed(master: &MasterKey, key: &str, sealed_b64: &str) -> Result<[u8; 32]> {
    let sealed = B64
        .decode(sealed_b64)
        .map_err(|_| ControlError::Crypto(format!("{key}: sealed key is not base64")))?;
    master
        .open(key.as_bytes(), &sealed)?
        .try_into()
        .map_err(|_| ControlError::Crypto(format!("{key}: sealed key is not 32 bytes")))
}

fn load_or_create_token(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        Ok(_) => Err(ControlError::Crypto(format!("{} is empty", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = format!("tpa_{}", hex::encode(random::<32>()?));
            write_private(path, &token)?;
            Ok(token)
        }
        Err(e) => Err(ControlError::io(path.display().to_string(), e)),
    }
}
