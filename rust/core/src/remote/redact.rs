//! Keeping secrets out of error messages. A URL is shown without its query string or user info
//! (presigned URLs carry signatures there), and any credential value that the store was built
//! with is blanked out of every message, whatever layer produced it.

const HIDDEN: &str = "<redacted>";

/// `url` without user info, query string or fragment: what errors and logs may show.
pub fn display_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        // Not a URL the parser takes: keep only what precedes any query string.
        Err(_) => url.split(['?', '#']).next().unwrap_or_default().to_owned(),
    }
}

/// `message` with every secret replaced and every URL's query string dropped.
pub fn redact(message: &str, secrets: &[String]) -> String {
    let mut out = message.to_owned();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s.as_str(), HIDDEN);
    }
    strip_queries(&out)
}

/// Drop the query part of every `scheme://...?...` run in `text` (up to the next whitespace).
fn strip_queries(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at);
        out.push_str(before);
        let end = after.find(char::is_whitespace).unwrap_or(after.len());
        let (url, tail) = after.split_at(end);
        match url.find('?') {
            Some(q) => {
                out.push_str(&url[..q]);
                out.push('?');
                out.push_str(HIDDEN);
            }
            None => out.push_str(url),
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_queries_and_user_info() {
        assert_eq!(display_url("https://u:p@h.example/a/b.snap?X-Amz-Signature=abc#f"), "https://h.example/a/b.snap");
        assert_eq!(display_url("s3://bucket/key.snap"), "s3://bucket/key.snap");
    }

    #[test]
    fn secrets_and_query_strings_are_blanked() {
        let msg = "GET http://127.0.0.1:9/b/k?sig=SECRETSIG failed: key wJalrSECRETKEY rejected";
        let out = redact(msg, &["wJalrSECRETKEY".into(), "".into()]);
        assert!(!out.contains("SECRETSIG") && !out.contains("wJalrSECRETKEY"), "{out}");
        assert!(out.contains("http://127.0.0.1:9/b/k?<redacted>"), "{out}");
    }
}
