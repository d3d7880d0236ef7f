//! The Origin policy of every browser-facing transport (`[socket] check_origin`): which web
//! pages may open a socket here. A browser always names the page's origin on a WebSocket
//! upgrade and cannot be made to lie about it, so this is what stops a foreign page from using
//! a signed-in visitor's cookies or tokens against the server. Clients that send no Origin at
//! all (native apps, servers, the load tool) are not browsers running someone's page and are
//! let through, as Phoenix does.
//!
//! - `true` (the default): the Origin's host must be the request's own `Host` (scheme and port
//!   aside), i.e. the page was served by this server.
//! - `false`: no check.
//! - a list: an Origin matching any entry is allowed. An entry names a scheme, host and port,
//!   and a part it leaves out matches anything: `"https://app.example.com"`,
//!   `"//app.example.com:8443"`; a host `*.example.com` matches `example.com` and every
//!   subdomain of it.

use actix_web::http::Uri;
use actix_web::http::uri::Authority;
use serde::Deserialize;

/// Where an allowed Origin may come from (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OriginPolicy {
    /// Any origin.
    Any,
    /// The request's own host.
    #[default]
    SameHost,
    /// Any origin matching one of these.
    List(Vec<AllowedOrigin>),
}

/// One entry of an origin list; `None` parts match anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigin {
    scheme: Option<String>,
    host: HostPattern,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`: `example.com` and its subdomains.
    Domain(String),
}

/// Why a `check_origin` entry cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("check_origin entry {entry:?}: {why}")]
pub struct OriginEntryError {
    entry: String,
    why: &'static str,
}

impl AllowedOrigin {
    /// Parses `"scheme://host[:port]"` or `"//host[:port]"`.
    pub fn parse(entry: &str) -> Result<AllowedOrigin, OriginEntryError> {
        let refused = |why| OriginEntryError { entry: entry.to_owned(), why };
        let (scheme, rest) = match entry.split_once("//") {
            Some(("", rest)) => (None, rest),
            Some((scheme, rest)) => {
                let scheme = scheme.strip_suffix(':').ok_or_else(|| refused("expected scheme://host"))?;
                let letter_first = scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
                if !letter_first || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
                    return Err(refused("the scheme is not a URL scheme"));
                }
                (Some(scheme.to_ascii_lowercase()), rest)
            }
            None => return Err(refused("expected scheme://host or //host")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(refused("an origin is a scheme, a host and a port only"));
        }
        let authority: Authority = rest.parse().map_err(|_| refused("the host is not a valid host[:port]"))?;
        let host = authority.host().to_ascii_lowercase();
        if host.is_empty() {
            return Err(refused("no host"));
        }
        let host = match host.strip_prefix("*.") {
            Some(domain) if !domain.is_empty() && !domain.contains('*') => HostPattern::Domain(domain.to_owned()),
            _ if host.contains('*') => return Err(refused("a wildcard may only be a leading *.")),
            _ => HostPattern::Exact(host),
        };
        Ok(AllowedOrigin { scheme, host, port: authority.port_u16() })
    }

    fn matches(&self, origin: &Origin) -> bool {
        let host = match &self.host {
            HostPattern::Exact(host) => origin.host == *host,
            HostPattern::Domain(domain) => {
                origin.host == *domain
                    || origin.host.strip_suffix(domain.as_str()).is_some_and(|sub| sub.ends_with('.'))
            }
        };
        host && self.scheme.as_ref().is_none_or(|s| *s == origin.scheme)
            && self.port.is_none_or(|p| Some(p) == origin.port)
    }
}

/// An `Origin` header's parts, lowercased.
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    fn parse(header: &str) -> Option<Origin> {
        let uri: Uri = header.parse().ok()?;
        let (scheme, authority) = (uri.scheme_str()?, uri.authority()?);
        Some(Origin {
            scheme: scheme.to_ascii_lowercase(),
            host: authority.host().to_ascii_lowercase(),
            port: authority.port_u16(),
        })
    }
}

impl OriginPolicy {
    /// Whether a request with this `Origin` header (if any) and `Host` header may connect.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        // No Origin: not a page in a browser (see the module doc).
        let Some(origin) = origin else { return true };
        // `null` (a sandboxed frame, a file:// page) and anything unparsable name no origin a
        // check could allow.
        let parsed = || Origin::parse(origin);
        match self {
            OriginPolicy::Any => true,
            OriginPolicy::SameHost => parsed().is_some_and(|origin| {
                host.and_then(|h| h.parse::<Authority>().ok())
                    .is_some_and(|h| h.host().eq_ignore_ascii_case(&origin.host))
            }),
            OriginPolicy::List(allowed) => parsed().is_some_and(|origin| allowed.iter().any(|a| a.matches(&origin))),
        }
    }
}

/// The config's form: `true`, `false` or a list of origins.
#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Check(bool),
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for OriginPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Raw::deserialize(deserializer)
            .map_err(|_| serde::de::Error::custom("check_origin is true, false or a list of origins"))?
        {
            Raw::Check(true) => Ok(OriginPolicy::SameHost),
            Raw::Check(false) => Ok(OriginPolicy::Any),
            Raw::List(entries) => entries
                .iter()
                .map(|e| AllowedOrigin::parse(e))
                .collect::<Result<_, _>>()
                .map(OriginPolicy::List)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> OriginPolicy {
        OriginPolicy::List(entries.iter().map(|e| AllowedOrigin::parse(e).expect("valid entry")).collect())
    }

    #[test]
    fn same_host_compares_hosts_only() {
        let policy = OriginPolicy::SameHost;
        assert!(policy.allows(Some("http://chat.example.com"), Some("chat.example.com:4000")));
        assert!(policy.allows(Some("https://CHAT.example.com:8443"), Some("chat.example.com")));
        assert!(!policy.allows(Some("http://evil.example"), Some("chat.example.com")));
        assert!(!policy.allows(Some("http://chat.example.com.evil.example"), Some("chat.example.com")));
        assert!(!policy.allows(Some("null"), Some("chat.example.com")));
        assert!(!policy.allows(Some("http://chat.example.com"), None), "no Host to compare with");
        assert!(policy.allows(None, Some("chat.example.com")), "no Origin: not a browser page");
        assert!(OriginPolicy::Any.allows(Some("http://evil.example"), None));
    }

    #[test]
    fn list_entries_match_by_the_parts_they_name() {
        let policy = list(&["https://app.example.com", "//another.com:888", "//*.other.com"]);
        assert!(policy.allows(Some("https://app.example.com"), None));
        assert!(!policy.allows(Some("http://app.example.com"), None), "scheme named: https only");
        assert!(policy.allows(Some("https://app.example.com:9000"), None), "port left out: any");
        assert!(policy.allows(Some("http://another.com:888"), None));
        assert!(policy.allows(Some("wss://another.com:888"), None), "scheme left out: any");
        assert!(!policy.allows(Some("http://another.com"), None), "port named: 888 only");
        assert!(policy.allows(Some("https://other.com"), None), "*. takes the bare domain");
        assert!(policy.allows(Some("https://a.b.other.com"), None), "and any subdomain");
        assert!(!policy.allows(Some("https://notother.com"), None));
        assert!(!policy.allows(Some("https://evil.example"), None));
        assert!(policy.allows(None, None));
    }

    #[test]
    fn bad_entries_are_refused_at_start_up_by_name() {
        for bad in ["example.com", "https:/x", "//", "//a*.b.com", "https://x.com/path", "1ttp://x.com", "//*."] {
            assert!(AllowedOrigin::parse(bad).is_err(), "{bad}");
        }
        let parsed: OriginPolicy = toml::from_str::<toml::Table>("v = [\"//*.example.com\"]")
            .expect("toml")
            .remove("v")
            .expect("v")
            .try_into()
            .expect("a list parses");
        assert_eq!(parsed, list(&["//*.example.com"]));
        let yes: OriginPolicy = toml::Value::Boolean(true).try_into().expect("true");
        assert_eq!(yes, OriginPolicy::SameHost);
        let no: OriginPolicy = toml::Value::Boolean(false).try_into().expect("false");
        assert_eq!(no, OriginPolicy::Any);
        assert!(toml::Value::Integer(3).try_into::<OriginPolicy>().is_err());
    }
}
