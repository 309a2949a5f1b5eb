//! Bearer tokens: with `api_tokens_file` set, every request but
//! `/healthz` must carry `Authorization: Bearer TOKEN` with one of the
//! file's tokens, or it is a 401 `unauthorized` problem.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::paths;
use super::problem::ProblemKind;
use super::types::Problem;

/// Shortest token accepted in a tokens file: a guessable token is no
/// better than none.
pub const MIN_TOKEN_CHARS: usize = 16;

/// A tokens file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("api_tokens_file {path}: {message}")]
pub struct TokensError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong (never the tokens themselves).
    pub message: String,
}

/// The tokens the API accepts, each under its name, kept as SHA-256
/// digests so a comparison takes the same time however much of a guess
/// matches.
#[derive(Clone)]
pub struct Tokens {
    by_digest: Arc<Vec<([u8; 32], String)>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.by_digest.iter().map(|(_, n)| n.as_str()).collect();
        f.debug_struct("Tokens").field("names", &names).finish()
    }
}

impl Tokens {
    /// Reads a YAML file of `name: token` entries.
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("tokens.yaml");
    /// std::fs::write(&path, "ci: 0123456789abcdef0123\n").unwrap();
    /// let tokens = tasker_server::api::Tokens::load(&path).unwrap();
    /// assert_eq!(tokens.names(), ["ci"]);
    /// ```
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let error = |message: String| TokensError {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        if let Some(mode) = tasker_config::open_to_others(path) {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:o}"),
                "api_tokens_file is readable by other users, who can then call the API \
                 as any of its tokens; chmod 600 it"
            );
        }
        // serde_norway's messages quote the text they choke on: a token.
        let Entries(pairs) = serde_norway::from_str(&text)
            .map_err(|_| error("expected a YAML mapping of token names to tokens".into()))?;
        let mut entries = BTreeMap::new();
        for (name, token) in pairs {
            // A map would keep the last silently, and the first entry's
            // holder would get 401s with no word why.
            if entries.insert(name.clone(), token).is_some() {
                return Err(error(format!("token name `{name}` is listed twice")));
            }
        }
        Tokens::from_entries(entries).map_err(error)
    }

    /// Tokens from `name → token` entries.
    pub fn from_entries(entries: BTreeMap<String, String>) -> Result<Tokens, String> {
        if entries.is_empty() {
            return Err("lists no token".into());
        }
        let mut by_digest = Vec::with_capacity(entries.len());
        for (name, token) in entries {
            // Only what an HTTP header carries as text: a token of other
            // characters was taken and could never be presented.
            let printable = |c: char| c.is_ascii_graphic();
            if token.chars().count() < MIN_TOKEN_CHARS || !token.chars().all(printable) {
                return Err(format!(
                    "token `{name}` must be at least {MIN_TOKEN_CHARS} characters of printable \
                     ASCII without spaces (e.g. `openssl rand -hex 24`)"
                ));
            }
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            if by_digest.iter().any(|(d, _)| *d == digest) {
                return Err(format!("token `{name}` is listed under another name too"));
            }
            by_digest.push((digest, name));
        }
        Ok(Tokens {
            by_digest: Arc::new(by_digest),
        })
    }

    /// The tokens' names.
    pub fn names(&self) -> Vec<&str> {
        self.by_digest.iter().map(|(_, n)| n.as_str()).collect()
    }

    /// The name of `token`, when it is one of these.
    pub fn name_of(&self, token: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        // Every entry is compared in full, so the time taken does not say
        // which entry (or how many bytes of one) matched.
        for (candidate, name) in self.by_digest.iter() {
            let mut diff = 0u8;
            for (a, b) in candidate.iter().zip(digest.iter()) {
                diff |= a ^ b;
            }
            if diff == 0 {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// A tokens file's entries in the order written, names repeated as they
/// are.
struct Entries(Vec<(String, String)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping of token names to tokens")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Entries, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry()? {
                    pairs.push(pair);
                }
                Ok(Entries(pairs))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// On a server without tokens, says once that a request carried one: its
/// client expects the API to be closed to others, and it is open. (An
/// operator who left `api_tokens_file` out by mistake heard nothing, and
/// every client's token was accepted unread.)
/// A server without tokens (and not `api_trusted_network`) answers only
/// requests addressed to `localhost` or to an IP address. Its API is open
/// to whatever runs on its host, a browser included: a web page whose
/// domain name the attacker points at 127.0.0.1 (DNS rebinding) reaches it
/// as its own origin and could start and cancel tasks and read every
/// task's context. Such a request names the attacker's domain in `Host`.
pub(crate) async fn require_local_host(request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|v| v.to_str().unwrap_or("\u{fffd}").to_string())
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_string()));
    match host {
        Some(host) if !is_local_host(&host) => {
            tracing::debug!(host = %super::problem::quote(&host), "refused a request for another host");
            Problem::new(
                ProblemKind::Other(axum::http::StatusCode::MISDIRECTED_REQUEST),
                format!(
                    "this server has no api_tokens_file, so it answers only requests addressed to \
                     localhost or an IP address, not `{}` (a web page could otherwise reach it \
                     through DNS rebinding): set api_tokens_file, or have a proxy in front send \
                     Host: localhost",
                    super::problem::quote(&host)
                ),
            )
            .into_response()
        }
        // Required of HTTP/1.1 (RFC 9112 §3.2); without it the check above
        // had nothing to check and let the request through.
        None if request.version() == axum::http::Version::HTTP_11 => Problem::new(
            ProblemKind::Other(axum::http::StatusCode::BAD_REQUEST),
            "an HTTP/1.1 request must carry a Host header (RFC 9112 §3.2)",
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

/// Whether a `Host` value (with or without its port) names `localhost` or
/// an IP address.
fn is_local_host(host: &str) -> bool {
    if let Some(v6) = host.strip_prefix('[') {
        return v6
            .split_once(']')
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

pub(crate) async fn note_unchecked_token(request: Request, next: Next) -> Response {
    static NOTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if request.headers().contains_key(header::AUTHORIZATION)
        && !NOTED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        tracing::warn!(
            "a request carried an Authorization header, but this server has no api_tokens_file: \
             it accepts every request without a token (set api_tokens_file to require one)"
        );
    }
    next.run(request).await
}

/// Lets a request through only with a valid bearer token (`/healthz`
/// always).
pub(crate) async fn require_token(
    State((tokens, unauthorized)): State<(Tokens, prometheus_client::metrics::counter::Counter)>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path == paths::HEALTHZ || crate::dashboard::is_public(path) {
        return next.run(request).await;
    }
    let mut values = request.headers().get_all(header::AUTHORIZATION).iter();
    let presented = values.next().map(|v| v.to_str().ok());
    // Two headers may be two credentials; which one a proxy or this server
    // reads is not for the client to guess.
    let several = values.next().is_some();
    // Each refusal says where a tasker client's token comes from: the
    // person reading it set up a client, not an HTTP header.
    // The challenge's `error` (RFC 6750 §3.1) tells a client whether its
    // token was refused or its request was malformed; none when no token
    // came.
    const INVALID_REQUEST: &str = "Bearer realm=\"tasker\", error=\"invalid_request\"";
    const INVALID_TOKEN: &str = "Bearer realm=\"tasker\", error=\"invalid_token\"";
    let (detail, challenge) = match presented {
        _ if several => (
            "send one Authorization header, not several",
            INVALID_REQUEST,
        ),
        None => (
            "this server requires a bearer token: send `Authorization: Bearer TOKEN` \
                 (tasker's clients and CLI send their `api_token` setting, `TASKER_API_TOKEN`)",
            "Bearer realm=\"tasker\"",
        ),
        Some(None) => (
            "the Authorization header holds characters other than printable ASCII; \
             a token never does",
            INVALID_REQUEST,
        ),
        // The scheme's name is case-insensitive (RFC 9110 §11.1).
        Some(Some(value)) => match value
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
            .map(|_| &value[7..])
        {
            None => (
                "the Authorization header must be `Bearer TOKEN`",
                INVALID_REQUEST,
            ),
            Some(token) => match tokens.name_of(token.trim()) {
                Some(name) => {
                    tracing::trace!(token = name, "authorized");
                    return next.run(request).await;
                }
                None if token
                    .trim_start()
                    .to_ascii_lowercase()
                    .starts_with("bearer ") =>
                {
                    (
                        "the bearer token is not one this server accepts: it begins with \
                         `Bearer ` again; set `api_token` to the token alone",
                        INVALID_TOKEN,
                    )
                }
                None => (
                    "the bearer token is not one this server accepts (a client's `api_token`, \
                     `TASKER_API_TOKEN`, must be one of the server's `api_tokens_file`)",
                    INVALID_TOKEN,
                ),
            },
        },
    };
    unauthorized.inc();
    tracing::debug!(path = %super::problem::quote(request.uri().path()), "refused a request without a valid token");
    let mut response = Problem::new(ProblemKind::Unauthorized, detail).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_hosts_are_localhost_and_ip_addresses() {
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "localhost.:8080",
            "127.0.0.1",
            "127.0.0.1:8080",
            "10.1.2.3:80",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(is_local_host(host), "{host}");
        }
        for host in [
            "attacker.example",
            "attacker.example:8080",
            "localhost.attacker.example",
            "127.0.0.1.nip.io:8080",
            "[evil]:80",
            "",
        ] {
            assert!(!is_local_host(host), "{host}");
        }
    }

    fn entries(list: &[(&str, &str)]) -> BTreeMap<String, String> {
        list.iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn a_token_is_known_by_its_name() {
        let tokens = Tokens::from_entries(entries(&[
            ("ci", "ci-token-0123456789"),
            ("dashboard", "dash-token-0123456789"),
        ]))
        .unwrap();
        assert_eq!(tokens.name_of("dash-token-0123456789"), Some("dashboard"));
        assert_eq!(tokens.name_of("ci-token-0123456789"), Some("ci"));
        assert_eq!(tokens.name_of("ci-token-012345678"), None);
        assert_eq!(tokens.name_of(""), None);
    }

    #[test]
    fn short_empty_or_repeated_tokens_are_refused_by_name_without_the_token() {
        let short = Tokens::from_entries(entries(&[("ci", "short")])).unwrap_err();
        assert!(
            short.contains("`ci`") && !short.contains("short "),
            "{short}"
        );
        assert!(Tokens::from_entries(entries(&[])).is_err());
        let twice = Tokens::from_entries(entries(&[
            ("a", "same-token-0123456789"),
            ("b", "same-token-0123456789"),
        ]))
        .unwrap_err();
        assert!(twice.contains("another name"), "{twice}");
    }

    #[test]
    fn a_file_that_is_not_a_mapping_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(&path, "- secret-token-0123456789\n").unwrap();
        let error = Tokens::load(&path).unwrap_err().to_string();
        assert!(!error.contains("secret-token"), "{error}");
        assert!(error.contains("mapping"), "{error}");
    }

    #[test]
    fn a_name_listed_twice_is_refused_naming_it_without_the_tokens() {
        // The second entry silently replaced the first, whose holder then
        // got 401s.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(
            &path,
            "ci: first-token-0123456789\nops: other-token-0123456789\nci: second-token-0123456789\n",
        )
        .unwrap();
        let error = Tokens::load(&path).unwrap_err().to_string();
        assert!(error.contains("`ci`") && error.contains("twice"), "{error}");
        assert!(!error.contains("token-0123456789"), "{error}");
    }
}
