//! The HTTP client that delivers webhooks, guarded against server-side request forgery: a
//! target must be `http` or `https` without credentials in the URL, and unless private targets
//! are allowed (development) every address it resolves to must be public — no loopback,
//! private, link-local (the cloud metadata service), shared, multicast or reserved range. The
//! check runs in the client's own DNS resolver, so the addresses checked are the addresses
//! connected to (no second lookup a rebinding DNS server could answer differently); an address
//! literal is checked before the request. No redirect is followed, connecting and answering are
//! bounded in time, and at most [`MAX_RESPONSE`] bytes of an answer are read.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use url::Url;

use crate::ports::{WebhookAnswer, WebhookSendError, WebhookSender};

/// Bytes of an endpoint's answer read at most (the rest is dropped with the connection).
pub const MAX_RESPONSE: usize = 64 * 1024;
/// Characters of a webhook URL.
pub const MAX_URL: usize = 2048;

/// Why a target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the URL is not valid: {0}")]
    Invalid(String),
    #[error("{0} is not a public address (private, loopback, link-local and reserved addresses are refused)")]
    Private(IpAddr),
    #[error("the host {0:?} does not resolve")]
    Unresolved(String),
}

/// Whether `ip` is a public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                // fc00::/7 unique local, fe80::/10 link-local, fec0::/10 site-local.
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                // 2001:db8::/32 documentation, 64:ff9b::/96 NAT64 (reaches IPv4 inside), ::/96
                // IPv4-compatible, 100::/64 discard, 2002::/16 6to4.
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x0064 && s[1] == 0xff9b)
                || (s[0..6] == [0, 0, 0, 0, 0, 0])
                || (s[0] == 0x0100 && s[1..4] == [0, 0, 0])
                || s[0] == 0x2002)
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        // 100.64.0.0/10 shared (carrier-grade NAT), 192.0.0.0/24 protocol assignments,
        // 198.18.0.0/15 benchmarking, 240.0.0.0/4 reserved.
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
        || o[0] >= 240)
}

/// Checks a URL's form: `http` or `https`, a host, no user name or password, no fragment, at
/// most [`MAX_URL`] characters, and (unless `allow_private`) not a private address literal.
pub fn check_url(raw: &str, allow_private: bool) -> Result<Url, TargetError> {
    if raw.len() > MAX_URL {
        return Err(TargetError::Invalid(format!(
            "it is longer than {MAX_URL} characters"
        )));
    }
    let url = Url::parse(raw).map_err(|e| TargetError::Invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(TargetError::Invalid(
            "the scheme must be http or https".into(),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(TargetError::Invalid(
            "credentials in the URL are not allowed (the signature authenticates deliveries)"
                .into(),
        ));
    }
    if url.fragment().is_some() {
        return Err(TargetError::Invalid("a fragment is not allowed".into()));
    }
    match url.host() {
        None => return Err(TargetError::Invalid("the URL has no host".into())),
        Some(url::Host::Ipv4(ip)) if !allow_private && !is_public_v4(ip) => {
            return Err(TargetError::Private(IpAddr::V4(ip)))
        }
        Some(url::Host::Ipv6(ip)) if !allow_private && !is_public(IpAddr::V6(ip)) => {
            return Err(TargetError::Private(IpAddr::V6(ip)))
        }
        _ => {}
    }
    Ok(url)
}

/// Resolves `host` and keeps its addresses only if every one is allowed: one private address is
/// enough to refuse the host (a name that resolves both ways is not trusted).
pub async fn resolve(host: &str, allow_private: bool) -> Result<Vec<SocketAddr>, TargetError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|_| TargetError::Unresolved(host.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(TargetError::Unresolved(host.to_string()));
    }
    if !allow_private {
        if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
            return Err(TargetError::Private(bad.ip()));
        }
    }
    Ok(addrs)
}

/// Checks a URL and, for a host name, that it resolves to allowed addresses (at registration).
pub async fn check_target(raw: &str, allow_private: bool) -> Result<Url, TargetError> {
    let url = check_url(raw, allow_private)?;
    if let Some(url::Host::Domain(host)) = url.host() {
        resolve(host, allow_private).await?;
    }
    Ok(url)
}

/// The client's resolver: the addresses it returns are the ones connected to.
struct GuardedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs = resolve(name.as_str(), allow_private).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Delivers webhook requests.
#[derive(Clone)]
pub struct WebhookClient {
    client: reqwest::Client,
    allow_private: bool,
}

impl WebhookClient {
    pub fn new(allow_private: bool, timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { allow_private }))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout / 2)
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(8)
            .user_agent(concat!("voicegraph-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            allow_private,
        })
    }
}

#[async_trait::async_trait]
impl WebhookSender for WebhookClient {
    async fn check_target(&self, url: &str) -> Result<String, String> {
        check_target(url, self.allow_private)
            .await
            .map(|u| u.to_string())
            .map_err(|e| e.to_string())
    }

    /// Reads at most [`MAX_RESPONSE`] bytes of the answer.
    async fn post(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: String,
    ) -> Result<WebhookAnswer, WebhookSendError> {
        let url = check_url(url, self.allow_private)
            .map_err(|e| WebhookSendError::Refused(e.to_string()))?;
        let started = Instant::now();
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.body(body).send().await.map_err(|e| {
            if let Some(refused) = target_error(&e) {
                return WebhookSendError::Refused(refused.to_string());
            }
            WebhookSendError::Failed(describe(&e), started.elapsed())
        })?;
        let status = response.status().as_u16();
        let mut stream = response.bytes_stream();
        let mut read = 0usize;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    read += bytes.len();
                    if read >= MAX_RESPONSE {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        Ok(WebhookAnswer {
            status,
            latency: started.elapsed(),
        })
    }
}

/// The guard's refusal inside a client error, if that is what it is.
fn target_error(e: &reqwest::Error) -> Option<TargetError> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<TargetError>() {
            return Some(t.clone());
        }
        source = s.source();
    }
    None
}

/// A client error in a few words, by cause.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "the endpoint did not answer in time".into()
    } else if e.is_connect() {
        let mut cause = String::new();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            cause = s.to_string();
            source = s.source();
        }
        format!("could not connect to the endpoint: {cause}")
    } else {
        format!("the request failed: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_reserved_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "1.1.1.1"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn urls_are_checked_by_form() {
        assert!(check_url("https://hooks.example.com/in", false).is_ok());
        assert!(check_url("http://127.0.0.1:9/x", true).is_ok());
        for bad in [
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "https://example.com/#x",
            "not a url",
            "http://[::1]/",
            "http://127.0.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://0x7f000001/",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL));
        assert!(check_url(&long, true).is_err());
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused() {
        assert!(matches!(
            check_target("http://localhost:9/hook", false).await,
            Err(TargetError::Private(_))
        ));
        assert!(check_target("http://localhost:9/hook", true).await.is_ok());
        // The client's own resolver refuses it too (what a rebinding name would meet).
        let client = WebhookClient::new(false, Duration::from_secs(2)).unwrap();
        let refused = client
            .post("http://localhost:9/hook", &[], "{}".into())
            .await;
        assert!(
            matches!(&refused, Err(WebhookSendError::Refused(e)) if e.contains("is not a public address")),
            "{refused:?}"
        );
    }
}
