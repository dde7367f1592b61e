//! A KMS v2 client over a Unix socket, as kube-apiserver connects.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::pb::key_management_service_client::KeyManagementServiceClient;

/// A connected client.
pub type Client = KeyManagementServiceClient<Channel>;

/// Connects to the plugin at `socket`.
///
/// # Errors
/// When the socket cannot be reached.
pub async fn connect(socket: &Path) -> Result<Client, tonic::transport::Error> {
    Ok(KeyManagementServiceClient::new(channel(socket).await?))
}

/// A channel to a Unix socket (the URI is a placeholder; the connector dials the path).
///
/// # Errors
/// When the socket cannot be reached.
pub async fn channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = socket.to_path_buf();
    Endpoint::from_static("http://kms.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}
