//! `s3://bucket/key` sources, through object_store's S3 client.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStoreExt, RetryConfig};
use url::Url;

use citron_core::artifact::{redact_url, ArtifactSource, FetchError, S3Config, Sink};

use crate::http::{install_crypto_provider, CONNECT_TIMEOUT};

/// The bucket and key of an `s3://bucket/key` URL.
pub(crate) fn split_url(url: &Url) -> Result<(String, ObjectPath), FetchError> {
    let bad = |message: &str| FetchError::BadUrl { url: redact_url(url), message: message.to_string() };
    let bucket = url.host_str().filter(|b| !b.is_empty()).ok_or_else(|| bad("no bucket; write s3://bucket/key"))?;
    let key = url.path().trim_start_matches('/');
    if key.is_empty() || key.ends_with('/') {
        return Err(bad("no object key; write s3://bucket/key"));
    }
    let key = ObjectPath::from_url_path(key).map_err(|e| bad(&format!("invalid object key ({e})")))?;
    Ok((bucket.to_string(), key))
}

/// A client for `bucket` as the lab file's `s3:` section (then the `AWS_*` environment) says.
pub(crate) fn store_for(config: &S3Config, bucket: &str) -> Result<AmazonS3, FetchError> {
    install_crypto_provider();
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(e) = &config.endpoint {
        // An explicit http:// endpoint (MinIO, moto, a lab-local Ceph) is the admin's choice.
        b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
    }
    if let Some(r) = &config.region {
        b = b.with_region(r);
    }
    if let Some(k) = &config.access_key_id {
        b = b.with_access_key_id(k);
    }
    if let Some(s) = &config.secret_access_key {
        b = b.with_secret_access_key(s);
    }
    // Downloads may be large: no overall request timeout, but a bounded connect and few retries
    // so that a wrong endpoint is reported within seconds rather than after minutes of backoff.
    b = b
        .with_client_options(
            ClientOptions::new()
                .with_timeout_disabled()
                .with_connect_timeout(CONNECT_TIMEOUT)
                .with_allow_http(config.endpoint.as_deref().is_some_and(|e| e.starts_with("http://"))),
        )
        .with_retry(RetryConfig { max_retries: 2, retry_timeout: Duration::from_secs(20), ..RetryConfig::default() });
    b.build().map_err(|e| FetchError::Network {
        url: format!("s3://{bucket}"),
        message: format!("cannot set up the S3 client ({e}); check the lab file's s3: section"),
    })
}

/// An object in an S3-compatible store.
#[derive(Debug, Clone)]
pub struct S3Source {
    url: Url,
    key: ObjectPath,
    store: Arc<AmazonS3>,
}

impl S3Source {
    /// A source for `url` (`s3://bucket/key`) read through `store`, a client for that bucket.
    pub fn new(url: Url, store: Arc<AmazonS3>) -> Result<S3Source, FetchError> {
        let (_, key) = split_url(&url)?;
        Ok(S3Source { url, key, store })
    }

    fn error(&self, e: object_store::Error) -> FetchError {
        match e {
            object_store::Error::NotFound { .. } => FetchError::Status { url: redact_url(&self.url), status: 404 },
            e => FetchError::Network {
                url: redact_url(&self.url),
                message: format!("{e}; check the lab file's s3: endpoint, region and credentials, and that the bucket exists"),
            },
        }
    }
}

#[async_trait]
impl ArtifactSource for S3Source {
    fn name(&self) -> String {
        redact_url(&self.url)
    }

    fn identity(&self) -> String {
        self.url.to_string()
    }

    fn reusable(&self) -> bool {
        true
    }

    async fn fetch(&self, sink: &mut Sink<'_>) -> Result<(), FetchError> {
        let got = self.store.get(&self.key).await.map_err(|e| self.error(e))?;
        let total = got.meta.size;
        sink.set_total(Some(total))?;
        let mut body = got.into_stream();
        while let Some(chunk) = body.next().await {
            sink.write(&chunk.map_err(|e| self.error(e))?).await?;
        }
        if sink.written() != total {
            return Err(FetchError::Network {
                url: redact_url(&self.url),
                message: format!("the store sent {} of {total} bytes; load the job again", sink.written()),
            });
        }
        Ok(())
    }
}
