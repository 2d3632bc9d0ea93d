//! The directory blob store: objects are files under a root, written atomically, and shared by
//! URL with HMAC-SHA256 signatures that expire — the embedded twin of S3 presigned URLs. The app
//! serves those URLs itself (`http/blobs.rs`), checking the signature, expiry, type and length;
//! a signed upload never replaces an existing object, so each upload URL works once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ports::{BlobStore, PresignedPut};

type HmacSha256 = Hmac<Sha256>;

pub struct FsBlobStore {
    root: PathBuf,
    key: Vec<u8>,
    base_url: String,
}

/// Why a signed URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the URL is not signed")]
    Missing,
    #[error("the signature does not match")]
    Invalid,
    #[error("the URL has expired")]
    Expired,
    #[error("invalid object key")]
    BadKey,
}

pub use crate::ports::valid_key;

impl FsBlobStore {
    pub fn new(
        root: impl Into<PathBuf>,
        key: Vec<u8>,
        base_url: impl Into<String>,
    ) -> anyhow::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)
            .with_context(|| format!("creating blob directory {}", root.display()))?;
        Ok(Self {
            root,
            key,
            base_url: base_url.into().trim_end_matches('/').to_string(),
        })
    }

    /// Reads the signing key from `path`, creating a random one the first time, so that URLs
    /// outlive restarts and every process on the same data dir agrees.
    pub fn load_or_create_key(path: &Path) -> anyhow::Result<Vec<u8>> {
        if let Ok(existing) = std::fs::read(path) {
            if existing.len() >= 32 {
                return Ok(existing);
            }
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let key: [u8; 32] = rand::random();
        std::fs::write(path, key).with_context(|| format!("writing {}", path.display()))?;
        Ok(key.to_vec())
    }

    fn path(&self, key: &str) -> anyhow::Result<PathBuf> {
        anyhow::ensure!(valid_key(key), "invalid object key {key:?}");
        Ok(self.root.join(key))
    }

    fn sign(&self, parts: &[&str]) -> String {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        for p in parts {
            mac.update(p.as_bytes());
            mac.update(b"\n");
        }
        hex::encode(mac.finalize().into_bytes())
    }

    fn check(
        &self,
        parts: &[&str],
        expires: Option<&str>,
        signature: Option<&str>,
    ) -> Result<(), SignatureError> {
        let (Some(expires), Some(signature)) = (expires, signature) else {
            return Err(SignatureError::Missing);
        };
        let sig = hex::decode(signature).map_err(|_| SignatureError::Invalid)?;
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        for p in parts {
            mac.update(p.as_bytes());
            mac.update(b"\n");
        }
        // Constant-time comparison.
        mac.verify_slice(&sig)
            .map_err(|_| SignatureError::Invalid)?;
        let exp: i64 = expires.parse().map_err(|_| SignatureError::Invalid)?;
        if Utc::now().timestamp() > exp {
            return Err(SignatureError::Expired);
        }
        Ok(())
    }

    /// Checks a signed GET; `content_type` is the one signed into the URL (its `type`).
    pub fn verify_get(
        &self,
        key: &str,
        content_type: &str,
        expires: Option<&str>,
        signature: Option<&str>,
    ) -> Result<(), SignatureError> {
        if !valid_key(key) {
            return Err(SignatureError::BadKey);
        }
        self.check(
            &["GET", key, expires.unwrap_or(""), content_type],
            expires,
            signature,
        )
    }

    pub fn verify_put(
        &self,
        key: &str,
        content_type: &str,
        length: &str,
        expires: Option<&str>,
        signature: Option<&str>,
    ) -> Result<(), SignatureError> {
        if !valid_key(key) {
            return Err(SignatureError::BadKey);
        }
        self.check(
            &["PUT", key, expires.unwrap_or(""), content_type, length],
            expires,
            signature,
        )
    }

    /// Where a streamed upload is written before it is moved into place.
    pub fn temp_path(&self) -> PathBuf {
        self.root
            .join(".tmp")
            .join(uuid::Uuid::new_v4().to_string())
    }

    /// Moves a completed upload into place atomically.
    pub async fn commit_temp(&self, temp: &Path, key: &str) -> anyhow::Result<()> {
        let dest = self.path(key)?;
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        tokio::fs::rename(temp, &dest).await?;
        Ok(())
    }

    /// Moves a completed upload into place atomically unless an object is already there, in
    /// which case it is discarded and `Ok(false)` returned: of racing uploads exactly one wins,
    /// across processes too (a hard link never replaces its target).
    pub async fn commit_temp_new(&self, temp: &Path, key: &str) -> anyhow::Result<bool> {
        let dest = self.path(key)?;
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let linked = tokio::fs::hard_link(temp, &dest).await;
        let _ = tokio::fs::remove_file(temp).await;
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e).context("storing an upload"),
        }
    }

    /// Whether an object is stored at `key`.
    pub async fn exists(&self, key: &str) -> anyhow::Result<bool> {
        Ok(tokio::fs::try_exists(self.path(key)?).await?)
    }

    fn expiry(expires_in: Duration) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::from_std(expires_in).unwrap_or(chrono::Duration::hours(1))
    }

    fn url(&self, key: &str, query: &str) -> String {
        format!("{}/blobs/{key}?{query}", self.base_url)
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn put(&self, key: &str, bytes: Bytes, _content_type: &str) -> anyhow::Result<()> {
        let temp = self.temp_path();
        if let Some(dir) = temp.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        tokio::fs::write(&temp, &bytes)
            .await
            .context("writing blob")?;
        self.commit_temp(&temp, key).await
    }

    async fn get(&self, key: &str) -> anyhow::Result<Option<Bytes>> {
        match tokio::fs::read(self.path(key)?).await {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("reading blob"),
        }
    }

    async fn download(&self, key: &str, dest: &Path) -> anyhow::Result<Option<u64>> {
        match tokio::fs::copy(self.path(key)?, dest).await {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("copying blob"),
        }
    }

    async fn size(&self, key: &str) -> anyhow::Result<Option<u64>> {
        match tokio::fs::metadata(self.path(key)?).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("reading blob metadata"),
        }
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).context("deleting blob"),
        }
    }

    async fn copy(&self, from: &str, to: &str) -> anyhow::Result<bool> {
        let source = self.path(from)?;
        let dest = self.path(to)?;
        let temp = self.temp_path();
        // One trip to the blocking pool for the whole copy.
        tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
            if let Some(dir) = temp.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // A second link to the same file: this store never writes a file in place (every
            // write is a new file moved into place), so what `from` names later never changes
            // the copy's bytes. A byte copy where links cannot be made.
            let made = match std::fs::hard_link(&source, &temp) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    std::fs::copy(&source, &temp).map(|_| ())
                }
                linked => linked,
            };
            match made {
                Ok(()) => {}
                Err(e) => {
                    let _ = std::fs::remove_file(&temp);
                    if e.kind() == std::io::ErrorKind::NotFound {
                        return Ok(false);
                    }
                    return Err(e).context("copying blob");
                }
            }
            let moved = dest
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::rename(&temp, &dest));
            if let Err(e) = moved {
                let _ = std::fs::remove_file(&temp);
                return Err(e).context("moving a copied blob into place");
            }
            Ok(true)
        })
        .await?
    }

    async fn presign_get(
        &self,
        key: &str,
        expires_in: Duration,
        content_type: &str,
    ) -> anyhow::Result<String> {
        anyhow::ensure!(valid_key(key), "invalid object key {key:?}");
        let exp = Self::expiry(expires_in).timestamp().to_string();
        let sig = self.sign(&["GET", key, &exp, content_type]);
        let kind: String = url::form_urlencoded::byte_serialize(content_type.as_bytes()).collect();
        Ok(self.url(key, &format!("expires={exp}&type={kind}&signature={sig}")))
    }

    async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        byte_size: u64,
        expires_in: Duration,
    ) -> anyhow::Result<PresignedPut> {
        anyhow::ensure!(valid_key(key), "invalid object key {key:?}");
        let expires_at = Self::expiry(expires_in);
        let exp = expires_at.timestamp().to_string();
        let len = byte_size.to_string();
        let sig = self.sign(&["PUT", key, &exp, content_type, &len]);
        Ok(PresignedPut {
            url: self.url(key, &format!("expires={exp}&signature={sig}")),
            method: "PUT".into(),
            headers: vec![
                ("Content-Type".into(), content_type.into()),
                ("Content-Length".into(), len),
            ],
            expires_at,
        })
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.path(key).ok()
    }

    async fn ping(&self) -> anyhow::Result<()> {
        tokio::fs::metadata(&self.root)
            .await
            .with_context(|| format!("blob directory {}", self.root.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, FsBlobStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = FsBlobStore::new(dir.path(), vec![7; 32], "http://h").unwrap();
        (dir, s)
    }

    #[test]
    fn keys_cannot_escape_the_root() {
        for bad in [
            "",
            "/etc/passwd",
            "a/../../b",
            "a//b",
            "a/./b",
            "a b",
            "a\\b",
            "..",
            "x/..",
        ] {
            assert!(!valid_key(bad), "{bad}");
        }
        assert!(valid_key("recordings/t-1/abc.wav"));
    }

    #[tokio::test]
    async fn signed_urls_verify_and_tampering_fails() {
        let (_d, s) = store();
        let url = s
            .presign_get("a/b.wav", Duration::from_secs(60), "audio/wav")
            .await
            .unwrap();
        let q = url.split_once('?').unwrap().1;
        assert!(q.contains("&type=audio%2Fwav&"), "{q}");
        let exp = q.split('&').next().unwrap().trim_start_matches("expires=");
        let sig = q.split("signature=").nth(1).unwrap();
        assert_eq!(
            s.verify_get("a/b.wav", "audio/wav", Some(exp), Some(sig)),
            Ok(())
        );
        assert_eq!(
            s.verify_get("a/c.wav", "audio/wav", Some(exp), Some(sig)),
            Err(SignatureError::Invalid)
        );
        // The type is signed: a URL made to answer as HTML is refused.
        assert_eq!(
            s.verify_get("a/b.wav", "text/html", Some(exp), Some(sig)),
            Err(SignatureError::Invalid)
        );
        let later = (exp.parse::<i64>().unwrap() + 1).to_string();
        assert_eq!(
            s.verify_get("a/b.wav", "audio/wav", Some(&later), Some(sig)),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            s.verify_get("a/b.wav", "audio/wav", None, Some(sig)),
            Err(SignatureError::Missing)
        );

        let put = s
            .presign_put("u/x", "audio/wav", 10, Duration::from_secs(60))
            .await
            .unwrap();
        let q = put.url.split_once('?').unwrap().1;
        let exp = q.split('&').next().unwrap().trim_start_matches("expires=");
        let sig = q.split("signature=").nth(1).unwrap();
        assert_eq!(
            s.verify_put("u/x", "audio/wav", "10", Some(exp), Some(sig)),
            Ok(())
        );
        assert_eq!(
            s.verify_put("u/x", "audio/wav", "11", Some(exp), Some(sig)),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            s.verify_put("u/x", "audio/mpeg", "10", Some(exp), Some(sig)),
            Err(SignatureError::Invalid)
        );
    }

    #[tokio::test]
    async fn expired_urls_are_refused() {
        let (_d, s) = store();
        let exp = (Utc::now().timestamp() - 5).to_string();
        let sig = s.sign(&["GET", "k", &exp, "audio/wav"]);
        assert_eq!(
            s.verify_get("k", "audio/wav", Some(&exp), Some(&sig)),
            Err(SignatureError::Expired)
        );
    }

    #[tokio::test]
    async fn put_get_size_delete() {
        let (_d, s) = store();
        s.put("r/1", Bytes::from_static(b"abc"), "audio/wav")
            .await
            .unwrap();
        assert_eq!(
            s.get("r/1").await.unwrap().unwrap(),
            Bytes::from_static(b"abc")
        );
        assert_eq!(s.size("r/1").await.unwrap(), Some(3));
        s.delete("r/1").await.unwrap();
        s.delete("r/1").await.unwrap();
        assert_eq!(s.get("r/1").await.unwrap(), None);
    }

    /// A copy keeps its bytes whatever happens to the original afterwards: replaced by a new
    /// upload, or deleted.
    #[tokio::test]
    async fn a_copy_is_independent_of_its_original() {
        let (_d, s) = store();
        assert!(
            !s.copy("uploads/none", "r/none").await.unwrap(),
            "nothing to copy"
        );
        s.put("uploads/1", Bytes::from_static(b"first"), "audio/wav")
            .await
            .unwrap();
        assert!(s.copy("uploads/1", "r/1").await.unwrap());
        s.put("uploads/1", Bytes::from_static(b"second"), "audio/wav")
            .await
            .unwrap();
        assert_eq!(
            s.get("r/1").await.unwrap().unwrap(),
            Bytes::from_static(b"first")
        );
        assert_eq!(
            s.get("uploads/1").await.unwrap().unwrap(),
            Bytes::from_static(b"second")
        );
        s.delete("uploads/1").await.unwrap();
        assert_eq!(
            s.get("r/1").await.unwrap().unwrap(),
            Bytes::from_static(b"first")
        );
        assert_eq!(
            s.local_path("r/1").map(std::fs::read).transpose().unwrap(),
            Some(b"first".to_vec())
        );
    }
}
