//! The `Admin` API served to the operator's CLI certificate.

use std::sync::Arc;

use ouroboros_proto::v1 as pb;
use ouroboros_shared::host::HostName;
use tonic::{Request, Response, Status};

use crate::fleet::Fleet;

/// The `Admin` service.
pub struct AdminApi {
    fleet: Arc<Fleet>,
}

impl AdminApi {
    pub fn new(fleet: Arc<Fleet>) -> Self {
        Self { fleet }
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminApi {
    async fn list_hosts(
        &self,
        _request: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        let hosts = self
            .fleet
            .hosts()
            .into_iter()
            .map(|h| pb::HostStatus {
                host: h.record.host,
                connected: h.connected,
                last_seen_unix_ms: h.record.last_seen_unix_ms,
                agent_version: h.record.agent_version,
                engine: Some(h.record.engine.into()),
                mode: pb::HostMode::from(h.record.mode).into(),
                container_count: u32::try_from(h.record.containers.len()).unwrap_or(u32::MAX),
                connected_since_unix_ms: h.connected_since_unix_ms,
            })
            .collect();
        Ok(Response::new(pb::ListHostsResponse { hosts }))
    }

    async fn list_containers(
        &self,
        request: Request<pb::ListContainersRequest>,
    ) -> Result<Response<pb::ListContainersResponse>, Status> {
        let wanted = &request.get_ref().host;
        let host = if wanted.is_empty() {
            None
        } else {
            Some(HostName::parse(wanted).map_err(|e| Status::invalid_argument(e.to_string()))?)
        };
        let containers = self
            .fleet
            .containers(host.as_ref())
            .ok_or_else(|| Status::not_found(format!("no such host: {wanted}")))?
            .into_iter()
            .map(|(host, c)| pb::HostContainer {
                host,
                container: Some(c.into()),
            })
            .collect();
        Ok(Response::new(pb::ListContainersResponse { containers }))
    }
}
