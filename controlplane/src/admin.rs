//! The admin API (HTTP/JSON). Everything under `/v1/` needs
//! `Authorization: Bearer <admin token>` except `POST /v1/tokens/verify`
//! and `GET /v1/audit/jwks` (public keys); `GET /.well-known/jwks.json` and
//! `GET /healthz` are public.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use tappass_xds::{Nack, NodeStatus};

use crate::error::ControlError;
use crate::plane::ControlPlane;
use crate::records::*;

/// Largest admin request body.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = %self, "admin request failed");
        }
        error_response(status, self.code(), &self.to_string())
    }
}

type ApiResult = Result<Response, ControlError>;

fn ok<T: Serialize>(v: T) -> ApiResult {
    Ok(Json(v).into_response())
}

fn created<T: Serialize>(v: T) -> ApiResult {
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ControlError> {
    serde_json::from_slice(body).map_err(|e| ControlError::BadRequest(format!("request body: {e}")))
}

/// Runs a blocking control-plane operation off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ControlError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ControlError::Server(format!("task failed: {e}")))?
}

async fn require_admin(State(cp): State<ControlPlane>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented {
        None => error_response(
            StatusCode::UNAUTHORIZED,
            "admin_token_required",
            "this endpoint needs `Authorization: Bearer <admin token>`",
        ),
        Some(t) if cp.check_admin_token(t) => next.run(req).await,
        Some(_) => error_response(
            StatusCode::UNAUTHORIZED,
            "invalid_admin_token",
            "the credential is not the admin token (agent tokens and gateway API keys are never accepted here)",
        ),
    }
}

/// The admin router.
pub fn router(cp: ControlPlane) -> Router {
    let admin = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/agents", get(list_agents).post(create_agent))
        .route("/v1/agents/{name}", get(get_agent))
        .route("/v1/agents/{name}/policy", get(agent_policy))
        .route("/v1/agents/{name}/preview", get(agent_preview))
        .route("/v1/agents/{name}/keys", post(create_key))
        .route("/v1/policy/sources", get(list_sources).put(apply_sources))
        .route("/v1/policy/packs", get(list_packs).put(apply_pack))
        .route("/v1/keys", get(list_keys))
        .route("/v1/keys/{key_id}", axum::routing::delete(delete_key))
        .route("/v1/tokens", post(mint_token))
        .route("/v1/revocations", get(list_revocations))
        .route("/v1/revocations/tokens", post(revoke_token))
        .route("/v1/revocations/sandboxes", post(revoke_sandbox))
        .route("/v1/token-keys", get(token_keys))
        .route("/v1/token-keys/rotate", post(rotate_keys))
        .route("/v1/snapshot-key", get(snapshot_key))
        .route("/v1/credentials", get(list_credentials))
        .route("/v1/budgets", get(budgets))
        .route("/v1/gateways", get(list_gateways))
        .route("/v1/gateways/{id}", get(get_gateway))
        .route("/v1/gateways/{id}/audit-key/rotate", post(rotate_audit_key))
        .route("/v1/gateways/{id}/reenroll", post(reenroll_gateway))
        .route(
            "/v1/credentials/{name}",
            put(put_credential).delete(delete_credential),
        )
        .route_layer(middleware::from_fn_with_state(cp.clone(), require_admin));
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/v1/tokens/verify", post(verify_token))
        .route("/v1/audit/jwks", get(audit_jwks))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(admin)
        .fallback(|| async {
            error_response(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(cp)
}

async fn jwks(State(cp): State<ControlPlane>) -> Response {
    ([(header::CACHE_CONTROL, "max-age=60")], Json(cp.jwks())).into_response()
}

async fn verify_token(State(cp): State<ControlPlane>, body: Bytes) -> ApiResult {
    let req: VerifyRequest = parse(&body)?;
    ok(blocking(move || Ok(cp.verify_token(&req.token))).await?)
}

async fn status(State(cp): State<ControlPlane>) -> ApiResult {
    ok(blocking(move || cp.status()).await?)
}

async fn list_agents(State(cp): State<ControlPlane>) -> ApiResult {
    ok(blocking(move || cp.agents()).await?)
}

async fn create_agent(State(cp): State<ControlPlane>, body: Bytes) -> ApiResult {
    let req: CreateAgent = parse(&body)?;
    created(blocking(move || cp.create_agent(&req)).await?)
}

async fn get_agent(State(cp): State<ControlPlane>, Path(name): Path<String>) -> ApiResult {
    let (agent, policy) = blocking(move || {
        let a = cp.agent(&name)?;
        let p = cp.agent_policy(&name).ok();
        Ok((a, p))
    })
    .await?;
    ok(json!({
        "agent": agent,
        "policy_version": policy.as_ref().map(|p| p.policy_version),
        "content_hash": policy.as_ref().map(|p| p.content_hash.clone()),
    }))
}

async fn agent_policy(State(cp): State<ControlPlane>, Path(name): Path<String>) -> ApiResult {
    let p = blocking(move || cp.agent_policy(&name)).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], p.signed_json).into_response())
}

async fn agent_preview(State(cp): State<ControlPlane>, Path(name): Path<String>) -> ApiResult {
    let text = blocking(move || cp.preview(&name)).await?;
    ok(json!({ "preview": text }))
}

async fn create_key(State(cp): State<ControlPlane>, Path(name): Path<String>) -> ApiResult {
    created(blocking(move || cp.create_api_key(&name)).await?)
}

async fn list_keys(State(cp): State<ControlPlane>) -> ApiResult {
    let keys = blocking(move || cp.api_keys()).await?;
    ok(keys
        .into_iter()
        .map(|k| json!({"key_id": k.key_id, "agent": k.agent, "project": k.project, "created_at": k.created_at}))
        .collect::<Vec<_>>())
}

async fn delete_key(State(cp): State<ControlPlane>, Path(key_id): Path<String>) -> ApiResult {
    blocking(move || cp.delete_api_key(&key_id)).await?;
    ok(json!({ "deleted": true }))
}

async fn list_sources(State(cp): State<ControlPlane>) -> ApiResult {
    ok(blocking(move || cp.sources()).await?)
}

async fn apply_sources(State(cp): State<ControlPlane>, body: Bytes) -> ApiResult {
    let req: ApplySources = parse(&body)?;
    ok(blocking(move || cp.apply_sources(&req)).await?)
}

async fn list_packs(State(cp): State<ControlPlane>) -> ApiResult {
    ok(blocking(move || cp.packs()).await?)
}

async fn apply_pack(State(cp): State<ControlPlane>, body: Bytes) -> ApiResult {
    let req: ApplyPack = parse(&body)?;
    ok(blocking(move || cp.apply_pack(&req)).await?)
}

async fn mint_token(State(cp): State<ControlPlane>, body: Bytes) -> ApiResult {
    let req: MintRequest = parse(&body)?;
    created(blocking(move || cp.mint_token(&req)).await?)
}

async fn list_revocations(State(cp): State<ControlPlane>) -> ApiResult {
    let (tokens, sandboxes) = blocking(move || cp.revocations(crate::plane::now_secs())).await?;
    ok(json!({ "tokens": tokens, "sandboxes": sandboxes }))
}

async fn revoke_token(State(cp): State<ControlPlane>, body: Bytes) -> ApiResult {
    let req: RevokeToken = parse(&body)?;
    created(blocking(move || cp.revoke_token(&req.jti)).await?)
}

async fn revoke_sandbox(State(cp): State<ControlPlane>, body: Bytes) -> ApiResult {
    let req: RevokeSandbox = parse(&body)?;
    created(blocking(move || cp.revoke_sandbox(&req.sandbox)).await?)
}

async fn token_keys(State(cp): State<ControlPlane>) -> ApiResult {
    ok(cp.token_keys())
}

async fn rotate_keys(State(cp): State<ControlPlane>) -> ApiResult {
    ok(blocking(move || cp.rotate_token_keys()).await?)
}

async fn audit_jwks(State(cp): State<ControlPlane>) -> ApiResult {
    let v = blocking(move || cp.audit_jwks()).await?;
    Ok(([(header::CACHE_CONTROL, "no-cache")], Json(v)).into_response())
}

async fn budgets(State(cp): State<ControlPlane>) -> ApiResult {
    ok(cp.inner.leases.report())
}

async fn list_gateways(State(cp): State<ControlPlane>) -> ApiResult {
    ok(blocking(move || cp.gateways()).await?)
}

async fn get_gateway(State(cp): State<ControlPlane>, Path(id): Path<String>) -> ApiResult {
    ok(blocking(move || cp.gateway(&id)).await?)
}

async fn rotate_audit_key(State(cp): State<ControlPlane>, Path(id): Path<String>) -> ApiResult {
    ok(blocking(move || cp.rotate_audit_key(&id)).await?)
}

async fn reenroll_gateway(State(cp): State<ControlPlane>, Path(id): Path<String>) -> ApiResult {
    ok(blocking(move || cp.reenroll_gateway(&id)).await?)
}

async fn snapshot_key(State(cp): State<ControlPlane>) -> ApiResult {
    let k = cp.snapshot_public_key().clone();
    ok(json!({
        "alg": k.alg,
        "key_id": k.key_id,
        "public_key": k.public_key,
        "public_key_hex": hex::encode(cp.snapshot_verifying_key().as_bytes()),
    }))
}

async fn list_credentials(State(cp): State<ControlPlane>) -> ApiResult {
    ok(blocking(move || cp.credentials()).await?)
}

async fn put_credential(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let req: PutCredential = parse(&body)?;
    ok(blocking(move || cp.put_credential(&name, &req.value)).await?)
}

async fn delete_credential(State(cp): State<ControlPlane>, Path(name): Path<String>) -> ApiResult {
    blocking(move || cp.delete_credential(&name)).await?;
    ok(json!({ "deleted": true }))
}

fn epoch(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn nack_info(n: &Nack) -> NackInfo {
    NackInfo {
        type_url: n.type_url.clone(),
        rejected_version: n.rejected_version.clone(),
        kept_version: n.kept_version.clone(),
        message: n.message.clone(),
        at: epoch(n.at),
    }
}

/// A node's status as the admin API shows it.
pub fn gateway_status(n: NodeStatus) -> GatewayStatus {
    GatewayStatus {
        connected: n.connected(),
        node_id: n.node_id,
        cluster: n.cluster,
        streams: n.streams,
        connected_since: n.connected_since.map(epoch),
        last_seen: epoch(n.last_seen),
        types: n
            .types
            .iter()
            .map(|(t, s)| {
                (
                    t.clone(),
                    TypeInfo {
                        sent_version: s.sent_version.clone(),
                        acked_version: s.acked_version.clone(),
                        acked_at: s.acked_at.map(epoch),
                        last_nack: s.last_nack.as_ref().map(nack_info),
                    },
                )
            })
            .collect(),
        last_nack: n.last_nack.as_ref().map(nack_info),
    }
}
