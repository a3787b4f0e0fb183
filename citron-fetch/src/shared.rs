//! The lab's shared artifact store (`store:` in the lab file) on object_store: the core's
//! [`BlobStore`], moving bytes only. Which objects exist, what they are called and whether their
//! bytes are right is the core's business (`citron_core::artifact`, `shared.rs`).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::io::AsyncWriteExt;

use citron_core::artifact::{BlobKey, BlobStore, FetchError, S3Config, Sink, StoreConfig};

/// A shared store on any object_store backend, scoped to a prefix.
///
/// ```
/// use std::sync::Arc;
/// use citron_core::artifact::BlobStore;
/// let store = citron_fetch::SharedStore::new(Arc::new(object_store::memory::InMemory::new()), "memory://lab");
/// assert_eq!(store.describe(), "memory://lab");
/// ```
#[derive(Debug, Clone)]
pub struct SharedStore {
    store: Arc<dyn ObjectStore>,
    describe: String,
}

impl SharedStore {
    /// A store reading and writing `store`; `describe` names it in logs and errors (no
    /// credentials).
    pub fn new(store: Arc<dyn ObjectStore>, describe: impl Into<String>) -> SharedStore {
        SharedStore { store, describe: describe.into() }
    }

    /// The store the lab file's `store:` names: an S3 bucket (credentials from the `AWS_*`
    /// environment), its objects under the URL's prefix.
    pub fn from_config(config: &StoreConfig) -> Result<SharedStore, FetchError> {
        Self::s3(config, S3Config::default())
    }

    /// [`from_config`](Self::from_config) with the credentials in `keys` (tests) instead of
    /// the environment's.
    pub(crate) fn s3(config: &StoreConfig, keys: S3Config) -> Result<SharedStore, FetchError> {
        let (bucket, prefix) = config.bucket_and_prefix().map_err(|message| FetchError::BadUrl { url: config.url.clone(), message })?;
        let s3 = S3Config { endpoint: config.endpoint.clone(), region: config.region.clone(), ..keys };
        let bucket_store: Arc<dyn ObjectStore> = Arc::new(crate::s3::store_for(&s3, &bucket)?);
        let store: Arc<dyn ObjectStore> =
            if prefix.is_empty() { bucket_store } else { Arc::new(PrefixStore::new(bucket_store, prefix.as_str())) };
        Ok(SharedStore::new(store, format!("s3://{bucket}/{prefix}")))
    }

    /// The object store under the `store:` URL's prefix: what the lab's results keep under
    /// [`citron_core::artifact::RESULTS_PREFIX`].
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    fn path(&self, key: &BlobKey) -> Result<ObjectPath, FetchError> {
        ObjectPath::parse(key.as_str()).map_err(|e| self.error(key, e.into()))
    }

    fn error(&self, key: &BlobKey, e: object_store::Error) -> FetchError {
        FetchError::Network {
            url: format!("{}/{key}", self.describe),
            message: format!(
                "{e}; check the lab file's store: URL, endpoint and region, the AWS_* credentials, and that the bucket exists"
            ),
        }
    }
}

#[async_trait]
impl BlobStore for SharedStore {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn get(&self, key: &BlobKey, sink: &mut Sink<'_>) -> Result<bool, FetchError> {
        let got = match self.store.get(&self.path(key)?).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(self.error(key, e)),
        };
        let total = got.meta.size;
        // Bounded before the first byte: the sink refuses more than the cache may hold.
        sink.set_total(Some(total))?;
        let mut body = got.into_stream();
        while let Some(chunk) = body.next().await {
            sink.write(&chunk.map_err(|e| self.error(key, e))?).await?;
        }
        if sink.written() != total {
            let message = format!("the store sent {} of {total} bytes", sink.written());
            return Err(FetchError::Network { url: format!("{}/{key}", self.describe), message });
        }
        Ok(true)
    }

    async fn exists(&self, key: &BlobKey) -> Result<bool, FetchError> {
        match self.store.head(&self.path(key)?).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(key, e)),
        }
    }

    async fn put_file(&self, key: &BlobKey, file: &Path) -> Result<(), FetchError> {
        let io = |e: std::io::Error| FetchError::Network { url: format!("{}/{key}", self.describe), message: e.to_string() };
        let mut f = tokio::fs::File::open(file).await.map_err(FetchError::Cache)?;
        // Small objects in one PUT, large ones as a multipart upload: either way the object
        // appears only once complete.
        let mut w = BufWriter::new(self.store.clone(), self.path(key)?);
        if let Err(e) = tokio::io::copy(&mut f, &mut w).await {
            let _ = w.abort().await;
            return Err(io(e));
        }
        w.shutdown().await.map_err(io)
    }

    async fn put_marker(&self, key: &BlobKey) -> Result<(), FetchError> {
        self.store.put(&self.path(key)?, PutPayload::new()).await.map(drop).map_err(|e| self.error(key, e))
    }
}
