//! [`TokenReviewer`] by `authentication.k8s.io/v1` TokenReview: the token must be
//! authenticated for one of the configured audiences (`spec.audiences`, and checked again
//! in `status.audiences`). Each review is bounded by a timeout; an API failure or timeout
//! is [`ReviewError::Unavailable`] (STS `IDPCommunicationError`, which SDKs retry).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::kubernetes::metrics::KubernetesMetrics;
use crate::sts::{ReviewError, ReviewedIdentity, TokenReviewer};

/// See the module documentation.
#[derive(Clone)]
pub struct KubeTokenReviewer {
    client: Client,
    timeout: Duration,
    metrics: Arc<KubernetesMetrics>,
}

impl KubeTokenReviewer {
    /// A reviewer calling kube-apiserver through `client`, each review bounded by
    /// `timeout`.
    #[must_use]
    pub fn new(client: Client, timeout: Duration, metrics: Arc<KubernetesMetrics>) -> Self {
        Self {
            client,
            timeout,
            metrics,
        }
    }
}

#[async_trait]
impl TokenReviewer for KubeTokenReviewer {
    async fn review(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<ReviewedIdentity, ReviewError> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(audiences.to_vec()),
            },
            ..TokenReview::default()
        };
        let started = std::time::Instant::now();
        let answer =
            tokio::time::timeout(self.timeout, api.create(&PostParams::default(), &review)).await;
        self.metrics
            .token_review_seconds
            .observe(started.elapsed().as_secs_f64());
        let review = match answer {
            Err(_) => {
                self.metrics.token_review("timeout");
                return Err(ReviewError::Unavailable(format!(
                    "the TokenReview did not answer within {:?}",
                    self.timeout
                )));
            }
            Ok(Err(error)) => {
                self.metrics.token_review("error");
                return Err(ReviewError::Unavailable(format!(
                    "the TokenReview failed: {error}"
                )));
            }
            Ok(Ok(review)) => review,
        };
        let status = review.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            self.metrics.token_review("rejected");
            return Err(ReviewError::Rejected(
                status
                    .error
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "not authenticated".to_owned()),
            ));
        }
        let granted: Vec<String> = status
            .audiences
            .unwrap_or_default()
            .into_iter()
            .filter(|a| audiences.contains(a))
            .collect();
        if granted.is_empty() {
            self.metrics.token_review("rejected");
            return Err(ReviewError::Rejected(
                "the token is not bound to the server's audience".to_owned(),
            ));
        }
        let Some(user) = status.user.filter(|u| u.username.is_some()) else {
            self.metrics.token_review("rejected");
            return Err(ReviewError::Rejected("the review names no user".to_owned()));
        };
        self.metrics.token_review("authenticated");
        Ok(ReviewedIdentity {
            username: user.username.unwrap_or_default(),
            uid: user.uid,
            groups: user.groups.unwrap_or_default(),
            audiences: granted,
        })
    }
}

impl std::fmt::Debug for KubeTokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeTokenReviewer").finish_non_exhaustive()
    }
}
