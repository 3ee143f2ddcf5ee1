//! Connection JWTs (HS256) signed with the server's `client.token.hmac_secret_key`, as both
//! servers verify them: `sub` the user, `exp`, and `channels` for server-side subscriptions
//! (how the unidirectional transports get their channels).

use serde::Serialize;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    channels: &'a [String],
}

/// A token for `user`, valid for a day, subscribing the connection to `channels`.
pub fn connection_token(secret: &str, user: &str, channels: &[String]) -> String {
    let exp = crate::payload::now_ns() / 1_000_000_000 + 24 * 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            sub: user,
            exp,
            channels,
        },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_carry_the_claims() {
        let t = super::connection_token("s3cret", "bench", &["a:1".to_string()]);
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.required_spec_claims.clear();
        let d = jsonwebtoken::decode::<serde_json::Value>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
            &v,
        )
        .expect("valid token");
        assert_eq!(d.claims["sub"], "bench");
        assert_eq!(d.claims["channels"][0], "a:1");
    }
}
