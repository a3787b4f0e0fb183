//! Gateways sharing an artifact store: what one fetched from the origin another takes from the
//! store (the origin counts its requests), under the grant rule, with hostile objects refused.
//! object_store's in-memory store stands for the bucket here; moto's S3 server (when installed)
//! in the last test, as in production.

use std::sync::Arc;

use bytes::Bytes;
use object_store::memory::InMemory;
use object_store::ObjectStoreExt;

use citron_core::artifact::{BlobKey, BlobStore, Cache, CacheConfig, FetchError, S3Config, StoreConfig};
use citron_core::Digest;

use super::tests::{require_tool, Moto, TestServer, KERNEL};
use crate::{Network, SharedStore};

/// A gateway's cache in `dir` sharing `store`.
fn gateway_cache(dir: &std::path::Path, max_bytes: u64, store: &Arc<dyn BlobStore>) -> Cache {
    let network = Network::new(S3Config::default()).with_shared(store.clone());
    Cache::open(dir, CacheConfig { max_bytes }, Arc::new(network)).unwrap()
}

/// Credentials for moto (which takes any); `citron serve` reads them from the environment.
fn keys() -> S3Config {
    S3Config { access_key_id: Some("testing".into()), secret_access_key: Some("testing".into()), ..S3Config::default() }
}

async fn object(bucket: &InMemory, key: &BlobKey) -> Option<Vec<u8>> {
    Some(bucket.get(&key.as_str().into()).await.ok()?.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_takes_the_artifact_from_the_store_not_the_origin() {
    let origin = TestServer::start().await;
    let bucket = Arc::new(InMemory::new());
    let store: Arc<dyn BlobStore> = Arc::new(SharedStore::new(bucket.clone(), "memory://lab"));
    let d = Digest::of(KERNEL);
    let (a_dir, b_dir, c_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    // Gateway A fetches from the origin and leaves the bytes (and the grant) in the store.
    let a = gateway_cache(a_dir.path(), 1 << 20, &store);
    assert!(a.get(&origin.url("/kernel"), Some(d)).await.unwrap().was_fetched());
    assert_eq!(origin.count("/kernel"), 1);
    assert_eq!(object(&bucket, &BlobKey::input(&d)).await.as_deref(), Some(KERNEL));

    // Gateway B, another data directory: served from the store, the origin is not asked again.
    let b = gateway_cache(b_dir.path(), 1 << 20, &store);
    let got = b.get(&origin.url("/kernel"), Some(d)).await.unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), KERNEL);
    assert_eq!(origin.count("/kernel"), 1, "B took it from the store");
    // Then it is in B's own cache, granted to that URL: a hit with no store and no origin.
    assert!(!b.get(&origin.url("/kernel"), Some(d)).await.unwrap().was_fetched());

    // Knowing the digest grants nothing: another URL naming the same sha256 is fetched from
    // that URL, by B as by anyone.
    let c = gateway_cache(c_dir.path(), 1 << 20, &store);
    c.get(&origin.url("/other-name-same-bytes"), Some(d)).await.unwrap();
    assert_eq!(origin.count("/other-name-same-bytes"), 1);
    // Without a sha256 nothing can be looked up by digest: the origin is asked.
    let c2_dir = tempfile::tempdir().unwrap();
    gateway_cache(c2_dir.path(), 1 << 20, &store).get(&origin.url("/kernel"), None).await.unwrap();
    assert_eq!(origin.count("/kernel"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_or_oversized_object_is_refused_and_the_origin_fetched() {
    let origin = TestServer::start().await;
    let bucket = Arc::new(InMemory::new());
    let store: Arc<dyn BlobStore> = Arc::new(SharedStore::new(bucket.clone(), "memory://lab"));
    let d = Digest::of(KERNEL);
    let key = BlobKey::input(&d);
    let a_dir = tempfile::tempdir().unwrap();
    gateway_cache(a_dir.path(), 1 << 20, &store).get(&origin.url("/kernel"), Some(d)).await.unwrap();
    assert_eq!(origin.count("/kernel"), 1);

    // Same size, other bytes (bit rot, a hand edit): refused by digest, fetched from the
    // origin, and the store's copy replaced with the right bytes.
    let mut bad = KERNEL.to_vec();
    bad[3] ^= 0x20;
    bucket.put(&key.as_str().into(), Bytes::from(bad).into()).await.unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let b = gateway_cache(b_dir.path(), 1 << 20, &store);
    let got = b.get(&origin.url("/kernel"), Some(d)).await.unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), KERNEL, "the corrupted copy was not used");
    assert_eq!(origin.count("/kernel"), 2);
    assert_eq!(object(&bucket, &key).await.as_deref(), Some(KERNEL), "the store's copy was repaired");
    // Nothing of the refused copy is left in B's cache directory.
    assert_eq!(super::tests::files(b_dir.path()), [format!("sha256/{}", d.hex())]);

    // An object far larger than the cache: refused on its announced size, before its bytes.
    bucket.put(&key.as_str().into(), Bytes::from(vec![0u8; 4 << 20]).into()).await.unwrap();
    let c_dir = tempfile::tempdir().unwrap();
    let got = gateway_cache(c_dir.path(), 64 << 10, &store).get(&origin.url("/kernel"), Some(d)).await.unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), KERNEL);
    assert_eq!(origin.count("/kernel"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_costs_a_fetch_from_the_origin_nothing_more() {
    let origin = TestServer::start().await;
    let config = StoreConfig {
        url: "s3://lab-cache/citron".into(),
        endpoint: Some(format!("http://127.0.0.1:{}", super::tests::closed_port())),
        region: Some("us-east-1".into()),
    };
    let store: Arc<dyn BlobStore> = Arc::new(SharedStore::s3(&config, keys()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let got = gateway_cache(dir.path(), 1 << 20, &store).get(&origin.url("/kernel"), Some(Digest::of(KERNEL))).await.unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), KERNEL);
    assert_eq!(origin.count("/kernel"), 1);
}

#[test]
fn a_store_url_that_is_not_s3_is_refused() {
    let e = SharedStore::from_config(&StoreConfig { url: "https://lab/cache".into(), ..StoreConfig::default() }).unwrap_err();
    assert!(matches!(e, FetchError::BadUrl { .. }) && e.to_string().contains("s3://bucket/prefix"), "{e}");
}

/// The same through moto's S3 server: two gateways, one bucket under a prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_an_s3_bucket() {
    let Some(program) = require_tool("moto_server") else { return };
    let moto = Moto::start(&program).await;
    let r = crate::http::client().unwrap().put(format!("{}/lab-cache", moto.endpoint)).send().await.unwrap();
    assert!(r.status().is_success(), "create bucket: {}", r.status());
    let config = StoreConfig { url: "s3://lab-cache/rack".into(), endpoint: Some(moto.endpoint.clone()), region: Some("us-east-1".into()) };
    let origin = TestServer::start().await;
    let d = Digest::of(KERNEL);
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store: Arc<dyn BlobStore> = Arc::new(SharedStore::s3(&config, keys()).unwrap());
    gateway_cache(a_dir.path(), 1 << 20, &store).get(&origin.url("/kernel"), Some(d)).await.unwrap();
    let store: Arc<dyn BlobStore> = Arc::new(SharedStore::s3(&config, keys()).unwrap());
    let got = gateway_cache(b_dir.path(), 1 << 20, &store).get(&origin.url("/kernel"), Some(d)).await.unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), KERNEL);
    assert_eq!(origin.count("/kernel"), 1);
    // Under the prefix, as the core named it.
    let listed = reqwest::get(format!("{}/lab-cache?list-type=2&prefix=rack/inputs/", moto.endpoint)).await.unwrap().text().await.unwrap();
    assert!(listed.contains(&format!("rack/inputs/sha256/{}", d.hex())), "{listed}");
    assert!(listed.contains(&format!("rack/inputs/grants/{}/", d.hex())), "{listed}");
}
