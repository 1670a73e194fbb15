//! Client authentication with gateway API keys (stored as SHA-256 hashes).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ApiKeyConfig;
use crate::error::GatewayError;

/// The accepted gateway API keys.
#[derive(Debug, Default)]
pub struct ApiKeys {
    keys: Vec<([u8; 32], String)>,
}

/// Who a verified caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's configured name.
    pub key_name: String,
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
                    Some((h, k.name.clone()))
                })
                .collect(),
        }
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
        for (h, name) in &self.keys {
            if bool::from(h.ct_eq(&digest)) {
                found = Some(name);
            }
        }
        match found {
            Some(name) => Ok(Caller {
                key_name: name.clone(),
            }),
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
            k.verify(Some(b"Bearer tp-secret"), None).unwrap().key_name,
            "team-a"
        );
        assert_eq!(
            k.verify(Some(b"bearer  tp-secret "), None)
                .unwrap()
                .key_name,
            "team-a"
        );
        assert_eq!(
            k.verify(None, Some(b"tp-secret")).unwrap().key_name,
            "team-a"
        );
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
