//! Playlist rewriting: an M3U playlist whose AceStream entries
//! (`acestream://ID`, `ace://ID`, `http(s)://host:port/ace/getstream?id=ID`,
//! also `content_id=`/`infohash=` and `/ace/manifest.m3u8`) are pointed at
//! this orchestrator's built-in proxy, every other byte kept as it was; and the
//! policy for fetching a remote playlist (allowed hosts, no private
//! addresses unless listed exactly, size and time limits, no redirect off
//! the list).
//!
//! The input is hostile until proven otherwise: it must be UTF-8 text without
//! NUL bytes, at most [`MAX_BYTES`], with lines of at most [`MAX_LINE`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use futures::StreamExt;
use reqwest::Url;

use crate::domain::percent_encode;

/// Largest playlist accepted, posted or fetched.
pub const MAX_BYTES: usize = 5 * 1024 * 1024;
/// Longest line accepted.
pub const MAX_LINE: usize = 16 * 1024;
/// Redirects followed when fetching (each one checked like the first URL).
const MAX_REDIRECTS: usize = 3;

/// How rewritten entries play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `/ace/getstream?…` (MPEG-TS).
    Ts,
    /// `/ace/manifest.m3u8?…` (HLS).
    Hls,
}

/// Why a playlist was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaylistError {
    #[error("the playlist is not text: {0}")]
    NotText(String),
    #[error("the playlist is larger than the limit of {MAX_BYTES} bytes")]
    TooLarge,
    #[error("line {line} of the playlist is {len} bytes long, above the limit of {MAX_LINE}")]
    LineTooLong { line: usize, len: usize },
}

/// A rewritten playlist.
#[derive(Debug)]
pub struct Rewritten {
    pub text: String,
    /// Entries pointed at the orchestrator.
    pub entries: usize,
}

/// Rewrites `body`'s AceStream entries to `base` (`http://host:port`, no
/// trailing slash); `token` (STREAM_TOKEN) is added to each URL when given.
pub fn rewrite(
    body: &[u8],
    base: &str,
    format: Format,
    token: Option<&str>,
) -> Result<Rewritten, PlaylistError> {
    if body.len() > MAX_BYTES {
        return Err(PlaylistError::TooLarge);
    }
    if let Some(at) = body.iter().position(|&b| b == 0) {
        return Err(PlaylistError::NotText(format!("a NUL byte at offset {at}")));
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| PlaylistError::NotText(format!("not UTF-8 at offset {}", e.valid_up_to())))?;
    let path = match format {
        Format::Ts => "/ace/getstream",
        Format::Hls => "/ace/manifest.m3u8",
    };
    let token = token
        .map(|t| format!("&token={}", percent_encode(t)))
        .unwrap_or_default();
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    let mut entries = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let content = line.trim_end_matches(['\n', '\r']);
        if content.len() > MAX_LINE {
            return Err(PlaylistError::LineTooLong {
                line: n + 1,
                len: content.len(),
            });
        }
        let trimmed = content.trim();
        let entry = if trimmed.starts_with('#') {
            None
        } else {
            ace_entry(trimmed)
        };
        match entry {
            Some((param, id)) => {
                let lead = &content[..content.len() - content.trim_start().len()];
                let trail = &content[content.trim_end().len()..];
                out.push_str(lead);
                out.push_str(base);
                out.push_str(path);
                out.push('?');
                out.push_str(param);
                out.push('=');
                out.push_str(&id);
                out.push_str(&token);
                out.push_str(trail);
                out.push_str(&line[content.len()..]);
                entries += 1;
            }
            None => out.push_str(line),
        }
    }
    Ok(Rewritten { text: out, entries })
}

fn hex40(value: &str) -> Option<String> {
    (value.len() == 40 && value.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| value.to_ascii_lowercase())
}

/// The proxy parameter and id of an AceStream entry, `None` for any other line.
fn ace_entry(line: &str) -> Option<(&'static str, String)> {
    let lower = line
        .get(..12)
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let rest = if lower.starts_with("acestream://") {
        Some(&line[12..])
    } else if lower.starts_with("ace://") {
        Some(&line[6..])
    } else {
        None
    };
    if let Some(rest) = rest {
        let id = rest.split(['?', '/', '#']).next().unwrap_or("");
        return hex40(id).map(|id| ("id", id));
    }
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return None;
    }
    let url = Url::parse(line).ok()?;
    let path = url.path().trim_end_matches('/');
    if !(path.ends_with("/ace/getstream") || path.ends_with("/ace/manifest.m3u8")) {
        return None;
    }
    let mut id = None;
    let mut content_id = None;
    let mut infohash = None;
    for (name, value) in url.query_pairs() {
        let slot = match &*name {
            "id" => &mut id,
            "content_id" => &mut content_id,
            "infohash" => &mut infohash,
            _ => continue,
        };
        if slot.is_none() && !value.is_empty() {
            *slot = Some(value.into_owned());
        }
    }
    // The precedence /ace/getstream applies.
    if let Some(id) = id.or(content_id) {
        return hex40(&id).map(|id| ("id", id));
    }
    infohash.and_then(|h| hex40(&h)).map(|h| ("infohash", h))
}

/// Where remote playlists may come from.
#[derive(Debug, Clone, Default)]
pub struct FetchPolicy {
    /// `PLAYLIST_ALLOWED_HOSTS`, lower-cased.
    pub allowed_hosts: Vec<String>,
    pub timeout: Duration,
}

/// Why a remote playlist was not fetched.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    BadUrl(String),
    #[error("{0}")]
    NotAllowed(String),
    #[error("the playlist at {0} is larger than the limit of {MAX_BYTES} bytes")]
    TooLarge(String),
    #[error("the playlist at {url} did not arrive within {seconds:.1} s")]
    Timeout { url: String, seconds: f64 },
    #[error("{0}")]
    Upstream(String),
}

/// How a host matched the allowed list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    /// Listed as it is: it may resolve to a private address.
    Exact,
    /// By `*.domain` or `*`: public addresses only.
    Pattern,
}

impl FetchPolicy {
    fn matches(&self, host: &str) -> Option<Match> {
        let mut found = None;
        for rule in &self.allowed_hosts {
            let rule = rule.trim().trim_start_matches('[').trim_end_matches(']');
            if rule.eq_ignore_ascii_case(host) {
                return Some(Match::Exact);
            }
            let by_pattern = rule == "*"
                || rule
                    .strip_prefix("*.")
                    .is_some_and(|suffix| host.ends_with(&format!(".{suffix}")));
            if by_pattern {
                found = Some(Match::Pattern);
            }
        }
        found
    }

    /// Checks `url` against the policy and resolves it: answers the address
    /// to connect to (the one that was checked, so that a second DNS answer
    /// cannot send the request elsewhere).
    async fn check(&self, url: &Url) -> Result<SocketAddr, FetchError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::BadUrl(format!(
                "only http and https playlists are fetched, not '{}'",
                url.scheme()
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(FetchError::BadUrl(
                "a playlist URL with credentials is not fetched".into(),
            ));
        }
        let host = url_host(url)?;
        if self.allowed_hosts.is_empty() {
            return Err(FetchError::NotAllowed(
                "fetching remote playlists is off: PLAYLIST_ALLOWED_HOSTS is empty".into(),
            ));
        }
        let how = self.matches(&host).ok_or_else(|| {
            FetchError::NotAllowed(format!("host '{host}' is not in PLAYLIST_ALLOWED_HOSTS"))
        })?;
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => {
                tokio::time::timeout(self.timeout, tokio::net::lookup_host((host.as_str(), port)))
                    .await
                    .map_err(|_| FetchError::Upstream(format!("resolving '{host}' timed out")))?
                    .map_err(|e| FetchError::Upstream(format!("cannot resolve '{host}': {e}")))?
                    .collect()
            }
        };
        let first = *addrs
            .first()
            .ok_or_else(|| FetchError::Upstream(format!("'{host}' has no address")))?;
        if how == Match::Pattern {
            if let Some(private) = addrs.iter().find(|a| !is_public(a.ip())) {
                return Err(FetchError::NotAllowed(format!(
                    "host '{host}' resolves to {}, a private, loopback or link-local address; list it in PLAYLIST_ALLOWED_HOSTS by name to allow it",
                    private.ip()
                )));
            }
        }
        Ok(first)
    }

    /// Fetches the playlist at `url`: only from allowed hosts (redirects
    /// checked again), at most [`MAX_BYTES`], within the policy's timeout.
    pub async fn fetch(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let seconds = self.timeout.as_secs_f64();
        let mut url =
            Url::parse(url).map_err(|e| FetchError::BadUrl(format!("url is not a URL: {e}")))?;
        let original = url.to_string();
        let work = async {
            for _ in 0..=MAX_REDIRECTS {
                let addr = self.check(&url).await?;
                let mut client = reqwest::Client::builder()
                    // Straight to the checked address: an HTTP_PROXY from
                    // the environment would connect wherever it likes.
                    .no_proxy()
                    .redirect(reqwest::redirect::Policy::none())
                    // The whole fetch is bounded below; this only keeps a
                    // forgotten connection from living on.
                    .timeout(self.timeout + Duration::from_secs(1))
                    .user_agent(concat!(
                        "acestream-orchestrator/",
                        env!("CARGO_PKG_VERSION")
                    ));
                let host = url_host(&url)?;
                if host.parse::<IpAddr>().is_err() {
                    client = client.resolve(&host, addr);
                }
                let client = client
                    .build()
                    .map_err(|e| FetchError::Upstream(format!("cannot fetch: {e}")))?;
                let response = client
                    .get(url.clone())
                    .send()
                    .await
                    .map_err(|e| FetchError::Upstream(format!("fetching {url} failed: {e}")))?;
                let status = response.status();
                if status.is_redirection() {
                    let location = response
                        .headers()
                        .get(reqwest::header::LOCATION)
                        .and_then(|l| l.to_str().ok())
                        .ok_or_else(|| {
                            FetchError::Upstream(format!("{url} redirects without a Location"))
                        })?;
                    url = url.join(location).map_err(|e| {
                        FetchError::Upstream(format!("{url} redirects to a bad URL: {e}"))
                    })?;
                    continue;
                }
                if !status.is_success() {
                    return Err(FetchError::Upstream(format!(
                        "{url} answered HTTP {status}"
                    )));
                }
                if response
                    .content_length()
                    .is_some_and(|n| n > MAX_BYTES as u64)
                {
                    return Err(FetchError::TooLarge(url.to_string()));
                }
                let mut body = Vec::new();
                let mut stream = response.bytes_stream();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk
                        .map_err(|e| FetchError::Upstream(format!("reading {url} failed: {e}")))?;
                    if body.len() + chunk.len() > MAX_BYTES {
                        return Err(FetchError::TooLarge(url.to_string()));
                    }
                    body.extend_from_slice(&chunk);
                }
                return Ok(body);
            }
            Err(FetchError::Upstream(format!(
                "{original} redirects more than {MAX_REDIRECTS} times"
            )))
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result.map_err(|e| match e {
                FetchError::Upstream(m) if m.contains("operation timed out") => {
                    FetchError::Timeout {
                        url: original.clone(),
                        seconds,
                    }
                }
                e => e,
            }),
            Err(_) => Err(FetchError::Timeout {
                url: original,
                seconds,
            }),
        }
    }
}

/// The URL's host, lower-cased, an IPv6 address without its brackets.
fn url_host(url: &Url) -> Result<String, FetchError> {
    let raw = url
        .host_str()
        .ok_or_else(|| FetchError::BadUrl("the URL has no host".into()))?;
    Ok(raw
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase())
}

/// Whether `ip` is a public unicast address (not private, loopback,
/// link-local, shared, documentation, multicast, reserved or unspecified).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64: a v4 address inside
                || v6 == Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1))
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking
        || o[0] >= 240)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn every_entry_form_is_pointed_here_and_the_rest_kept() {
        let input = format!(
            "#EXTM3U url-tvg=\"http://epg\"\r\n\
             #EXTINF:-1 tvg-logo=\"http://l/1.png\" group-title=\"Sport\",One\r\n\
             acestream://{ID}\r\n\
             #EXTINF:-1,Two\n  ace://{up}  \n\
             #EXTINF:-1,Three\nhttp://10.0.0.5:6878/ace/getstream?id={ID}&pid=7\n\
             #EXTINF:-1,Four\nhttps://x.example/ace/getstream?content_id={ID}\n\
             #EXTINF:-1,Five\nhttp://h:1/ace/getstream?infohash={ID}\n\
             #EXTINF:-1,Six\nhttp://other/video.ts\nacestream://nothex\n\
             #EXTVLCOPT:http-user-agent=x\n",
            up = ID.to_uppercase()
        );
        let out = rewrite(input.as_bytes(), "http://tv:8000", Format::Ts, None).unwrap();
        assert_eq!(out.entries, 5);
        let want = format!(
            "#EXTM3U url-tvg=\"http://epg\"\r\n\
             #EXTINF:-1 tvg-logo=\"http://l/1.png\" group-title=\"Sport\",One\r\n\
             http://tv:8000/ace/getstream?id={ID}\r\n\
             #EXTINF:-1,Two\n  http://tv:8000/ace/getstream?id={ID}  \n\
             #EXTINF:-1,Three\nhttp://tv:8000/ace/getstream?id={ID}\n\
             #EXTINF:-1,Four\nhttp://tv:8000/ace/getstream?id={ID}\n\
             #EXTINF:-1,Five\nhttp://tv:8000/ace/getstream?infohash={ID}\n\
             #EXTINF:-1,Six\nhttp://other/video.ts\nacestream://nothex\n\
             #EXTVLCOPT:http-user-agent=x\n"
        );
        assert_eq!(out.text, want);
        let hls = rewrite(input.as_bytes(), "http://tv", Format::Hls, Some("a b")).unwrap();
        assert!(hls.text.contains(&format!(
            "http://tv/ace/manifest.m3u8?id={ID}&token=a%20b\r\n"
        )));
    }

    #[test]
    fn hostile_input_is_refused_with_its_reason() {
        assert!(matches!(
            rewrite(b"#EXTM3U\n\0\x01", "http://h", Format::Ts, None),
            Err(PlaylistError::NotText(m)) if m.contains("NUL byte at offset 8")
        ));
        assert!(matches!(
            rewrite(b"#EXTM3U\n\xff\xfe", "http://h", Format::Ts, None),
            Err(PlaylistError::NotText(_))
        ));
        let long = format!("#EXTM3U\n{}\n", "a".repeat(MAX_LINE + 1));
        assert_eq!(
            rewrite(long.as_bytes(), "http://h", Format::Ts, None).unwrap_err(),
            PlaylistError::LineTooLong {
                line: 2,
                len: MAX_LINE + 1
            }
        );
        let huge = vec![b'a'; MAX_BYTES + 1];
        assert_eq!(
            rewrite(&huge, "http://h", Format::Ts, None).unwrap_err(),
            PlaylistError::TooLarge
        );
    }

    #[test]
    fn public_addresses_are_told_apart() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn only_listed_hosts_and_no_private_address_by_pattern() {
        let policy = FetchPolicy {
            allowed_hosts: vec!["*".into(), "127.0.0.1".into(), "*.example.com".into()],
            timeout: Duration::from_secs(2),
        };
        let check = |u: &str| {
            let url = Url::parse(u).unwrap();
            let policy = policy.clone();
            async move { policy.check(&url).await }
        };
        assert!(
            check("http://127.0.0.1:9/x.m3u8").await.is_ok(),
            "listed exactly"
        );
        for refused in [
            "http://localhost:9/x",
            "http://10.0.0.1/x",
            "http://169.254.169.254/latest",
            "http://[::1]:9/x",
        ] {
            assert!(
                matches!(check(refused).await, Err(FetchError::NotAllowed(_))),
                "{refused}"
            );
        }
        assert!(matches!(
            check("ftp://127.0.0.1/x").await,
            Err(FetchError::BadUrl(_))
        ));
        let strict = FetchPolicy {
            allowed_hosts: vec!["lists.example.com".into()],
            timeout: Duration::from_secs(2),
        };
        assert!(matches!(
            strict.check(&Url::parse("http://evil.example.net/x").unwrap()).await,
            Err(FetchError::NotAllowed(m)) if m.contains("not in PLAYLIST_ALLOWED_HOSTS")
        ));
    }
}
