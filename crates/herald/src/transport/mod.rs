//! Transport adapters: each turns a socket or an HTTP request into a [`crate::session::Session`]
//! and drains the session's queue back to the client. Adapters never import each other.

pub mod websocket;

use http::HeaderMap;

/// Whether a browser's `Origin` may open a connection (protection against cross-site
/// WebSocket hijacking). No Origin header (not a browser) is allowed; otherwise the origin
/// must match one of `allowed` ("*", exact, or with `*` wildcards) or the request's Host.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers
        .get(http::header::ORIGIN)
        .and_then(|o| o.to_str().ok())
    else {
        return true;
    };
    let origin = origin.to_ascii_lowercase();
    if allowed
        .iter()
        .any(|pattern| wildcard_match(&pattern.to_ascii_lowercase(), &origin))
    {
        return true;
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(&origin);
    !host.is_empty() && origin_host == host.to_ascii_lowercase()
}

/// Glob match where `*` stands for any run of characters.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(http::header::ORIGIN, o.parse().unwrap());
        }
        h.insert(http::header::HOST, host.parse().unwrap());
        h
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://*.example.com".to_string()];
        assert!(origin_allowed(&headers(None, "h"), &allowed));
        assert!(origin_allowed(
            &headers(Some("https://app.example.com"), "h"),
            &allowed
        ));
        assert!(!origin_allowed(
            &headers(Some("https://evil.com"), "h"),
            &allowed
        ));
        assert!(!origin_allowed(
            &headers(Some("https://example.com.evil.com"), "h"),
            &allowed
        ));
        assert!(origin_allowed(
            &headers(Some("http://localhost:8000"), "localhost:8000"),
            &[]
        ));
        assert!(origin_allowed(
            &headers(Some("https://x.org"), "h"),
            &["*".to_string()]
        ));
    }
}
