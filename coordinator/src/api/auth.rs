//! Who may use the admin API, REST and gRPC alike: bearer tokens with a role, read from a TOML
//! file (`--api-tokens`). Reading needs `viewer`, commands to agents (restart) need `operator`, and
//! anything that changes what agents run or hold (configs, certificates) needs `admin`. Every
//! mutation is logged with its caller on the `flotilla::audit` target, and handlers get the
//! [`Caller`] to record it with what they change.
//!
//! ```toml
//! [[token]]
//! name = "ci-deployer"
//! role = "admin"
//! sha256 = "<hex of SHA-256 of the token>"   # or: token = "<the token itself>"
//! ```

use crate::metrics::ApiMetrics;
use crate::ops::{Caller, Ops, Role, audit};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tracing::{Instrument, info, warn};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    token: Option<String>,
    sha256: Option<String>,
}

/// The API's tokens, by the SHA-256 of the token.
#[derive(Debug, Default)]
pub struct ApiTokens(HashMap<[u8; 32], Caller>);

impl ApiTokens {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read API tokens {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("API tokens {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let file: TokenFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut map = HashMap::new();
        for e in file.token {
            let digest: [u8; 32] = match (&e.token, &e.sha256) {
                (Some(t), None) if !t.is_empty() => Sha256::digest(t.as_bytes()).into(),
                (None, Some(h)) => {
                    let mut digest = [0u8; 32];
                    hex::decode_to_slice(h.trim(), &mut digest)
                        .map_err(|_| format!("token {:?}: sha256 must be 64 hex digits", e.name))?;
                    digest
                }
                _ => {
                    return Err(format!(
                        "token {:?} needs exactly one of `token` or `sha256`",
                        e.name
                    ));
                }
            };
            let caller = Caller {
                name: e.name,
                role: e.role,
            };
            if map.insert(digest, caller).is_some() {
                return Err("the same token is listed twice".into());
            }
        }
        if map.is_empty() {
            return Err("no [[token]] entries".into());
        }
        Ok(Self(map))
    }

    fn caller(&self, authorization: Option<&HeaderValue>) -> Option<&Caller> {
        let value = authorization?.to_str().ok()?.trim();
        let (scheme, token) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        self.caller_of_token(token)
    }

    /// Whose token `token` is, if it is one.
    pub fn caller_of_token(&self, token: &str) -> Option<&Caller> {
        self.0
            .get(&<[u8; 32]>::from(Sha256::digest(token.trim().as_bytes())))
    }
}

/// The role a request needs: reads are for viewers; agent commands (restart, custom messages),
/// labels and holding or aborting a rollout for operators; the rest (configs, starting rollouts,
/// certificates, anything new) for admins. gRPC calls are all POSTs, so their role follows the RPC's name.
pub fn required_role(method: &Method, path: &str) -> Role {
    if let Some(rpc) = grpc_method(path) {
        return grpc_role(rpc);
    }
    if method == Method::DELETE && path.starts_with("/api/v1/agents/") {
        return Role::Operator;
    }
    let operator = path.ends_with("/restart")
        || path.ends_with("/custom-messages")
        || path == "/api/v1/restarts"
        || path.ends_with("/labels")
        || (path.starts_with("/api/v1/rollouts/")
            && ["/pause", "/resume", "/abort"]
                .iter()
                .any(|a| path.ends_with(a)));
    if method == Method::GET || method == Method::HEAD {
        Role::Viewer
    } else if method == Method::POST && operator {
        Role::Operator
    } else {
        Role::Admin
    }
}

/// The RPC name of a call to the admin gRPC service (`/flotilla.admin.v1.Admin/<Rpc>`).
fn grpc_method(path: &str) -> Option<&str> {
    path.strip_prefix('/')?
        .strip_prefix(super::grpc::SERVICE_NAME)?
        .strip_prefix('/')
}

/// The same split as the REST routes': reads, then the operator's commands.
fn grpc_role(rpc: &str) -> Role {
    if ["Get", "List", "Query"].iter().any(|p| rpc.starts_with(p)) {
        Role::Viewer
    } else if matches!(
        rpc,
        "RestartAgent"
            | "SendCustomMessage"
            | "DeleteAgent"
            | "RestartMatching"
            | "SetLabels"
            | "ControlRollout"
    ) {
        Role::Operator
    } else {
        Role::Admin
    }
}

/// A refusal in the caller's protocol: JSON for REST; for gRPC a status a client can read
/// (a bare HTTP 401 with a JSON body would reach it as a protocol error).
fn refuse(req: &Request, status: StatusCode, message: String) -> Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        let code = match status {
            StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
            _ => tonic::Code::PermissionDenied,
        };
        return tonic::Status::new(code, message).into_http();
    }
    let mut r = (status, axum::Json(json!({"error": message}))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"flotilla\""),
        );
    }
    r
}

/// What the auth middleware needs: the tokens (none: an open API), the operations whose audit log
/// records refusals, and the API's metrics.
#[derive(Clone)]
pub struct Gate {
    tokens: Option<Arc<ApiTokens>>,
    ops: Ops,
    metrics: ApiMetrics,
}

/// Middleware over the API routes (REST and gRPC): authenticates (when tokens are configured),
/// checks the role, hands the [`Caller`] to the handler, and logs every mutation with its caller
/// and outcome. A mutation runs to its end in its own task, so a client that hangs up cannot cut
/// a change off between its parts. Refusals (401, 403) are counted, logged (at a bounded rate)
/// and written to the audit log (at a bounded rate).
pub async fn authorize(State(gate): State<Gate>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let caller = match &gate.tokens {
        None => Caller::anonymous(),
        Some(tokens) => match tokens.caller(req.headers().get(header::AUTHORIZATION)) {
            Some(c) => c.clone(),
            None => {
                let why = "a valid API token is required (Authorization: Bearer <token>)";
                gate.refused("unauthenticated", "(no valid token)", &method, &path, why)
                    .await;
                return refuse(&req, StatusCode::UNAUTHORIZED, why.into());
            }
        },
    };
    tracing::Span::current().record("caller", caller.name.as_str());
    let needed = required_role(&method, &path);
    if caller.role < needed {
        let why = format!(
            "{method} {path} needs the {} role; token {:?} has {}",
            needed.as_str(),
            caller.name,
            caller.role.as_str()
        );
        gate.refused("forbidden", &caller.name, &method, &path, &why)
            .await;
        return refuse(&req, StatusCode::FORBIDDEN, why);
    }
    let mutation = needed > Role::Viewer;
    let name = caller.name.clone();
    req.extensions_mut().insert(caller);
    if !mutation {
        return next.run(req).await;
    }
    let response = match tokio::spawn(next.run(req).in_current_span()).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, %method, %path, "an admin operation failed unexpectedly");
            let msg = "the operation failed unexpectedly; see the server log";
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"error": msg})),
            )
                .into_response()
        }
    };
    // A failed gRPC call is answered trailers-only, so its code is in the headers; a successful
    // one has none here (its OK comes in the trailers).
    let grpc_status = grpc_method(&path).map(|_| {
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0")
            .to_owned()
    });
    info!(
        target: "flotilla::audit",
        caller = %name,
        %method,
        %path,
        status = response.status().as_u16(),
        grpc_status,
        "admin API mutation"
    );
    response
}

impl Gate {
    pub fn new(tokens: Option<Arc<ApiTokens>>, ops: Ops, metrics: ApiMetrics) -> Self {
        Self {
            tokens,
            ops,
            metrics,
        }
    }

    /// Counts, logs and audits a refused call (the log and the audit log at a bounded rate).
    async fn refused(
        &self,
        reason: &'static str,
        caller: &str,
        method: &Method,
        path: &str,
        why: &str,
    ) {
        let m = &self.metrics;
        m.refused.get_or_create(&vec![("reason", reason)]).inc();
        m.refusal_log.warn(|suppressed| {
            warn!(target: "flotilla::audit", reason, caller, %method, path, suppressed, "admin API call refused");
        });
        if m.refusal_audit.check().is_ok() {
            let entry = audit::entry(
                caller,
                &format!("api.{reason}"),
                format!("api{path}"),
                None,
                Some(json!({"method": method.as_str(), "why": why})),
            );
            self.ops.record(entry).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_file_is_parsed_and_checked() {
        let t = ApiTokens::parse(
            r#"
            [[token]]
            name = "ann"
            role = "admin"
            token = "a-secret"
            [[token]]
            name = "vic"
            role = "viewer"
            sha256 = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
            "#,
        )
        .unwrap();
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(t.caller(Some(&h("Bearer a-secret"))).unwrap().name, "ann");
        // sha256("secret")
        assert_eq!(
            t.caller(Some(&h("bearer secret"))).unwrap().role,
            Role::Viewer
        );
        assert!(t.caller(Some(&h("Bearer nope"))).is_none());
        assert!(t.caller(None).is_none());

        for bad in [
            "",
            "[[token]]\nname = \"x\"\nrole = \"root\"\ntoken = \"t\"",
            "[[token]]\nname = \"x\"\nrole = \"admin\"",
            "[[token]]\nname = \"x\"\nrole = \"admin\"\nsha256 = \"zz\"",
            "[[token]]\nname = \"x\"\nrole = \"admin\"\ntoken = \"t\"\n[[token]]\nname = \"y\"\nrole = \"viewer\"\ntoken = \"t\"",
        ] {
            assert!(ApiTokens::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn roles_follow_what_a_request_changes() {
        assert_eq!(required_role(&Method::GET, "/api/v1/agents"), Role::Viewer);
        assert_eq!(
            required_role(&Method::POST, "/api/v1/agents/x/restart"),
            Role::Operator
        );
        assert_eq!(
            required_role(&Method::PUT, "/api/v1/configs/c"),
            Role::Admin
        );
        assert_eq!(
            required_role(&Method::DELETE, "/api/v1/agents/x"),
            Role::Operator
        );
        for operator in [
            "/api/v1/restarts",
            "/api/v1/agents/x/labels",
            "/api/v1/agents/x/custom-messages",
            "/api/v1/rollouts/r/pause",
            "/api/v1/rollouts/r/abort",
        ] {
            assert_eq!(required_role(&Method::POST, operator), Role::Operator);
        }
        assert_eq!(
            required_role(&Method::POST, "/api/v1/rollouts"),
            Role::Admin
        );
        assert_eq!(
            required_role(&Method::POST, "/api/v1/configs/c/rollback"),
            Role::Admin
        );
        assert_eq!(
            required_role(&Method::POST, "/api/v1/agents/x/certificate"),
            Role::Admin
        );
    }

    #[test]
    fn grpc_roles_follow_the_rpc_as_rest_roles_follow_the_route() {
        let role =
            |rpc: &str| required_role(&Method::POST, &format!("/flotilla.admin.v1.Admin/{rpc}"));
        for viewer in [
            "GetFleetHealth",
            "ListAgents",
            "GetAgent",
            "GetLabels",
            "ListConfigs",
            "GetConfig",
            "GetConfigVersions",
            "GetConfigDiff",
            "GetRollout",
            "ListRollouts",
            "GetRestartJob",
            "QueryAudit",
        ] {
            assert_eq!(role(viewer), Role::Viewer, "{viewer}");
        }
        for operator in [
            "RestartAgent",
            "SendCustomMessage",
            "DeleteAgent",
            "RestartMatching",
            "SetLabels",
            "ControlRollout",
        ] {
            assert_eq!(role(operator), Role::Operator, "{operator}");
        }
        for admin in [
            "PutConfig",
            "RollbackConfig",
            "StartRollout",
            "IssueCertificate",
            "SomethingNew",
        ] {
            assert_eq!(role(admin), Role::Admin, "{admin}");
        }
        // Another service's "Get" is not a read of ours.
        assert_eq!(
            required_role(&Method::POST, "/other.v1.Admin/GetAgent"),
            Role::Admin
        );
        assert_eq!(
            required_role(&Method::POST, "/flotilla.admin.v1.AdminX/GetAgent"),
            Role::Admin
        );
    }
}
