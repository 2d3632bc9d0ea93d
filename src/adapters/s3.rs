//! The S3 blob store: objects under `s3://bucket/prefix`, shared by SigV4 presigned URLs that S3
//! itself checks (a presigned PUT binds the content type, the length and `If-None-Match: *`
//! into its signature, so it uploads exactly one object of that type and size, and only where
//! there is none).

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use chrono::Utc;

use crate::adapters::local::blobs::valid_key;
use crate::ports::{BlobStore, PresignedPut};

pub struct S3BlobStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    prefix: String,
}

impl S3BlobStore {
    pub fn new(client: aws_sdk_s3::Client, bucket: String, prefix: String) -> Self {
        let prefix = prefix.trim_matches('/').to_string();
        Self {
            client,
            bucket,
            prefix,
        }
    }

    /// Splits `s3://bucket/prefix` (the prefix may be empty) into bucket and prefix.
    pub fn parse_url(url: &str) -> anyhow::Result<(String, String)> {
        let rest = url
            .strip_prefix("s3://")
            .with_context(|| format!("blob URL {url:?} must look like s3://bucket/prefix"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        anyhow::ensure!(
            !bucket.is_empty(),
            "blob URL {url:?} names no bucket: use s3://bucket/prefix"
        );
        anyhow::ensure!(
            bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.')),
            "blob URL {url:?}: {bucket:?} is not a valid S3 bucket name"
        );
        anyhow::ensure!(
            !prefix.contains(['?', '#']),
            "blob URL {url:?} must not carry a query or fragment"
        );
        Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
    }

    /// The S3 object key for a store key, refusing keys the directory store would refuse too.
    fn object_key(&self, key: &str) -> anyhow::Result<String> {
        anyhow::ensure!(valid_key(key), "invalid object key {key:?}");
        Ok(if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        })
    }

    fn location(&self, object_key: &str) -> String {
        format!("s3://{}/{object_key}", self.bucket)
    }

    fn presigning(&self, expires_in: Duration) -> anyhow::Result<PresigningConfig> {
        PresigningConfig::expires_in(expires_in)
            .with_context(|| format!("invalid presigned URL lifetime {expires_in:?}"))
    }
}

impl S3BlobStore {
    /// GetObject of a full object key; `None` when there is no such object.
    async fn get_object(
        &self,
        object: &str,
    ) -> anyhow::Result<Option<aws_sdk_s3::operation::get_object::GetObjectOutput>> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(object)
            .send()
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("S3 GetObject {}", self.location(object))),
        }
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> anyhow::Result<()> {
        let object = self.object_key(key)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&object)
            .content_type(content_type)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .with_context(|| format!("S3 PutObject {}", self.location(&object)))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> anyhow::Result<Option<Bytes>> {
        let object = self.object_key(key)?;
        let Some(response) = self.get_object(&object).await? else {
            return Ok(None);
        };
        let body = response
            .body
            .collect()
            .await
            .with_context(|| format!("reading S3 object {}", self.location(&object)))?;
        Ok(Some(body.into_bytes()))
    }

    async fn download(&self, key: &str, dest: &std::path::Path) -> anyhow::Result<Option<u64>> {
        let object = self.object_key(key)?;
        let Some(response) = self.get_object(&object).await? else {
            return Ok(None);
        };
        // Chunk by chunk to the file: a large recording never sits in memory whole.
        let mut body = response.body.into_async_read();
        let mut file = tokio::fs::File::create(dest)
            .await
            .with_context(|| format!("creating {}", dest.display()))?;
        let n = tokio::io::copy(&mut body, &mut file)
            .await
            .with_context(|| format!("downloading S3 object {}", self.location(&object)))?;
        tokio::io::AsyncWriteExt::flush(&mut file).await?;
        Ok(Some(n))
    }

    async fn size(&self, key: &str) -> anyhow::Result<Option<u64>> {
        let object = self.object_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&object)
            .send()
            .await
        {
            Ok(head) => {
                let length = head.content_length().with_context(|| {
                    format!(
                        "S3 HeadObject {} returned no length",
                        self.location(&object)
                    )
                })?;
                Ok(Some(u64::try_from(length).with_context(|| {
                    format!(
                        "S3 HeadObject {} returned length {length}",
                        self.location(&object)
                    )
                })?))
            }
            // HEAD responses carry no body, so a missing object may come back as a bare 404.
            Err(e)
                if e.as_service_error().is_some_and(|e| e.is_not_found())
                    || e.raw_response().is_some_and(|r| r.status().as_u16() == 404) =>
            {
                Ok(None)
            }
            Err(e) => Err(e).with_context(|| format!("S3 HeadObject {}", self.location(&object))),
        }
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        let object = self.object_key(key)?;
        // S3 answers 204 for an absent object too, which is the contract.
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&object)
            .send()
            .await
            .with_context(|| format!("S3 DeleteObject {}", self.location(&object)))?;
        Ok(())
    }

    async fn copy(&self, from: &str, to: &str) -> anyhow::Result<bool> {
        let source = self.object_key(from)?;
        let dest = self.object_key(to)?;
        // Keys are checked to hold only characters that need no URL-encoding. CopyObject copies
        // up to 5 GB in one request, far above the recording size limit.
        match self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(&dest)
            .copy_source(format!("{}/{source}", self.bucket))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("NoSuchKey") => Ok(false),
            Err(e) => Err(e).with_context(|| {
                format!(
                    "S3 CopyObject {} to {}",
                    self.location(&source),
                    self.location(&dest)
                )
            }),
        }
    }

    async fn presign_get(
        &self,
        key: &str,
        expires_in: Duration,
        content_type: &str,
    ) -> anyhow::Result<String> {
        let object = self.object_key(key)?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object)
            // Signed into the URL: S3 answers with this Content-Type.
            .response_content_type(content_type)
            .presigned(self.presigning(expires_in)?)
            .await
            .with_context(|| format!("presigning S3 GET {}", self.location(&object)))?;
        Ok(request.uri().to_string())
    }

    async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        byte_size: u64,
        expires_in: Duration,
    ) -> anyhow::Result<PresignedPut> {
        let object = self.object_key(key)?;
        let length = i64::try_from(byte_size)
            .with_context(|| format!("upload of {byte_size} bytes is too large"))?;
        let expires_at = Utc::now()
            + chrono::Duration::from_std(expires_in).unwrap_or(chrono::Duration::hours(1));
        // The headers are set on the request so that they become signed headers: S3 then
        // refuses an upload of another type or length, and (`If-None-Match: *`, a conditional
        // write) one to a key that already holds an object, so the URL uploads once.
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&object)
            .content_type(content_type)
            .content_length(length)
            .if_none_match("*")
            .presigned(self.presigning(expires_in)?)
            .await
            .with_context(|| format!("presigning S3 PUT {}", self.location(&object)))?;
        let mut headers = vec![
            ("Content-Type".to_string(), content_type.to_string()),
            ("Content-Length".to_string(), byte_size.to_string()),
        ];
        // Any further header the signature covers must be sent as well.
        for (name, value) in request.headers() {
            if !["content-type", "content-length", "host"]
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h))
            {
                headers.push((name.to_string(), value.to_string()));
            }
        }
        Ok(PresignedPut {
            url: request.uri().to_string(),
            method: "PUT".into(),
            headers,
            expires_at,
        })
    }

    async fn ping(&self) -> anyhow::Result<()> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .with_context(|| format!("S3 HeadBucket {}", self.bucket))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_urls_parse() {
        assert_eq!(
            S3BlobStore::parse_url("s3://recordings/voice/prod/").unwrap(),
            ("recordings".into(), "voice/prod".into())
        );
        assert_eq!(
            S3BlobStore::parse_url("s3://recordings").unwrap(),
            ("recordings".into(), String::new())
        );
        assert_eq!(
            S3BlobStore::parse_url("s3://recordings/").unwrap(),
            ("recordings".into(), String::new())
        );
        for bad in [
            "s3://",
            "s3:///prefix",
            "file://x",
            "recordings/x",
            "s3://Bad_Name/x",
        ] {
            let e = S3BlobStore::parse_url(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn object_keys_join_the_prefix_with_one_slash() {
        let client = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::Config::builder()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                .build(),
        );
        let store = S3BlobStore::new(client.clone(), "b".into(), "/pre/fix/".into());
        assert_eq!(store.object_key("r/1.wav").unwrap(), "pre/fix/r/1.wav");
        let bare = S3BlobStore::new(client, "b".into(), String::new());
        assert_eq!(bare.object_key("r/1.wav").unwrap(), "r/1.wav");
        for bad in ["", "../x", "a//b", "/a"] {
            assert!(store.object_key(bad).is_err(), "{bad}");
        }
    }
}
