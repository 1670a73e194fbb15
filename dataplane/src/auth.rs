//! Client authentication with gateway API keys (stored as SHA-256 hashes).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ApiKeyConfig;
use crate::error::GatewayError;

/// The accepted gateway API keys.
#[derive(Debug, Default)]
pub struct ApiKeys {
    /// (hash, agent, project)
    keys: Vec<([u8; 32], String, Option<String>)>,
}

/// Who a verified caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The agent: the API key's configured name, or the token's `sub`.
    pub agent: String,
    pub method: AuthMethod,
    pub org: Option<String>,
    pub project: Option<String>,
    pub sandbox: Option<String>,
    /// Model patterns the caller may use (empty: any configured model).
    pub models: Vec<String>,
    /// The tools a capability token confines its session to
    /// (`enforce_session_scope`); `None` when the token names none.
    pub tool_scope: Option<std::sync::Arc<ToolScope>>,
}

/// A capability token's tool scope: it narrows whatever the policy allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolScope {
    /// Tool name patterns allowed (empty: the policy decides).
    pub allow: Vec<String>,
    /// Tool name patterns denied.
    pub deny: Vec<String>,
    /// Schema → granted access (`read`, `write`). When not empty, a catalog
    /// tool naming a schema may only touch the schemas listed, with the
    /// access listed.
    pub schemas: std::collections::BTreeMap<String, Vec<String>>,
}

impl ToolScope {
    fn from_token(s: &tappass_tokens::Scope) -> Option<ToolScope> {
        let scope = ToolScope {
            allow: s.tools_allow.clone(),
            deny: s.tools_deny.clone(),
            schemas: s.schemas_acl.clone(),
        };
        (!scope.allow.is_empty() || !scope.deny.is_empty() || !scope.schemas.is_empty())
            .then_some(scope)
    }

    /// Why a tool, known by any of `names` (its called name, its catalog
    /// id), is outside the scope; `None` when it is inside.
    pub fn refuses(&self, names: &[&str]) -> Option<String> {
        let matches = |p: &String| names.iter().any(|n| crate::providers::glob_match(p, n));
        if let Some(p) = self.deny.iter().find(|p| matches(p)) {
            return Some(format!("it matches the token's denied pattern `{p}`"));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(matches) {
            return Some("it is outside the token's tool scope".into());
        }
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    ApiKey,
    /// A capability token, by its id.
    Token {
        jti: String,
    },
}

impl Caller {
    fn api_key(name: &str) -> Caller {
        Caller {
            agent: name.to_string(),
            method: AuthMethod::ApiKey,
            org: None,
            project: None,
            sandbox: None,
            models: Vec::new(),
            tool_scope: None,
        }
    }

    /// Whether the caller's scope admits `model`.
    pub fn may_use_model(&self, model: &str) -> bool {
        self.models.is_empty()
            || self
                .models
                .iter()
                .any(|p| crate::providers::glob_match(p, model))
    }
}

/// Capability-token verification: the trust bundle and the revocations.
#[derive(Debug)]
pub struct TokenAuth {
    pub verifier: tappass_tokens::Verifier,
    pub revocations: tappass_tokens::Revocations,
}

impl TokenAuth {
    /// Token verification from the `tokens` config section; a key set and
    /// revocations pushed by the control plane take the place of the files.
    pub fn from_config(
        cfg: &crate::config::TokenConfig,
        pushed_jwks: Option<&tappass_keys::Jwks>,
        pushed_revocations: Option<&tappass_tokens::Revocations>,
    ) -> Result<TokenAuth, String> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        let jwks = match (pushed_jwks, &cfg.jwks_file) {
            (Some(j), _) => j.clone(),
            (None, Some(path)) => {
                let jwks = tappass_keys::Jwks::from_json(&read(path)?)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if jwks.is_empty() {
                    return Err(format!("{}: no Ed25519 key", path.display()));
                }
                jwks
            }
            // No key set yet: every token is refused until one arrives.
            (None, None) => tappass_keys::Jwks::default(),
        };
        let revocations = match (pushed_revocations, &cfg.revocations_file) {
            (Some(r), _) => r.clone(),
            (None, Some(p)) => {
                serde_json::from_str(&read(p)?).map_err(|e| format!("{}: {e}", p.display()))?
            }
            (None, None) => tappass_tokens::Revocations::default(),
        };
        Ok(TokenAuth {
            verifier: tappass_tokens::Verifier {
                jwks,
                audience: cfg.audience.clone(),
                issuer: cfg.issuer.clone(),
                max_ttl_seconds: cfg.max_ttl_seconds as i64,
                leeway_seconds: cfg.leeway_seconds as i64,
            },
            revocations,
        })
    }

    /// The token's caller; whether its sandbox is active is
    /// [`TokenAuth::check_sandbox`]'s question.
    fn verify(&self, token: &str) -> Result<Caller, GatewayError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let c = self
            .verifier
            .verify_credential(token, now, &self.revocations)
            .map_err(token_rejected)?;
        Ok(Caller {
            agent: c.sub,
            method: AuthMethod::Token { jti: c.jti },
            org: c.org,
            project: c.project,
            sandbox: c.sandbox,
            tool_scope: ToolScope::from_token(&c.scope).map(std::sync::Arc::new),
            models: c.scope.models,
        })
    }
}

fn token_rejected(e: tappass_tokens::TokenError) -> GatewayError {
    GatewayError::TokenRejected {
        code: e.code(),
        message: e.to_string(),
    }
}

impl TokenAuth {
    /// `check_sandbox_active`: the sandbox a token caller runs in has not
    /// been revoked (API-key callers and tokens without a sandbox pass).
    pub fn check_sandbox(&self, caller: &Caller) -> Result<(), GatewayError> {
        match &caller.sandbox {
            Some(sb)
                if matches!(caller.method, AuthMethod::Token { .. })
                    && self.revocations.sandboxes.contains(sb) =>
            {
                Err(token_rejected(tappass_tokens::TokenError::SandboxRevoked(
                    sb.clone(),
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Verify the caller, its sandbox included.
pub fn authenticate(
    keys: &ApiKeys,
    tokens: Option<&TokenAuth>,
    authorization: Option<&[u8]>,
    x_api_key: Option<&[u8]>,
) -> Result<Caller, GatewayError> {
    let caller = identify(keys, tokens, authorization, x_api_key)?;
    if let Some(t) = tokens {
        t.check_sandbox(&caller)?;
    }
    Ok(caller)
}

/// `verify_identity`: a capability token (when the gateway trusts a token
/// issuer and the bearer credential is a JWT) or a gateway API key. The
/// token's sandbox is checked apart ([`TokenAuth::check_sandbox`]).
pub fn identify(
    keys: &ApiKeys,
    tokens: Option<&TokenAuth>,
    authorization: Option<&[u8]>,
    x_api_key: Option<&[u8]>,
) -> Result<Caller, GatewayError> {
    if let (Some(tokens), Some(auth)) = (tokens, authorization) {
        if let Some(token) = std::str::from_utf8(auth)
            .ok()
            .and_then(|a| a.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .filter(|t| tappass_tokens::looks_like_jwt(t))
        {
            return tokens.verify(token);
        }
    }
    keys.verify(authorization, x_api_key)
}

/// SHA-256 of a key, hex encoded (what the config stores).
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl ApiKeys {
    pub fn from_config(keys: &[ApiKeyConfig]) -> ApiKeys {
        ApiKeys {
            keys: keys
                .iter()
                .filter_map(|k| {
                    let mut h = [0u8; 32];
                    hex::decode_to_slice(&k.sha256, &mut h).ok()?;
                    Some((h, k.name.clone(), None))
                })
                .collect(),
        }
    }

    /// The configured keys plus those the control plane pushed
    /// (hex SHA-256, agent, project).
    pub fn with_pushed(mut self, pushed: &[(String, String, Option<String>)]) -> ApiKeys {
        for (hash, agent, project) in pushed {
            let mut h = [0u8; 32];
            if hex::decode_to_slice(hash, &mut h).is_ok() {
                self.keys.push((h, agent.clone(), project.clone()));
            }
        }
        self
    }

    /// Verify the key presented as `Authorization: Bearer …` or `x-api-key`.
    /// A caller that presents no key, or a key that is not a gateway key, is
    /// refused: a provider key sent by mistake is never forwarded.
    pub fn verify(
        &self,
        authorization: Option<&[u8]>,
        x_api_key: Option<&[u8]>,
    ) -> Result<Caller, GatewayError> {
        let presented = match (authorization, x_api_key) {
            (Some(a), _) => {
                let a = std::str::from_utf8(a).map_err(|_| bad_header())?;
                let (scheme, token) = a.trim().split_once(' ').ok_or_else(bad_header)?;
                if !scheme.eq_ignore_ascii_case("bearer") {
                    return Err(bad_header());
                }
                token.trim().to_string()
            }
            (None, Some(k)) => std::str::from_utf8(k)
                .map_err(|_| bad_header())?
                .trim()
                .to_string(),
            (None, None) => return Err(GatewayError::Unauthorized(
                "missing gateway API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`"
                    .into(),
            )),
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (h, name, project) in &self.keys {
            if bool::from(h.ct_eq(&digest)) {
                found = Some((name, project));
            }
        }
        match found {
            Some((name, project)) => {
                let mut c = Caller::api_key(name);
                c.project = project.clone();
                Ok(c)
            }
            None => Err(GatewayError::Unauthorized("invalid gateway API key".into())),
        }
    }
}

fn bad_header() -> GatewayError {
    GatewayError::Unauthorized("malformed Authorization header: expected `Bearer <key>`".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ApiKeys {
        ApiKeys::from_config(&[ApiKeyConfig {
            name: "team-a".into(),
            sha256: hash_key("tp-secret"),
        }])
    }

    #[test]
    fn bearer_and_x_api_key_are_accepted() {
        let k = keys();
        assert_eq!(
            k.verify(Some(b"Bearer tp-secret"), None).unwrap().agent,
            "team-a"
        );
        assert_eq!(
            k.verify(Some(b"bearer  tp-secret "), None).unwrap().agent,
            "team-a"
        );
        assert_eq!(k.verify(None, Some(b"tp-secret")).unwrap().agent, "team-a");
    }

    #[test]
    fn everything_else_is_refused() {
        let k = keys();
        for (a, x) in [
            (None, None),
            (Some(&b"Bearer sk-openai-key"[..]), None),
            (Some(&b"Basic dXNlcjpwYXNz"[..]), None),
            (Some(&b"Bearer"[..]), None),
            (Some(&b"\xff\xfe"[..]), None),
            (None, Some(&b"sk-ant-wrong"[..])),
            (None, Some(&b""[..])),
        ] {
            assert!(
                matches!(k.verify(a, x), Err(GatewayError::Unauthorized(_))),
                "{a:?} {x:?}"
            );
        }
    }
}
