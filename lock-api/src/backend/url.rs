//! Connection URLs and driver messages as they may be shown: without passwords.

use std::borrow::Cow;

/// Query parameters that carry a secret.
const SECRET_PARAMS: [&str; 3] = ["password", "pass", "passwd"];

/// `url` with its password (user-info and query parameters such as
/// `?password=`) replaced by `***`, for `Debug`, logs and error messages.
///
/// Parsed with the `url` crate. A URL it cannot parse — a multi-host
/// `redis+cluster://a:1,b:2/`, say — has everything between `://` and the
/// last `@` of its authority masked after the first `:`; text with no
/// `://` at all is not shown (it may be a bare secret).
///
/// ```
/// use distlock_api::backend::redact_url;
///
/// assert_eq!(redact_url("redis://user:s3cret@host:6379/2"), "redis://user:***@host:6379/2");
/// assert_eq!(redact_url("postgres://app@db/shop?password=s3cret&sslmode=require"),
///            "postgres://app@db/shop?password=***&sslmode=require");
/// assert_eq!(redact_url("redis+cluster://:s3cret@a:1,b:2/"), "redis+cluster://:***@a:1,b:2/");
/// assert_eq!(redact_url("s3cret"), "<unparsable URL>");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsable URL>".to_owned();
    };
    if let Ok(mut parsed) = ::url::Url::parse(url) {
        if parsed.password().is_some() {
            let _ = parsed.set_password(Some("***"));
        }
        if parsed.query_pairs().any(|(key, _)| is_secret_param(&key)) {
            let pairs: Vec<(String, String)> = parsed
                .query_pairs()
                .map(|(key, value)| {
                    let value = if is_secret_param(&key) {
                        "***".to_owned()
                    } else {
                        value.into_owned()
                    };
                    (key.into_owned(), value)
                })
                .collect();
            parsed.query_pairs_mut().clear().extend_pairs(pairs);
            // `***` is kept readable rather than percent-encoded.
            return parsed.to_string().replace("%2A%2A%2A", "***");
        }
        return parsed.to_string();
    }
    // Not a URL the `url` crate accepts: mask by position.
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_len);
    let authority: Cow<'_, str> = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{hosts}").into(),
            None => authority.into(),
        },
        None => authority.into(),
    };
    format!("{scheme}://{authority}{}", redact_query(tail))
}

/// `text` (a driver's error message, say) with `url`'s password masked,
/// both as written in the URL and percent-decoded.
///
/// ```
/// use distlock_api::backend::redact_secret;
///
/// let url = "postgres://app:s3cr%40t@db/shop";
/// assert_eq!(redact_secret("auth failed for s3cr@t (s3cr%40t)", url), "auth failed for *** (***)");
/// assert_eq!(redact_secret("no secret here", "postgres://app@db/shop"), "no secret here");
/// ```
pub fn redact_secret(text: &str, url: &str) -> String {
    let mut out = text.to_owned();
    for secret in secrets(url) {
        if !secret.is_empty() {
            out = out.replace(&secret, "***");
        }
    }
    out
}

/// The URL's secrets, as written and percent-decoded, longest first (so a
/// secret that contains another is masked whole).
fn secrets(url: &str) -> Vec<String> {
    let mut raw = Vec::new();
    if let Some(rest) = url.split_once("://").map(|(_, rest)| rest) {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && let Some((_, password)) = userinfo.split_once(':')
        {
            raw.push(password.to_owned());
        }
        if let Some((_, query)) = rest.split_once('?') {
            let query = query.split('#').next().unwrap_or("");
            for pair in query.split('&') {
                if let Some((key, value)) = pair.split_once('=')
                    && is_secret_param(key)
                {
                    raw.push(value.to_owned());
                }
            }
        }
    }
    let mut all = Vec::new();
    for secret in raw {
        let decoded = percent_encoding::percent_decode_str(&secret)
            .decode_utf8_lossy()
            .into_owned();
        if decoded != secret {
            all.push(decoded);
        }
        all.push(secret);
    }
    all.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    all
}

fn is_secret_param(key: &str) -> bool {
    SECRET_PARAMS
        .iter()
        .any(|secret| key.eq_ignore_ascii_case(secret))
}

fn redact_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let query = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret_param(key) => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&");
    format!("{path}?{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive() {
        for (url, shown) in [
            (
                "redis://user:s3cret@host:6379/2",
                "redis://user:***@host:6379/2",
            ),
            ("redis://:s3cret@host", "redis://:***@host"),
            ("rediss://host:6380", "rediss://host:6380"),
            ("redis://user@host", "redis://user@host"),
            (
                "redis+unix:///tmp/r.sock?db=1&pass=s3cret",
                "redis+unix:///tmp/r.sock?db=1&pass=***",
            ),
            (
                "redis+redlock://u:s3cret@a:1,b:2,c:3/0?protocol=resp3",
                "redis+redlock://u:***@a:1,b:2,c:3/0?protocol=resp3",
            ),
            (
                "postgres://app:s3cr%40t@db:5432/x",
                "postgres://app:***@db:5432/x",
            ),
            ("redis://user:s3cret@[::1", "redis://user:***@[::1"),
            (
                "redis://user:s3cret@host:notaport",
                "redis://user:***@host:notaport",
            ),
            ("s3cret", "<unparsable URL>"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
            assert!(!redact_url(url).contains("s3cret"), "{url}");
        }
    }

    #[test]
    fn messages_lose_the_secret_in_every_spelling() {
        let url = "postgres://app:s3cr%40t@db:5432/x?sslpassword=other&password=p%2Fw";
        assert_eq!(
            redact_secret("bad s3cr%40t and s3cr@t, p/w, p%2Fw", url),
            "bad *** and ***, ***, ***"
        );
        assert_eq!(redact_secret("text", "postgres://db/x"), "text");
    }
}
