//! The one glob matcher: `*` matches any run of bytes (empty included); every other byte
//! matches itself. Used for channel patterns (server API `channels`) and origin patterns
//! (`client.allowed_origins`, matched on lower-cased text).
//!
//! Greedy with a single backtrack point, so matching is O(pattern × text) at worst; a
//! recursive matcher is exponential on patterns such as `*a*a*a*a*b`, which anyone holding
//! the API key could send.

/// Whether `text` matches `pattern`.
pub fn matches(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was and the text position it currently stands for.
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            backtrack = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star, from)) = backtrack {
            p = star + 1;
            t = from + 1;
            backtrack = Some((star, from + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn stars_match_any_run() {
        assert!(matches("*", ""));
        assert!(matches("*", "anything"));
        assert!(matches("chat:*", "chat:room"));
        assert!(matches("chat:*", "chat:"));
        assert!(!matches("chat:*", "news:room"));
        assert!(matches("*:room", "chat:room"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
        assert!(matches("https://*.example.com", "https://app.example.com"));
        assert!(!matches(
            "https://*.example.com",
            "https://example.com.evil.com"
        ));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exactly"));
        assert!(!matches("", "x"));
        assert!(matches("", ""));
        assert!(matches("a**b", "ab"));
    }

    #[test]
    fn pathological_patterns_stay_fast() {
        let text = "a".repeat(10_000);
        let pattern = format!("{}b", "*a".repeat(50));
        let started = std::time::Instant::now();
        assert!(!matches(&pattern, &text));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}
