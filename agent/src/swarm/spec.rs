//! A service's spec read and sent back exactly as the engine holds it.
//!
//! bollard's `ServiceSpec` model is lossy for a round trip: it names the container spec's
//! healthcheck `HealthCheck` while the engine writes `Healthcheck`, so a spec read through it
//! and sent back silently drops the service's healthcheck (and any field the model does not
//! know). The spec is therefore read as raw JSON and sent back as raw JSON with only the
//! image changed. bollard has no call for a raw request: the read borrows a call that
//! returns the raw body (`export_image`, a GET) and a request modifier points it at the
//! service; the update goes through `update_service` with the body, the query and the auth
//! header replaced by the modifier.

use bollard::Docker;
use bollard::models::Service;
use bollard::query_parameters::{InspectServiceOptions, UpdateServiceOptionsBuilder};
use futures_util::StreamExt;
use serde_json::Value;
use tracing::info;

/// The image path `read` asks bollard for; the modifier swaps it for the service's path.
const BORROWED_PATH: &str = "/images/ouroboros-service-inspect/get";

/// A service as read: the engine's JSON, and the same parsed by bollard (for the fields the
/// agent reads).
pub struct Read {
    pub raw: Value,
    pub service: Service,
}

impl Read {
    /// `Version.Index`.
    pub fn version(&self) -> u64 {
        self.raw["Version"]["Index"].as_u64().unwrap_or_default()
    }

    /// The spec with `Spec.TaskTemplate.ContainerSpec.Image` set to `image`, every other field
    /// as read; `None` when the service runs no container (plugin or network-attachment task).
    pub fn spec_with_image(&self, image: &str) -> Option<Value> {
        let mut spec = self.raw.get("Spec")?.clone();
        let container = spec
            .get_mut("TaskTemplate")?
            .get_mut("ContainerSpec")?
            .as_object_mut()?;
        container.insert("Image".to_owned(), Value::String(image.to_owned()));
        Some(spec)
    }
}

/// Whether `service` can go into a URL path as it is (names and ids of services can).
fn path_safe(service: &str) -> bool {
    !service.is_empty()
        && service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Reads service `service` (id or name) as the engine holds it; `None` when there is none.
pub async fn read(docker: &Docker, service: &str) -> Result<Option<Read>, bollard::errors::Error> {
    if !path_safe(service) {
        return Ok(None);
    }
    let path = format!("/services/{service}");
    let client = docker.clone().with_request_modifier(move |mut request| {
        let uri = request.uri().to_string();
        if let Ok(rewritten) = uri.replacen(BORROWED_PATH, &path, 1).parse() {
            *request.uri_mut() = rewritten;
        }
        request
    });
    let mut body = Vec::new();
    let mut stream = client.export_image("ouroboros-service-inspect");
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => body.extend_from_slice(&bytes),
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    let raw: Value = serde_json::from_slice(&body)
        .map_err(|e| bollard::errors::Error::JsonSerdeError { err: e })?;
    let service: Service = serde_json::from_value(raw.clone())
        .map_err(|e| bollard::errors::Error::JsonSerdeError { err: e })?;
    Ok(Some(Read { raw, service }))
}

/// `POST /services/{id}/update` with `spec` (raw JSON) at `version`; `rollback`:
/// `rollback=previous`. The query is set by the modifier too: bollard's version parameter is
/// an `i32`, a swarm's index a `u64`. `auth_header`: `X-Registry-Auth` in URL-safe base64
/// (bollard's own is standard base64, which the engine does not decode).
pub async fn send(
    docker: &Docker,
    id: &str,
    spec: &Value,
    version: u64,
    rollback: bool,
    auth_header: Option<String>,
) -> Result<(), bollard::errors::Error> {
    let mut query = format!("version={version}&registryAuthFrom=spec");
    if rollback {
        query.push_str("&rollback=previous");
    }
    let body = bytes::Bytes::from(
        serde_json::to_vec(spec).map_err(|e| bollard::errors::Error::JsonSerdeError { err: e })?,
    );
    let client = docker.clone().with_request_modifier(move |mut request| {
        let uri = request.uri().to_string();
        let base = uri.split_once('?').map_or(uri.as_str(), |(b, _)| b);
        if let Ok(rewritten) = format!("{base}?{query}").parse() {
            *request.uri_mut() = rewritten;
        }
        if let Some(value) = auth_header.as_deref().and_then(|h| h.parse().ok()) {
            request.headers_mut().insert("X-Registry-Auth", value);
        }
        *request.body_mut() = bollard::body_full(body.clone());
        request
    });
    let options = UpdateServiceOptionsBuilder::new().version(0).build();
    let answer = client
        .update_service(id, bollard::models::ServiceSpec::default(), options, None)
        .await?;
    if let Some(warnings) = answer.warnings.filter(|w| !w.is_empty()) {
        info!(service = %id, ?warnings, "The engine warned about the service update.");
    }
    Ok(())
}

/// 404: no such service.
fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// A stale `version`: the service changed since it was read.
pub fn out_of_sequence(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError { status_code, message }
            if matches!(status_code, 409 | 500) && message.contains("update out of sequence")
    )
}

/// The service by id or name, as bollard parses it (for its status); `None` when there is
/// none.
pub async fn inspect(
    docker: &Docker,
    service: &str,
) -> Result<Option<Service>, bollard::errors::Error> {
    match docker
        .inspect_service(service, None::<InspectServiceOptions>)
        .await
    {
        Ok(s) => Ok(Some(s)),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_image_changes_in_the_spec_sent_back() {
        let raw = serde_json::json!({
            "ID": "abc",
            "Version": {"Index": 3_000_000_000_u64},
            "Spec": {
                "Name": "web",
                "TaskTemplate": {"ContainerSpec": {
                    "Image": "r/app:1@sha256:00",
                    "Healthcheck": {"Interval": 1_000_000_000},
                    "FutureField": [1, 2]
                }},
                "Mode": {"Replicated": {"Replicas": 2}}
            }
        });
        let read = Read {
            service: serde_json::from_value(raw.clone()).unwrap(),
            raw: raw.clone(),
        };
        assert_eq!(read.version(), 3_000_000_000);
        let spec = read.spec_with_image("r/app:1@sha256:11").unwrap();
        let mut expected = raw["Spec"].clone();
        expected["TaskTemplate"]["ContainerSpec"]["Image"] = "r/app:1@sha256:11".into();
        assert_eq!(spec, expected);
        let plugin = Read {
            service: Service::default(),
            raw: serde_json::json!({"Spec": {"TaskTemplate": {"PluginSpec": {}}}}),
        };
        assert_eq!(plugin.spec_with_image("x"), None);
    }

    #[test]
    fn only_a_stale_version_is_retried() {
        let stale = bollard::errors::Error::DockerResponseServerError {
            status_code: 500,
            message: "rpc error: code = Unknown desc = update out of sequence".into(),
        };
        assert!(out_of_sequence(&stale));
        let other = bollard::errors::Error::DockerResponseServerError {
            status_code: 400,
            message: "invalid mount config".into(),
        };
        assert!(!out_of_sequence(&other));
    }

    #[test]
    fn only_plain_service_names_go_into_a_path() {
        assert!(path_safe("web_1.prod-2"));
        assert!(!path_safe("../containers/x"));
        assert!(!path_safe("a b"));
        assert!(!path_safe(""));
    }
}
