//! Building an `object_store` client for a URL, and turning its errors into the core's.

use std::io::ErrorKind;
use std::path::Path;
use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::http::HttpBuilder;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::credentials::profile_from_files;
use super::options::RemoteOptions;
use super::redact::{display_url, redact};
use crate::error::{Error, Result};

/// A store, the object's location in it, the URL to show in errors, and the secret values that
/// must never appear in them.
pub struct Resolved {
    pub store: Arc<dyn ObjectStore>,
    pub location: ObjectPath,
    pub name: String,
    pub secrets: Vec<String>,
}

pub fn resolve(url: &str, options: &RemoteOptions) -> Result<Resolved> {
    let name = display_url(url);
    let invalid = |why: &str| Error::InvalidArgument(format!("{name}: {why}"));
    let parsed = url::Url::parse(url).map_err(|e| invalid(&format!("not a valid URL ({e})")))?;
    if parsed.query().is_some() {
        // Presigned URLs would need their query string on every range request, which the
        // object_store HTTP client does not carry; say so rather than fail with a 403 later.
        return Err(invalid("URLs with a query string (presigned URLs) are not supported; use s3:// with credentials"));
    }
    let client = client_options(options);
    let retry = RetryConfig {
        backoff: BackoffConfig { init_backoff: std::time::Duration::from_millis(100), ..Default::default() },
        max_retries: options.max_retries,
        retry_timeout: options.retry_timeout,
    };
    match parsed.scheme() {
        "s3" => {
            let bucket = parsed.host_str().filter(|b| !b.is_empty()).ok_or_else(|| invalid("no bucket in the URL"))?;
            let key = parsed.path().trim_start_matches('/');
            if key.is_empty() {
                return Err(invalid("no object key in the URL"));
            }
            let (builder, secrets) = s3_builder(client)?;
            let store = builder
                .with_bucket_name(bucket)
                .with_retry(retry)
                .build()
                .map_err(|e| invalid(&redact(&e.to_string(), &secrets)))?;
            let location = ObjectPath::from_url_path(key).map_err(|e| invalid(&e.to_string()))?;
            Ok(Resolved { store: Arc::new(store), location, name, secrets })
        }
        "http" | "https" => {
            let host = parsed.host_str().ok_or_else(|| invalid("no host in the URL"))?;
            let base = match parsed.port() {
                Some(p) => format!("{}://{host}:{p}", parsed.scheme()),
                None => format!("{}://{host}", parsed.scheme()),
            };
            let path = parsed.path().trim_start_matches('/');
            if path.is_empty() {
                return Err(invalid("no path in the URL"));
            }
            let store = HttpBuilder::new()
                .with_url(base)
                .with_client_options(client.with_allow_http(true))
                .with_retry(retry)
                .build()
                .map_err(|e| invalid(&e.to_string()))?;
            let location = ObjectPath::from_url_path(path).map_err(|e| invalid(&e.to_string()))?;
            Ok(Resolved { store: Arc::new(store), location, name, secrets: Vec::new() })
        }
        other => Err(invalid(&format!("scheme {other:?} is not one of s3, http, https"))),
    }
}

fn client_options(options: &RemoteOptions) -> ClientOptions {
    ClientOptions::new()
        .with_timeout(options.timeout)
        .with_connect_timeout(options.connect_timeout)
        // Many ranges run at once against one host: keep their connections for reuse.
        .with_pool_max_idle_per_host(options.concurrency.max(16))
}

/// The AWS way: environment first (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`, ...), then the
/// shared profile files, then (with neither) anonymous access when `AWS_SKIP_SIGNATURE` or
/// `AWS_EC2_METADATA_DISABLED` says so, else the instance/container credential providers.
fn s3_builder(client: ClientOptions) -> Result<(AmazonS3Builder, Vec<String>)> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    // Client options first: `with_allow_http` below lives in them and must not be overwritten.
    let mut builder = AmazonS3Builder::from_env().with_client_options(client);
    let mut secrets: Vec<String> = ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"].iter().filter_map(|k| env(k)).collect();
    let profile = profile_from_files();
    let has_env_keys = env("AWS_ACCESS_KEY_ID").is_some() && env("AWS_SECRET_ACCESS_KEY").is_some();
    if !has_env_keys {
        if let (Some(id), Some(secret)) = (&profile.access_key_id, &profile.secret_access_key) {
            builder = builder.with_access_key_id(id).with_secret_access_key(secret);
            secrets.extend([id.clone(), secret.clone()]);
            if let Some(token) = &profile.session_token {
                builder = builder.with_token(token);
                secrets.push(token.clone());
            }
        } else if is_true(env("AWS_EC2_METADATA_DISABLED")) {
            builder = builder.with_skip_signature(true);
        }
    }
    let region = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")).or(profile.region).unwrap_or_else(|| "us-east-1".into());
    builder = builder.with_region(region);
    let endpoint = env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL")).or(profile.endpoint_url);
    if let Some(endpoint) = endpoint {
        builder = builder.with_config(AmazonS3ConfigKey::Endpoint, &endpoint);
        if endpoint.starts_with("http://") {
            builder = builder.with_allow_http(true);
        }
    }
    Ok((builder, secrets))
}

fn is_true(v: Option<String>) -> bool {
    v.is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

/// A store error as a core error naming `name`: missing is `NotFound`, denied or unauthenticated
/// is `PermissionDenied`, a failed `If-Match` is `ObjectChanged`, a timeout is `TimedOut`.
pub fn store_error(name: &str, op: &'static str, err: object_store::Error, secrets: &[String]) -> Error {
    use object_store::Error as E;
    let text = redact(&error_chain(&err), secrets);
    let kind = match &err {
        E::NotFound { .. } => ErrorKind::NotFound,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => ErrorKind::PermissionDenied,
        E::Precondition { .. } | E::NotModified { .. } => {
            return Error::ObjectChanged { path: name.into(), reason: format!("{op}: the pinned ETag no longer matches: {text}") };
        }
        _ if text.contains("timed out") || text.contains("Timeout") => ErrorKind::TimedOut,
        _ => ErrorKind::Other,
    };
    Error::io(Path::new(name), op, std::io::Error::new(kind, text))
}

/// An error and all its sources on one line (the top level alone often hides the cause).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
