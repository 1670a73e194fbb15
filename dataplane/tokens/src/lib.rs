//! Capability tokens: short-lived JWTs (RFC 7519) signed with Ed25519
//! (`alg` `EdDSA`, or `Ed25519` per RFC 9864), with the signing key's id in
//! the `kid` header. The control plane mints them; every gateway verifies
//! them offline against the published key set (JWKS) and a revocation list
//! (by token id and by sandbox).

use std::collections::{BTreeMap, HashSet};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use tappass_keys::{Jwks, SigningKeyPair};

/// What a token lets its holder do, narrowing the agent's policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Tool name patterns allowed (empty: the policy decides).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools_allow: Vec<String>,
    /// Tool name patterns denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools_deny: Vec<String>,
    /// Schema → allowed access (`read`, `write`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub schemas_acl: BTreeMap<String, Vec<String>>,
    /// Model name patterns (`*`, `?`) the token may call (empty: any
    /// configured model).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
}

/// `aud`: one audience or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, aud: &str) -> bool {
        match self {
            Audience::One(a) => a == aud,
            Audience::Many(v) => v.iter().any(|a| a == aud),
        }
    }
}

/// The claims of a capability token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: Audience,
    /// The agent.
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// `observer`, `worker`, `standard` or `full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default)]
    pub scope: Scope,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u64>,
    /// Seconds since the epoch.
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub exp: i64,
    pub jti: String,
}

/// Why a token was refused. Every refusal is a 401 with [`TokenError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token algorithm `{0}` is not accepted (EdDSA only)")]
    Algorithm(String),
    #[error("token signature: {0}")]
    Signature(String),
    #[error("token expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token lifetime exceeds the {max_seconds} s maximum")]
    LifetimeTooLong { max_seconds: i64 },
    #[error("token audience does not include `{0}`")]
    Audience(String),
    #[error("token issuer `{0}` is not trusted")]
    Issuer(String),
    #[error("token has been revoked")]
    Revoked,
    #[error("sandbox `{0}` has been revoked")]
    SandboxRevoked(String),
}

impl TokenError {
    /// Machine-readable error code for the caller.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) | TokenError::Algorithm(_) => "invalid_token",
            TokenError::Signature(_) => "invalid_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::LifetimeTooLong { .. } => "token_lifetime_too_long",
            TokenError::Audience(_) => "invalid_audience",
            TokenError::Issuer(_) => "invalid_issuer",
            TokenError::Revoked => "token_revoked",
            TokenError::SandboxRevoked(_) => "sandbox_revoked",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
}

/// Sign `claims` into a compact JWT.
pub fn mint(claims: &Claims, key: &SigningKeyPair) -> String {
    let header = Header {
        alg: "EdDSA".into(),
        typ: Some("JWT".into()),
        kid: Some(key.kid().to_string()),
    };
    // Serializing these plain structs cannot fail.
    let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap_or_default());
    let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signing_input = format!("{h}.{p}");
    let sig = key.sign(signing_input.as_bytes());
    format!("{signing_input}.{sig}")
}

/// Whether a bearer credential is shaped like a JWT (three base64url parts,
/// the first a JSON header); API keys are not.
pub fn looks_like_jwt(s: &str) -> bool {
    let mut parts = s.split('.');
    matches!((parts.next(), parts.next(), parts.next(), parts.next()), (Some(h), Some(_), Some(_), None) if h.starts_with("eyJ"))
}

/// Revoked token ids and sandboxes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocations {
    #[serde(default)]
    pub jti: HashSet<String>,
    #[serde(default)]
    pub sandboxes: HashSet<String>,
}

/// Offline verification of tokens.
#[derive(Debug, Clone)]
pub struct Verifier {
    pub jwks: Jwks,
    /// The audience this gateway accepts (`aud` must contain it).
    pub audience: String,
    /// When set, `iss` must equal it.
    pub issuer: Option<String>,
    /// Longest accepted `exp - iat`.
    pub max_ttl_seconds: i64,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_seconds: i64,
}

impl Verifier {
    /// Verify `token` at time `now` (seconds since the epoch), its sandbox
    /// included.
    pub fn verify(
        &self,
        token: &str,
        now: i64,
        revoked: &Revocations,
    ) -> Result<Claims, TokenError> {
        let claims = self.verify_credential(token, now, revoked)?;
        sandbox_active(&claims, revoked)?;
        Ok(claims)
    }

    /// Verify the token itself (signature, times, audience, issuer, its
    /// own revocation), not whether its sandbox is still active: callers
    /// that record the two checks apart pair this with [`sandbox_active`].
    pub fn verify_credential(
        &self,
        token: &str,
        now: i64,
        revoked: &Revocations,
    ) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed(
                "expected three dot-separated parts".into(),
            ));
        };
        let decode = |part: &str, what: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| TokenError::Malformed(format!("{what} is not base64url")))
        };
        let header: Header = serde_json::from_slice(&decode(h, "header")?)
            .map_err(|e| TokenError::Malformed(format!("header: {e}")))?;
        if header.alg != "EdDSA" && header.alg != "Ed25519" {
            return Err(TokenError::Algorithm(header.alg));
        }
        let kid = header
            .kid
            .ok_or_else(|| TokenError::Malformed("header has no `kid`".into()))?;
        let signing_input = &token[..h.len() + 1 + p.len()];
        self.jwks
            .verify(&kid, signing_input.as_bytes(), s)
            .map_err(TokenError::Signature)?;
        let claims: Claims = serde_json::from_slice(&decode(p, "payload")?)
            .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
        if now > claims.exp + self.leeway_seconds {
            return Err(TokenError::Expired);
        }
        let not_before = claims.nbf.unwrap_or(claims.iat);
        if now + self.leeway_seconds < not_before {
            return Err(TokenError::NotYetValid);
        }
        if claims.exp - claims.iat > self.max_ttl_seconds {
            return Err(TokenError::LifetimeTooLong {
                max_seconds: self.max_ttl_seconds,
            });
        }
        if !claims.aud.contains(&self.audience) {
            return Err(TokenError::Audience(self.audience.clone()));
        }
        if let Some(iss) = &self.issuer {
            if &claims.iss != iss {
                return Err(TokenError::Issuer(claims.iss));
            }
        }
        if revoked.jti.contains(&claims.jti) {
            return Err(TokenError::Revoked);
        }
        Ok(claims)
    }
}

/// Whether the sandbox the token names (if any) has not been revoked.
pub fn sandbox_active(claims: &Claims, revoked: &Revocations) -> Result<(), TokenError> {
    match &claims.sandbox {
        Some(sb) if revoked.sandboxes.contains(sb) => Err(TokenError::SandboxRevoked(sb.clone())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_763_700_000;

    fn claims() -> Claims {
        Claims {
            iss: "tappass-control".into(),
            aud: Audience::One("tappass-gateway".into()),
            sub: "refund-bot".into(),
            org: Some("acme".into()),
            project: Some("payments".into()),
            sandbox: Some("sb-1".into()),
            tier: Some("worker".into()),
            scope: Scope {
                models: vec!["gpt-*".into()],
                ..Scope::default()
            },
            policy_version: Some(7),
            iat: NOW,
            nbf: None,
            exp: NOW + 300,
            jti: "tok-1".into(),
        }
    }

    fn verifier(key: &SigningKeyPair) -> Verifier {
        Verifier {
            jwks: Jwks::from_key(key),
            audience: "tappass-gateway".into(),
            issuer: Some("tappass-control".into()),
            max_ttl_seconds: 900,
            leeway_seconds: 5,
        }
    }

    fn b64(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn a_fresh_token_verifies_and_round_trips() {
        let key = SigningKeyPair::generate();
        let t = mint(&claims(), &key);
        assert!(looks_like_jwt(&t));
        assert_eq!(
            verifier(&key)
                .verify(&t, NOW + 10, &Revocations::default())
                .unwrap(),
            claims()
        );
    }

    #[test]
    fn every_refusal_has_its_code() {
        let key = SigningKeyPair::generate();
        let v = verifier(&key);
        let none = Revocations::default();
        let code = |t: &str, now: i64, r: &Revocations| v.verify(t, now, r).unwrap_err().code();
        let t = mint(&claims(), &key);
        assert_eq!(code(&t, NOW + 400, &none), "token_expired");
        let mut c = claims();
        c.nbf = Some(NOW + 100);
        assert_eq!(code(&mint(&c, &key), NOW, &none), "token_not_yet_valid");
        let mut c = claims();
        c.aud = Audience::Many(vec!["other".into()]);
        assert_eq!(code(&mint(&c, &key), NOW, &none), "invalid_audience");
        let mut c = claims();
        c.iss = "someone-else".into();
        assert_eq!(code(&mint(&c, &key), NOW, &none), "invalid_issuer");
        let mut c = claims();
        c.exp = NOW + 86_400;
        assert_eq!(code(&mint(&c, &key), NOW, &none), "token_lifetime_too_long");
        let other = SigningKeyPair::generate();
        assert_eq!(
            code(&mint(&claims(), &other), NOW, &none),
            "invalid_signature"
        );
        let revoked = Revocations {
            jti: ["tok-1".to_string()].into(),
            ..Revocations::default()
        };
        assert_eq!(code(&t, NOW, &revoked), "token_revoked");
        let sandbox = Revocations {
            sandboxes: ["sb-1".to_string()].into(),
            ..Revocations::default()
        };
        assert_eq!(code(&t, NOW, &sandbox), "sandbox_revoked");
    }

    #[test]
    fn alg_none_and_tampering_are_refused() {
        let key = SigningKeyPair::generate();
        let v = verifier(&key);
        let none = Revocations::default();
        let payload = b64(&serde_json::to_value(claims()).unwrap());
        for alg in ["none", "HS256", "RS256", "ES256"] {
            let h = b64(&serde_json::json!({"alg": alg, "kid": key.kid()}));
            let t = format!("{h}.{payload}.");
            assert_eq!(
                v.verify(&t, NOW, &none).unwrap_err().code(),
                "invalid_token",
                "{alg}"
            );
        }
        // A changed payload under the original signature.
        let t = mint(&claims(), &key);
        let sig = t.rsplit('.').next().unwrap();
        let mut c = claims();
        c.sub = "admin".into();
        let forged = format!(
            "{}.{}.{sig}",
            t.split('.').next().unwrap(),
            b64(&serde_json::to_value(c).unwrap())
        );
        assert_eq!(
            v.verify(&forged, NOW, &none).unwrap_err().code(),
            "invalid_signature"
        );
        // `Ed25519` as alg name is accepted (RFC 9864).
        let h = b64(&serde_json::json!({"alg": "Ed25519", "kid": key.kid()}));
        let input = format!("{h}.{payload}");
        let t = format!("{input}.{}", key.sign(input.as_bytes()));
        assert!(v.verify(&t, NOW, &none).is_ok());
    }

    #[test]
    fn garbage_never_panics() {
        let key = SigningKeyPair::generate();
        let v = verifier(&key);
        for t in [
            "",
            ".",
            "..",
            "a.b.c",
            "eyJ.eyJ.x",
            "a.b.c.d",
            "\u{0}.\u{1}.\u{2}",
            "eyJhbGciOiJFZERTQSJ9.e30.e30",
        ] {
            let e = v.verify(t, NOW, &Revocations::default()).unwrap_err();
            assert!(
                matches!(e.code(), "invalid_token" | "invalid_signature"),
                "{t}: {e}"
            );
        }
        assert!(!looks_like_jwt("tp-local-dev-key"));
        assert!(!looks_like_jwt("sk-proj-abc.def"));
    }
}
