//! The gRPC handlers of `v2.KeyManagementService`: each call is counted, timed and, when
//! refused, logged with identifiers only.

use std::time::Instant;

use kms_core::SecretBytes;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use super::HEALTHZ_OK;
use super::plugin::Plugin;
use crate::error::PluginError;
use crate::pb;

fn finish<T>(
    plugin: &Plugin,
    method: &'static str,
    uid: &str,
    started: Instant,
    result: Result<T, PluginError>,
) -> Result<Response<T>, Status> {
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(e) => e.code(),
    };
    plugin
        .metrics()
        .observe(method, code, started.elapsed().as_secs_f64());
    match result {
        Ok(v) => {
            tracing::debug!(method, uid, "ok");
            Ok(Response::new(v))
        }
        Err(e) => {
            // Only identifiers, sizes and names reach the log: PluginError never holds bytes.
            tracing::warn!(method, uid, code = ?code, error = %e, "request refused");
            Err(e.into())
        }
    }
}

#[tonic::async_trait]
impl pb::key_management_service_server::KeyManagementService for Plugin {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let started = Instant::now();
        // From memory: the keys and health of the last reload, and a self-test round trip.
        let response = self.status();
        if response.healthz != HEALTHZ_OK {
            tracing::warn!(healthz = %response.healthz, key_id = %response.key_id, "unhealthy");
        }
        finish(self, "Status", "", started, Ok(response))
    }

    async fn encrypt(
        &self,
        request: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let plaintext = SecretBytes::new(req.plaintext);
        let result = Plugin::encrypt(self, plaintext.expose());
        if let Ok(r) = &result {
            tracing::info!(uid = %req.uid, key_id = %r.key_id, "encrypted a DEK seed");
            let plugin = self.clone();
            let key_id = r.key_id.clone();
            // The record is an fsync'd file write under the folder lock: off the async
            // threads.
            let _ = tokio::task::spawn_blocking(move || {
                plugin.note_seeded(&key_id, OffsetDateTime::now_utc());
            })
            .await;
        }
        finish(self, "Encrypt", &req.uid, started, result)
    }

    async fn decrypt(
        &self,
        request: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        // The plaintext leaves in the response; prost needs a Vec, so the copy there is
        // outside our control, but ours is wiped.
        let result = Plugin::decrypt(self, &req).map(|p| pb::DecryptResponse {
            plaintext: p.expose().to_vec(),
        });
        finish(self, "Decrypt", &req.uid, started, result)
    }
}
