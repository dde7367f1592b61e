//! The operator's two Kubernetes clients, both with a read timeout.
//!
//! kube-client sets no read timeout by default (`Config::read_timeout` is `None`), so a
//! call whose answer never comes (a hung API server, a partition that drops packets
//! without a reset) waits forever. One timeout cannot serve both kinds of request:
//!
//! - **Calls** (get, list, create, replace, patch, delete: reconcilers, Events, the leader
//!   Lease) get a short read timeout that counts from when the request was written
//!   (`reset_reader_on_write`), not from when its pooled connection went idle.
//! - **Watches** stay open and quiet for as long as nothing changes: the read timeout is
//!   applied to every read of the connection, so a short one would break a quiet watch
//!   (and restart it, with a back-off) each time. kube-runtime's watcher already ends a
//!   watch that has been silent for its server-side timeout plus 5 s (295 s by default)
//!   and starts a new one (kube-rs pull request 1945 moved the timeout of watches there and
//!   made `read_timeout` default to `None`); the watch client's read timeout is longer than
//!   that, so it never fires on a healthy quiet watch, and still bounds the watcher's list
//!   calls. The e2e test `a_quiet_watch_outlasts_the_call_read_timeout` shows both sides.
//!
//! The leader Lease is not left to the read timeout alone: every renewal is also bounded
//! by the renew deadline (see [`crate::leader`]).

use std::time::Duration;

use kube::{Client, Config};

/// The read timeout of the watch client: longer than kube-runtime's watch idle timeout
/// (290 s server-side timeout + 5 s), so a quiet watch is never cut by it.
pub const WATCH_READ_TIMEOUT: Duration = Duration::from_secs(300);

/// The default read timeout of the call client.
pub const DEFAULT_CALL_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for calls, one for watches, and one for the Secret rewrites of re-encryption.
#[derive(Clone)]
pub struct Clients {
    /// Gets, lists and writes: short read timeout.
    pub calls: Client,
    /// Watches (reflectors and controllers): read timeout above the watch idle timeout.
    pub watches: Client,
    /// The Secret rewrites of a re-encryption pass: as `calls`, but without kube-client's
    /// default retries of 429, 503 and 504 (up to 15, following Retry-After), so that
    /// API Priority and Fairness's refusals reach [`crate::reencrypt::AdaptiveLimit`]
    /// instead of blocking a rewrite unseen.
    pub rewrites: Client,
}

/// The two configurations [`clients`] builds its clients from.
#[must_use]
pub fn configs(config: Config, call_read_timeout: Duration) -> (Config, Config) {
    let mut calls = config.clone();
    calls.read_timeout = Some(call_read_timeout);
    calls.reset_reader_on_write = true;
    let mut watches = config;
    watches.read_timeout = Some(WATCH_READ_TIMEOUT.max(call_read_timeout));
    watches.reset_reader_on_write = true;
    (calls, watches)
}

/// Builds the call and watch clients from one configuration.
///
/// # Errors
/// When a client cannot be built from the configuration (TLS set-up, auth plugin).
pub fn clients(config: Config, call_read_timeout: Duration) -> Result<Clients, kube::Error> {
    let (calls, watches) = configs(config, call_read_timeout);
    let calls_client = Client::try_from(calls.clone())?;
    Ok(Clients {
        calls: calls_client,
        watches: Client::try_from(watches)?,
        rewrites: rewrites_client(calls)?,
    })
}

/// The client of the Secret rewrites: kube-client's stack (base URI, auth, extra headers,
/// the same timeouts) without its retry layer, on sockets with `TCP_NODELAY`.
///
/// kube-client's connector leaves Nagle's algorithm on. A PATCH whose body goes out in a
/// second segment then waits for the ACK of the first, which kube-apiserver's kernel
/// delays by up to 40 ms: measured on the re-encryption of 3,000 Secrets, one rewrite at a
/// time took 45 ms at the median against 1 ms for the fastest, which both slowed the pass
/// and read to [`crate::reencrypt::AdaptiveLimit`] as a loaded server.
///
/// # Errors
/// When the TLS connector or the auth layer cannot be built from `config`.
pub fn rewrites_client(config: Config) -> Result<Client, kube::Error> {
    use hyper_util::client::legacy::connect::HttpConnector;
    use kube::client::ConfigExt as _;
    use tower::ServiceExt as _;

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = config.rustls_https_connector_with_connector(http)?;
    let mut timeouts = hyper_timeout::TimeoutConnector::new(https);
    timeouts.set_connect_timeout(config.connect_timeout);
    timeouts.set_read_timeout(config.read_timeout);
    timeouts.set_write_timeout(config.write_timeout);
    timeouts.set_reset_reader_on_write(config.reset_reader_on_write);
    let http_client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(timeouts);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .service(http_client.map_err(tower::BoxError::from));
    Ok(Client::new(service, config.default_namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_time_out_quickly_and_watches_outlast_the_watch_idle_timeout() {
        let base = Config::new("https://127.0.0.1:6443".parse().expect("uri"));
        assert_eq!(
            base.read_timeout, None,
            "kube-client's default: no read timeout"
        );
        let (calls, watches) = configs(base, Duration::from_secs(30));
        assert_eq!(calls.read_timeout, Some(Duration::from_secs(30)));
        assert!(calls.reset_reader_on_write);
        assert!(watches.read_timeout > Some(Duration::from_secs(295)));
    }
}
