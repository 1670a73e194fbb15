//! TapPass resource types, their type URLs, and `Any` packing.

use prost::{Message, Name};
use prost_types::Any;

use crate::error::XdsError;
use crate::pb::tappass::v1 as tp;
use crate::pb::tappass::v1::SignedSnapshot;

/// Prefix of every type URL carried in `google.protobuf.Any`.
pub const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

/// `type.googleapis.com/tappass.v1.PolicySnapshot`
pub const POLICY_SNAPSHOT: &str = "type.googleapis.com/tappass.v1.PolicySnapshot";
/// `type.googleapis.com/tappass.v1.TrustBundle`
pub const TRUST_BUNDLE: &str = "type.googleapis.com/tappass.v1.TrustBundle";
/// `type.googleapis.com/tappass.v1.Revocations`
pub const REVOCATIONS: &str = "type.googleapis.com/tappass.v1.Revocations";
/// `type.googleapis.com/tappass.v1.ApiKeyHashes`
pub const API_KEY_HASHES: &str = "type.googleapis.com/tappass.v1.ApiKeyHashes";
/// `type.googleapis.com/tappass.v1.ProviderRoutes`
pub const PROVIDER_ROUTES: &str = "type.googleapis.com/tappass.v1.ProviderRoutes";
/// `type.googleapis.com/tappass.v1.BudgetState`
pub const BUDGET_STATE: &str = "type.googleapis.com/tappass.v1.BudgetState";

/// Every TapPass resource type URL.
pub const ALL_TYPE_URLS: [&str; 6] = [
    POLICY_SNAPSHOT,
    TRUST_BUNDLE,
    REVOCATIONS,
    API_KEY_HASHES,
    PROVIDER_ROUTES,
    BUDGET_STATE,
];

/// Payload type of a policy snapshot: the signed Compiled Policy document
/// (JSON), carried as is.
pub const SIGNED_POLICY_JSON: &str = "application/vnd.tappass.signed-policy+json";

/// A TapPass xDS resource: a name and a signed snapshot.
pub trait SignedResource: Message + Name + Default + Clone {
    /// Payload type expected in the snapshot of this resource.
    fn payload_type() -> String;
    /// Builds the resource.
    fn from_parts(name: String, snapshot: SignedSnapshot) -> Self;
    /// The resource name.
    fn name(&self) -> &str;
    /// The signed snapshot, if present.
    fn snapshot(&self) -> Option<&SignedSnapshot>;
}

macro_rules! signed_resource {
    ($ty:ident, $payload:expr) => {
        impl SignedResource for tp::$ty {
            fn payload_type() -> String {
                $payload
            }
            fn from_parts(name: String, snapshot: SignedSnapshot) -> Self {
                tp::$ty {
                    name,
                    snapshot: Some(snapshot),
                }
            }
            fn name(&self) -> &str {
                &self.name
            }
            fn snapshot(&self) -> Option<&SignedSnapshot> {
                self.snapshot.as_ref()
            }
        }
    };
}

signed_resource!(PolicySnapshot, SIGNED_POLICY_JSON.to_string());
signed_resource!(TrustBundle, tp::TrustBundlePayload::type_url());
signed_resource!(Revocations, tp::RevocationsPayload::type_url());
signed_resource!(ApiKeyHashes, tp::ApiKeyHashesPayload::type_url());
signed_resource!(ProviderRoutes, tp::ProviderRoutesPayload::type_url());
signed_resource!(BudgetState, tp::BudgetStatePayload::type_url());

/// Packs a message into an `Any` with its `type.googleapis.com/...` URL.
pub fn pack<M: Message + Name>(msg: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}

/// Unpacks an `Any`, checking its type URL first.
pub fn unpack<M: Message + Name + Default>(any: &Any) -> Result<M, XdsError> {
    let expected = M::type_url();
    if any.type_url != expected {
        return Err(XdsError::TypeUrl {
            expected,
            got: any.type_url.clone(),
        });
    }
    M::decode(any.value.as_slice()).map_err(|source| XdsError::Decode {
        type_url: any.type_url.clone(),
        source,
    })
}

/// Field 1 of a message, read as a string: the name of every TapPass
/// resource (and of most Envoy resources). Unknown fields are skipped.
#[derive(Clone, PartialEq, Message)]
struct NameOnly {
    #[prost(string, tag = "1")]
    name: String,
}

/// The resource name held in field 1 of the packed message, if it decodes.
/// Never panics on malformed input.
pub fn resource_name(any: &Any) -> Option<String> {
    NameOnly::decode(any.value.as_slice()).ok().map(|n| n.name)
}
