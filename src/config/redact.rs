//! Redaction: what secrets (passwords in URLs, registry credentials, secret librdkafka properties) are replaced
//! with in `Debug` output, `print-config`, log lines and error messages.
//!
//! Invariant: every function here errs on the side of hiding; none returns a secret it was given.

/// What secrets are replaced with in `Debug` output, redacted configurations and log lines.
pub const REDACTED: &str = "***";

/// Whether a librdkafka property holds a secret: its key contains `password`, `secret`, `sasl.jaas`,
/// `sasl.oauthbearer.config` or `ssl.key` (case-insensitive).
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "sasl.jaas", "sasl.oauthbearer.config", "ssl.key"].iter().any(|s| key.contains(s))
}

/// [`REDACTED`] for a non-empty secret, the empty string for an empty one (so "not set" stays visible).
pub fn redact_secret(secret: &str) -> String {
    if secret.is_empty() { String::new() } else { REDACTED.to_owned() }
}

/// `url` with the password of its user info and the values of query parameters whose name contains `password`
/// replaced by `***`, for logs and messages. Works on any `scheme://user:pass@host...` string, including
/// multi-host PostgreSQL URLs that a strict URL parser rejects; a string that is not a URL comes back unchanged
/// apart from `user:pass@` prefixes.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    // The user info ends at the last '@' of the authority; a password with an unencoded '/', '?' or '#' ends the
    // authority early, so then take the last '@' anywhere when what precedes it looks like `user:...`.
    let at = rest.get(..authority_end).and_then(|authority| authority.rfind('@')).or_else(|| {
        rest.rfind('@').filter(|&at| {
            rest.get(..at)
                .and_then(|userinfo| userinfo.split_once(':'))
                .is_some_and(|(user, _)| !user.contains(['/', '?', '#']))
        })
    });
    let (userinfo, after) = match at {
        Some(at) => (rest.get(..at), rest.get(at + 1..).unwrap_or("")),
        None => (None, rest),
    };
    let userinfo = match userinfo {
        Some(userinfo) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:{REDACTED}@"),
            None => format!("{userinfo}@"),
        },
        None => String::new(),
    };
    let host_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (host, tail) = after.split_at(host_end);
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.to_ascii_lowercase().contains("password") => {
                        format!("{k}={REDACTED}")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            let mut out = format!("{path}?{}", query.join("&"));
            if let Some(f) = fragment {
                out.push('#');
                out.push_str(f);
            }
            out
        }
        None => tail.to_owned(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{userinfo}{host}{tail}"),
        None => format!("{userinfo}{host}{tail}"),
    }
}

/// `text` (a TOML error with a quoted source line) with secrets removed: the value of a line whose key names a
/// secret (see [`is_secret_property`]), and the password of every URL.
pub(crate) fn scrub_secrets(text: &str) -> String {
    let scrub_line = |line: &str| {
        if let Some((key, _)) = line.split_once('=') {
            if is_secret_property(key) {
                return format!("{key}= {REDACTED}");
            }
        }
        let mut out = String::with_capacity(line.len());
        let mut token = String::new();
        let flush = |token: &mut String, out: &mut String| {
            if token.contains("://") || token.contains('@') {
                out.push_str(&redact_url(token));
            } else {
                out.push_str(token);
            }
            token.clear();
        };
        for c in line.chars() {
            if c.is_whitespace() || matches!(c, '"' | '\'' | '`') {
                flush(&mut token, &mut out);
                out.push(c);
            } else {
                token.push(c);
            }
        }
        flush(&mut token, &mut out);
        out
    };
    text.lines().map(scrub_line).collect::<Vec<_>>().join("\n")
}

pub(crate) fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}
