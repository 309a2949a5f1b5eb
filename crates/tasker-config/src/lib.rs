//! Configuration of tasker-core.
//!
//! One YAML file (by convention `config/zeromq.yaml`) holds a section per
//! environment: `development`, `test`, `production`. The section is chosen by
//! `TASKER_ENV` (default `development`); a key missing from it takes its
//! built-in default. Every key can then be overridden by an environment
//! variable named `TASKER_` plus the key in upper case, e.g.
//! `TASKER_ENDPOINT` or `TASKER_BATCH_SIZE`.
//!
//! Unknown keys and bad values are rejected with an error naming the key.
//!
//! ```
//! use tasker_config::TaskerConfig;
//!
//! let yaml = "test:\n  endpoint: tcp://127.0.0.1:7000\n  batch_size: 10\n";
//! let config = TaskerConfig::from_yaml_str(yaml, "test", std::iter::empty()).unwrap();
//! assert_eq!(config.batch_size, 10);
//! assert_eq!(config.liveness, 3); // built-in default
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The environments a configuration file may define.
pub const ENVIRONMENTS: &[&str] = &["development", "test", "production"];

/// Why a configuration could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The YAML does not parse, or a key is unknown or of the wrong type.
    #[error("invalid config ({context}): {message}")]
    Parse {
        /// File and environment.
        context: String,
        /// The parser's message, which names the key.
        message: String,
    },
    /// `TASKER_ENV` (or the requested environment) is not defined.
    #[error("unknown environment {0:?}: expected one of development, test, production")]
    UnknownEnvironment(String),
    /// An environment variable override does not parse.
    #[error("invalid value {value:?} for {var} (key {key}): {message}")]
    Override {
        /// The variable.
        var: String,
        /// The key it overrides.
        key: String,
        /// Its value.
        value: String,
        /// What is wrong.
        message: String,
    },
    /// A key that is not a config key, in a file section, a `TASKER_*`
    /// variable that is a near miss of one, or a host's keyword option.
    #[error("unknown config key `{key}` ({origin}){}", suggestion.as_ref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default())]
    UnknownKey {
        /// Where it was found (`environment variable TASKER_X`, `option`,
        /// `config/zeromq.yaml, environment test`).
        origin: String,
        /// The key as given.
        key: String,
        /// The closest valid key, when one is close (spelt as the host
        /// language spells keys, where a binding renames them).
        suggestion: Option<String>,
    },
    /// A keyword option's value is not one the key takes.
    #[error("invalid value for option `{key}`: {message}")]
    Option {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A value parses but is out of range.
    #[error("invalid value for {key}: {message}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// What `submit` does when the orchestrator's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SubmitPolicy {
    /// Wait until there is room.
    #[default]
    Wait,
    /// Fail at once with a queue-full error.
    Reject,
}

/// The YAML deserialiser loses the key path when deserialising from a `Value`, so find
/// the offending key by trying each one alone.
fn name_bad_key(section: &serde_norway::Value, error: serde_norway::Error) -> String {
    if let Some(mapping) = section.as_mapping() {
        for (key, value) in mapping {
            let mut alone = serde_norway::Mapping::new();
            alone.insert(key.clone(), value.clone());
            if let Err(e) =
                serde_norway::from_value::<TaskerConfig>(serde_norway::Value::Mapping(alone))
            {
                let name = key.as_str().unwrap_or("<non-string key>");
                let hint = if KEYS.contains(&name) {
                    String::new()
                } else {
                    closest_key(name)
                        .map(|k| format!("; did you mean `{k}`?"))
                        .unwrap_or_default()
                };
                return format!("key `{name}`: {e}{hint}");
            }
        }
    }
    error.to_string()
}

/// The settings shared by the orchestrator and the workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskerConfig {
    /// ZeroMQ endpoint the orchestrator binds and the workers connect to
    /// (`tcp://host:port` or `ipc://path`; not `inproc://`, which cannot
    /// cross separately built libraries). `TASKER_ENDPOINT`.
    pub endpoint: String,
    /// Interval between heartbeats, each way, in ms. `TASKER_HEARTBEAT_INTERVAL_MS`.
    pub heartbeat_interval_ms: u64,
    /// Missed heartbeat intervals after which a peer is dead. `TASKER_LIVENESS`.
    pub liveness: u32,
    /// Timeout of a step that does not set one, in ms. `TASKER_DEFAULT_STEP_TIMEOUT_MS`.
    pub default_step_timeout_ms: u64,
    /// Most steps in one delivery to a worker, and most steps a binding
    /// pulls per wake-up. `TASKER_BATCH_SIZE`.
    pub batch_size: usize,
    /// Steps a worker runs at once (its declared capacity). `TASKER_WORKER_CAPACITY`.
    pub worker_capacity: u32,
    /// Most unfinished steps the orchestrator holds (queued or out at
    /// workers); `submit` waits or fails beyond it. `TASKER_QUEUE_BOUND`.
    pub queue_bound: usize,
    /// What submit does when the queue is full: `wait` or `reject`.
    /// `TASKER_SUBMIT_POLICY`.
    pub submit_policy: SubmitPolicy,
    /// ZeroMQ send high-water mark, in messages. `TASKER_SEND_HWM`.
    pub send_hwm: i32,
    /// ZeroMQ receive high-water mark, in messages. `TASKER_RECV_HWM`.
    pub recv_hwm: i32,
    /// Largest message body accepted, in bytes. `TASKER_MAX_MESSAGE_BYTES`.
    pub max_message_bytes: usize,
    /// How long a closing socket may keep flushing, in ms. `TASKER_LINGER_MS`.
    pub linger_ms: i32,
    /// First delay before a worker reconnects, in ms; doubles up to
    /// `reconnect_max_ms`. `TASKER_RECONNECT_INITIAL_MS`.
    pub reconnect_initial_ms: u64,
    /// Longest delay between reconnection attempts, in ms. `TASKER_RECONNECT_MAX_MS`.
    pub reconnect_max_ms: u64,
    /// How long a stopping worker waits for its running steps, and the
    /// command line's orchestrator for steps in flight, in ms.
    /// `TASKER_SHUTDOWN_TIMEOUT_MS`.
    pub shutdown_timeout_ms: u64,
    /// Whether a handler error of an unrecognised kind may be retried.
    /// `TASKER_DEFAULT_RETRYABLE`.
    pub default_retryable: bool,
    /// Most worker connections the orchestrator registers at once; a hello
    /// beyond it is refused (`registry_full`), so a flood of hellos cannot
    /// grow memory without bound. `TASKER_MAX_WORKERS`.
    pub max_workers: usize,
    /// Whether the orchestrator records its per-handler Prometheus metrics
    /// (counters and histograms by handler, `tasker serve`'s `/metrics`).
    /// The plain counters are kept either way. `TASKER_METRICS`.
    pub metrics: bool,
    /// Where `tasker serve` keeps tasks: `sqlite:PATH` (created on first
    /// start) or `postgres://USER@HOST/DB`. `TASKER_STORE`.
    pub store: String,
    /// The address `tasker serve` answers HTTP on (`HOST:PORT`; port 0
    /// picks a free one). `TASKER_API_LISTEN`.
    pub api_listen: String,
    /// The folder `tasker serve` loads workflow templates (`*.yaml`) from;
    /// empty: `examples/workflows` when it exists. `TASKER_WORKFLOWS_DIR`.
    pub workflows_dir: String,
    /// Hours an ended task is kept before `tasker serve` purges it; 0 keeps
    /// tasks forever. `TASKER_TASK_RETENTION_HOURS`.
    pub task_retention_hours: u64,
    /// Where clients (`tasker task`, the SDKs' `Client`) reach the API:
    /// `http://HOST:PORT`, or `https://HOST[:PORT]` for a TLS-terminating
    /// proxy in front of it. Empty: `http://` + `api_listen`, an
    /// unspecified address reached on loopback. `TASKER_API_URL`.
    pub api_url: String,
    /// The bearer token clients send; empty sends none. `TASKER_API_TOKEN`.
    pub api_token: String,
    /// `tasker serve`: a YAML file mapping token names to tokens
    /// (`ci: 8f1c...`); when set, every API request but `/healthz` must
    /// carry one of them. Empty: no tokens. `TASKER_API_TOKENS_FILE`.
    pub api_tokens_file: String,
    /// `tasker serve`: answer requests without tokens on an address other
    /// machines can reach (not loopback). Off by default, so a server is
    /// never open to a network by accident; set it only behind a firewall
    /// or on a network you trust. `TASKER_API_TRUSTED_NETWORK`.
    pub api_trusted_network: bool,
    /// This side's CURVE secret key file (`tasker keygen` writes one; its
    /// public key follows from it). The orchestrator needs it with
    /// `curve_authorized_keys_dir`; a worker with
    /// `curve_server_public_key_file`. `TASKER_CURVE_SECRET_KEY_FILE`.
    pub curve_secret_key_file: String,
    /// Workers: the orchestrator's CURVE public key file; setting it makes
    /// the worker connect with CURVE. `TASKER_CURVE_SERVER_PUBLIC_KEY_FILE`.
    pub curve_server_public_key_file: String,
    /// The orchestrator: a folder of `*.pub` files, one per admitted
    /// worker; setting it turns CURVE on, and only workers whose public key
    /// is there may connect. Read again when its contents change.
    /// `TASKER_CURVE_AUTHORIZED_KEYS_DIR`.
    pub curve_authorized_keys_dir: String,
}

/// Keys whose variable is taken as text as it is, never parsed as YAML.
const STRING_KEYS: &[&str] = &[
    "endpoint",
    "store",
    "api_listen",
    "workflows_dir",
    "api_url",
    "api_token",
    "api_tokens_file",
    "curve_secret_key_file",
    "curve_server_public_key_file",
    "curve_authorized_keys_dir",
];

/// Every key, in file order; `TASKER_` + upper case is its variable.
pub const KEYS: &[&str] = &[
    "endpoint",
    "heartbeat_interval_ms",
    "liveness",
    "default_step_timeout_ms",
    "batch_size",
    "worker_capacity",
    "queue_bound",
    "submit_policy",
    "send_hwm",
    "recv_hwm",
    "max_message_bytes",
    "linger_ms",
    "reconnect_initial_ms",
    "reconnect_max_ms",
    "shutdown_timeout_ms",
    "default_retryable",
    "max_workers",
    "metrics",
    "store",
    "api_listen",
    "workflows_dir",
    "task_retention_hours",
    "api_url",
    "api_token",
    "api_tokens_file",
    "api_trusted_network",
    "curve_secret_key_file",
    "curve_server_public_key_file",
    "curve_authorized_keys_dir",
];

impl Default for TaskerConfig {
    fn default() -> Self {
        Self {
            endpoint: "tcp://127.0.0.1:5555".into(),
            heartbeat_interval_ms: 1_000,
            liveness: 3,
            default_step_timeout_ms: 30_000,
            batch_size: 100,
            worker_capacity: 8,
            queue_bound: 100_000,
            submit_policy: SubmitPolicy::Wait,
            send_hwm: 100_000,
            recv_hwm: 100_000,
            max_message_bytes: 16 * 1024 * 1024,
            linger_ms: 1_000,
            reconnect_initial_ms: 100,
            reconnect_max_ms: 5_000,
            shutdown_timeout_ms: 10_000,
            default_retryable: false,
            max_workers: 10_000,
            metrics: true,
            store: DEFAULT_STORE.into(),
            api_listen: "127.0.0.1:8080".into(),
            workflows_dir: String::new(),
            task_retention_hours: 168,
            api_url: String::new(),
            api_token: String::new(),
            api_tokens_file: String::new(),
            api_trusted_network: false,
            curve_secret_key_file: String::new(),
            curve_server_public_key_file: String::new(),
            curve_authorized_keys_dir: String::new(),
        }
    }
}

/// The permission bits of a secrets file (a CURVE secret key, a tokens
/// file) when users other than its owner may read or write it, for a
/// warning: the secrets are then as good as theirs. `None` when only the
/// owner may, or the file cannot be examined (reading it says why).
///
/// ```
/// use std::os::unix::fs::PermissionsExt;
/// let file = tempfile::NamedTempFile::new().unwrap();
/// std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
/// assert_eq!(tasker_config::open_to_others(file.path()), Some(0o644));
/// std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
/// assert_eq!(tasker_config::open_to_others(file.path()), None);
/// ```
pub fn open_to_others(path: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

/// `token` as a client sends it in `Authorization: Bearer`: without the
/// whitespace around it (a token read from a file or a secret ends in a
/// line break), and only printable ASCII, as an HTTP header carries text
/// and `api_tokens_file` takes tokens. The message never holds the token.
///
/// ```
/// use tasker_config::parse_api_token;
/// assert_eq!(parse_api_token("s3cret-token-0123456789\n").unwrap(), "s3cret-token-0123456789");
/// let error = parse_api_token("s3cret\r\nX-Injected: 1").unwrap_err();
/// assert!(error.contains("a line break") && !error.contains("s3cret"));
/// ```
pub fn parse_api_token(token: &str) -> Result<String, String> {
    let token = token.trim();
    match token.chars().position(|c| !c.is_ascii_graphic()) {
        None => Ok(token.to_string()),
        Some(at) => {
            let c = token.chars().nth(at).unwrap_or(' ');
            let what = match c {
                '\r' | '\n' => "a line break",
                ' ' | '\t' => "a space",
                c if c.is_control() => "a control character",
                _ => "a character other than ASCII",
            };
            Err(format!(
                "holds {what} at character {}; a token is printable ASCII without spaces \
                 (the token is not shown)",
                at + 1
            ))
        }
    }
}

/// `url` as an API base URL without a trailing slash, or why it is not
/// one. `http://` reaches `tasker serve` itself; `https://` a
/// TLS-terminating proxy in front of it (`serve` speaks no TLS). A URL
/// without a scheme is `http://`.
///
/// ```
/// use tasker_config::parse_api_url;
/// assert_eq!(parse_api_url("127.0.0.1:8080/").unwrap(), "http://127.0.0.1:8080");
/// assert_eq!(
///     parse_api_url("https://tasks.example.com").unwrap(),
///     "https://tasks.example.com"
/// );
/// assert!(parse_api_url("ftp://tasks.example.com").is_err());
/// assert!(parse_api_url("http://").unwrap_err().starts_with("http://: "));
/// ```
pub fn parse_api_url(url: &str) -> Result<String, String> {
    // Errors quote it as given: without its trailing slashes `http://`
    // was quoted as `http:`.
    let given = url.trim();
    let url = given.trim_end_matches('/');
    const EXPECTED: &str = "expected http://HOST:PORT, or https://HOST[:PORT] for a TLS proxy";
    // Schemes are case-insensitive (RFC 3986 §3.1).
    let lower = url.to_ascii_lowercase();
    let (scheme, rest) = if lower.starts_with("https://") {
        ("https", &url["https://".len()..])
    } else if lower.starts_with("http://") {
        ("http", &url["http://".len()..])
    } else if url.contains("://") {
        return Err(format!("{given}: {EXPECTED}"));
    } else {
        ("http", url)
    };
    let authority = rest.split('/').next().unwrap_or("");
    let port_ok = |port: &str| port.parse::<u16>().is_ok();
    // An IPv6 literal is bracketed and holds colons of its own.
    let host_and_port_ok = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, "")) => !host.is_empty(),
            Some((host, after)) => !host.is_empty() && after.strip_prefix(':').is_some_and(port_ok),
            None => false,
        },
        None => authority
            .rsplit_once(':')
            .map_or(true, |(host, port)| !host.is_empty() && port_ok(port)),
    };
    let valid_authority =
        !authority.is_empty() && !authority.contains(['@', '?', '#', ' ']) && host_and_port_ok;
    if !valid_authority {
        return Err(format!("{given}: {EXPECTED}"));
    }
    // Every call's path starts with /v1: a base ending in it made every
    // call a 404 for /v1/v1/....
    if rest[authority.len()..]
        .to_ascii_lowercase()
        .ends_with("/v1")
    {
        return Err(format!(
            "{url}: leave out the /v1, the client adds it to each call (give the server's \
             address, http://HOST:PORT, with any prefix a proxy puts before /v1)"
        ));
    }
    Ok(format!("{scheme}://{rest}"))
}

/// Checks the `HOST:PORT` of a `tcp://` endpoint: a host (a name, an
/// address, `[v6]`, or `*` to bind every interface) and a port of 0 to
/// 65535 or `*` (a free one). ZeroMQ would take `:99999` and then never
/// connect, without a word.
fn check_tcp_address(address: &str) -> Result<(), String> {
    // ZeroMQ's `SOURCE;DESTINATION` form: the destination is the endpoint.
    let address = address.rsplit(';').next().unwrap_or(address);
    let (host, port) = match address.strip_prefix('[') {
        Some(v6) => match v6.split_once("]:") {
            Some((host, port)) => (host, port),
            None => return Err("an IPv6 address must be [ADDRESS]:PORT".into()),
        },
        None => address
            .rsplit_once(':')
            .ok_or("must be tcp://HOST:PORT (the port is missing)")?,
    };
    if host.is_empty() {
        return Err("must be tcp://HOST:PORT (the host is missing)".into());
    }
    if port != "*" && port.parse::<u16>().is_err() {
        return Err(format!(
            "the port {:?} is not a number from 0 to 65535 (or *)",
            port.chars().take(16).collect::<String>()
        ));
    }
    Ok(())
}

/// Where `tasker serve` keeps tasks unless `store` says otherwise.
pub const DEFAULT_STORE: &str = "sqlite:tasker-data/tasker.db";

/// `TASKER_*` variables that name no config key and are not a mistake.
pub const NON_KEY_VARIABLES: &[&str] = &["TASKER_CONFIG", "TASKER_ENV", "TASKER_LOG_FORMAT"];

/// The valid key closest to `key`, when it is close enough to be what was
/// meant: a typo, or the key without its first words when one key alone
/// ends that way (`capacity` for `worker_capacity`: `TASKER_CAPACITY=3`
/// was ignored, the capacity left at 8), not another setting altogether.
pub fn closest_key(key: &str) -> Option<&'static str> {
    let key = key.to_ascii_lowercase();
    let typo = KEYS
        .iter()
        .map(|k| (strsim::levenshtein(&key, k), *k))
        .filter(|(distance, k)| *distance <= (k.len() / 4).max(2))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, k)| k);
    typo.or_else(|| {
        let tail = format!("_{key}");
        let mut ending = KEYS.iter().filter(|k| k.ends_with(&tail));
        match (ending.next(), ending.next()) {
            (Some(k), None) => Some(*k),
            _ => None,
        }
    })
}

/// The name among `names` closest to `name`, when it is close enough to be
/// a typo of it: for "did you mean" hints on handler and workflow names.
///
/// ```
/// let served = ["rb_prepare", "rb_ship"];
/// assert_eq!(tasker_config::closest(served, "rb_prepar"), Some("rb_prepare"));
/// assert_eq!(tasker_config::closest(served, "charge_card"), None);
/// ```
pub fn closest<'a>(names: impl IntoIterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    names
        .into_iter()
        .map(|n| (strsim::levenshtein(name, n), n))
        .filter(|(distance, n)| *distance <= (n.len() / 3).max(2))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, n)| n)
}

/// Where one configuration comes from. Later sources win: the file's
/// section (the built-in defaults without a file), then the `TASKER_*`
/// variables, then `options` (a host's keyword arguments).
///
/// ```
/// use tasker_config::{Sources, TaskerConfig};
///
/// let mut sources = Sources::with_vars(Vec::new());
/// sources.options.insert("worker_capacity".into(), serde_json::json!(3));
/// assert_eq!(TaskerConfig::resolve(&sources).unwrap().worker_capacity, 3);
///
/// sources.options.insert("worker_capcity".into(), serde_json::json!(3));
/// let error = TaskerConfig::resolve(&sources).unwrap_err().to_string();
/// assert!(error.contains("did you mean `worker_capacity`"), "{error}");
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Sources {
    /// The YAML file; `None`: the built-in defaults.
    pub path: Option<PathBuf>,
    /// Its section; `None`: `TASKER_ENV`, else `development`.
    pub environment: Option<String>,
    /// The environment variables to read (`TASKER_*`); `None`: the
    /// process's own.
    pub vars: Option<Vec<(String, String)>>,
    /// Keyword options by key; each key must be a config key.
    pub options: BTreeMap<String, serde_json::Value>,
}

impl Sources {
    /// The process's environment, no file, no options.
    pub fn new() -> Self {
        Self::default()
    }

    /// These variables instead of the process's environment.
    pub fn with_vars(vars: Vec<(String, String)>) -> Self {
        Self {
            vars: Some(vars),
            ..Self::default()
        }
    }
}

/// The file a program reads when not told which: relative to the working
/// directory, so that running from the repository root finds the project's.
pub const DEFAULT_PATH: &str = "config/zeromq.yaml";

impl TaskerConfig {
    /// Loads `path`'s section for `environment` (default: `TASKER_ENV`, else
    /// `development`), or, without a path, the built-in defaults; the
    /// `TASKER_*` overrides of the process environment apply either way.
    /// This is what every binding's "from config" constructor does.
    pub fn load_from(path: Option<&Path>, environment: Option<&str>) -> Result<Self, ConfigError> {
        Self::resolve(&Sources {
            path: path.map(Path::to_path_buf),
            environment: environment.map(str::to_string),
            ..Sources::default()
        })
    }

    /// The configuration of a program run from the command line: `path`,
    /// else the file named by `TASKER_CONFIG`, else [`DEFAULT_PATH`] when it
    /// exists, else the built-in defaults; then as
    /// [`load_from`](Self::load_from). A named file that is missing is an
    /// error; only the default one is optional.
    pub fn discover(path: Option<&Path>, environment: Option<&str>) -> Result<Self, ConfigError> {
        let named = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("TASKER_CONFIG").map(std::path::PathBuf::from));
        let default = Path::new(DEFAULT_PATH);
        let path = named.or_else(|| default.exists().then(|| default.to_path_buf()));
        Self::load_from(path.as_deref(), environment)
    }

    /// The one way every binding and program resolves its configuration:
    /// file section, `TASKER_*` variables, keyword options, each checked,
    /// then the whole validated. A key that is not a config key is an
    /// error naming it and the closest valid one; so is a `TASKER_*`
    /// variable that is a near miss of a key (other `TASKER_*` variables
    /// belong to someone else and are left alone).
    pub fn resolve(sources: &Sources) -> Result<Self, ConfigError> {
        let process_vars;
        let vars: &[(String, String)] = match &sources.vars {
            Some(vars) => vars,
            None => {
                process_vars = std::env::vars().collect::<Vec<_>>();
                &process_vars
            }
        };
        let environment = sources.environment.clone().unwrap_or_else(|| {
            vars.iter()
                .find(|(k, _)| k == "TASKER_ENV")
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| "development".into())
        });
        let mut config = match &sources.path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
                Self::from_yaml_str(&text, &environment, vars.iter().cloned()).map_err(
                    |e| match e {
                        ConfigError::Parse { context, message } => ConfigError::Parse {
                            context: format!("{}, {context}", path.display()),
                            message,
                        },
                        other => other,
                    },
                )?
            }
            None => {
                // No file has the sections, but a misspelt TASKER_ENV
                // (`prodution`) is still a mistake to name, not to ignore.
                if !ENVIRONMENTS.contains(&environment.as_str()) {
                    return Err(ConfigError::UnknownEnvironment(environment));
                }
                let mut config = Self::default();
                config.apply_overrides(vars.iter().cloned())?;
                config
            }
        };
        config.apply_options(&sources.options)?;
        config.validate()?;
        Ok(config)
    }

    /// Applies keyword options (config keys to JSON values).
    fn apply_options(
        &mut self,
        options: &BTreeMap<String, serde_json::Value>,
    ) -> Result<(), ConfigError> {
        if options.is_empty() {
            return Ok(());
        }
        let mut current = match serde_norway::to_value(&*self) {
            Ok(serde_norway::Value::Mapping(m)) => m,
            _ => unreachable!("a config serialises to a mapping"),
        };
        for (key, value) in options {
            if !KEYS.contains(&key.as_str()) {
                return Err(ConfigError::UnknownKey {
                    origin: "option".into(),
                    key: key.clone(),
                    suggestion: closest_key(key).map(String::from),
                });
            }
            let option_error = |message: String| ConfigError::Option {
                key: key.clone(),
                message,
            };
            let value = serde_norway::to_value(value).map_err(|e| option_error(e.to_string()))?;
            let mut probe = current.clone();
            probe.insert(serde_norway::Value::String(key.clone()), value.clone());
            serde_norway::from_value::<TaskerConfig>(serde_norway::Value::Mapping(probe))
                .map_err(|e| option_error(e.to_string()))?;
            current.insert(serde_norway::Value::String(key.clone()), value);
        }
        *self = serde_norway::from_value(serde_norway::Value::Mapping(current)).map_err(|e| {
            ConfigError::Option {
                key: "options".into(),
                message: e.to_string(),
            }
        })?;
        Ok(())
    }

    /// Loads `path` for the environment named by `TASKER_ENV` (default
    /// `development`) and applies `TASKER_*` overrides from the process
    /// environment.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let env = std::env::var("TASKER_ENV").unwrap_or_else(|_| "development".into());
        Self::load_env(path, &env)
    }

    /// Like [`load`](Self::load) for an explicit environment.
    pub fn load_env(path: impl AsRef<Path>, environment: &str) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml_str(&text, environment, std::env::vars()).map_err(|e| match e {
            ConfigError::Parse { context, message } => ConfigError::Parse {
                context: format!("{}, {context}", path.display()),
                message,
            },
            other => other,
        })
    }

    /// The built-in defaults with `TASKER_*` overrides from the process
    /// environment: the configuration without a file.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut config = Self::default();
        config.apply_overrides(std::env::vars())?;
        config.validate()?;
        Ok(config)
    }

    /// Parses the `environment` section of a YAML document and applies the
    /// `TASKER_*` overrides found in `vars`.
    pub fn from_yaml_str(
        yaml: &str,
        environment: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        if !ENVIRONMENTS.contains(&environment) {
            return Err(ConfigError::UnknownEnvironment(environment.to_string()));
        }
        let parse_error = |context: String, e: serde_norway::Error| ConfigError::Parse {
            context,
            message: e.to_string(),
        };
        let document: serde_norway::Mapping =
            serde_norway::from_str(yaml).map_err(|e| parse_error("document".into(), e))?;
        for key in document.keys() {
            let name = key.as_str().unwrap_or("<non-string key>");
            if !ENVIRONMENTS.contains(&name) {
                return Err(ConfigError::Parse {
                    context: "document".into(),
                    message: format!(
                        "unknown environment section `{name}`, expected one of development, test, production"
                    ),
                });
            }
        }
        let section = document
            .get(environment)
            .cloned()
            .unwrap_or(serde_norway::Value::Mapping(Default::default()));
        let section = if section.is_null() {
            serde_norway::Value::Mapping(Default::default())
        } else {
            section
        };
        let mut config: TaskerConfig =
            serde_norway::from_value(section.clone()).map_err(|e| ConfigError::Parse {
                context: format!("environment {environment}"),
                message: name_bad_key(&section, e),
            })?;
        config.apply_overrides(vars)?;
        config.validate()?;
        Ok(config)
    }

    /// Applies `TASKER_<KEY>` overrides. A variable that is a near miss of
    /// a key (`TASKER_WORKER_CAPACTY`) is an error naming the key meant;
    /// other variables are ignored.
    pub fn apply_overrides(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        let mut current = match serde_norway::to_value(&*self) {
            Ok(serde_norway::Value::Mapping(m)) => m,
            _ => unreachable!("a config serialises to a mapping"),
        };
        let mut changed = false;
        for (var, value) in vars {
            let Some(rest) = var.strip_prefix("TASKER_") else {
                continue;
            };
            let key = rest.to_ascii_lowercase();
            if !KEYS.contains(&key.as_str()) {
                // A near miss of a key is a mistake to name, not a
                // variable of someone else's to leave alone.
                if let Some(suggestion) =
                    closest_key(&key).filter(|_| !NON_KEY_VARIABLES.contains(&var.as_str()))
                {
                    return Err(ConfigError::UnknownKey {
                        origin: format!("environment variable {var}"),
                        key,
                        suggestion: Some(suggestion.into()),
                    });
                }
                continue;
            }
            let override_error = |message: String| ConfigError::Override {
                var: var.clone(),
                key: key.clone(),
                value: value.clone(),
                message,
            };
            let parsed: serde_norway::Value = if STRING_KEYS.contains(&key.as_str()) {
                serde_norway::Value::String(value.clone())
            } else {
                serde_norway::from_str(&value).map_err(|e| override_error(e.to_string()))?
            };
            // An address is checked here too, so a bad one names its
            // variable (it was found only when a client used it).
            if key == "api_url" && !value.is_empty() {
                parse_api_url(&value).map_err(override_error)?;
            }
            // Check the one value on its own so the error names its variable.
            let mut probe = current.clone();
            probe.insert(serde_norway::Value::String(key.clone()), parsed.clone());
            serde_norway::from_value::<TaskerConfig>(serde_norway::Value::Mapping(probe))
                .map_err(|e| override_error(e.to_string()))?;
            current.insert(serde_norway::Value::String(key.clone()), parsed);
            changed = true;
        }
        if changed {
            *self =
                serde_norway::from_value(serde_norway::Value::Mapping(current)).map_err(|e| {
                    ConfigError::Parse {
                        context: "environment overrides".into(),
                        message: e.to_string(),
                    }
                })?;
        }
        Ok(())
    }

    /// Checks ranges the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, message: &str) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                key,
                message: message.to_string(),
            })
        }
        // inproc:// needs both ends in one ZeroMQ context, which separately
        // built libraries (and processes) never share.
        let scheme_ok = ["tcp://", "ipc://"]
            .iter()
            .any(|s| self.endpoint.starts_with(s) && self.endpoint.len() > s.len());
        if !scheme_ok {
            return invalid("endpoint", "must be tcp://HOST:PORT or ipc://PATH");
        }
        if let Err(message) = parse_api_token(&self.api_token) {
            return Err(ConfigError::Invalid {
                key: "api_token",
                message,
            });
        }
        if let Some(address) = self.endpoint.strip_prefix("tcp://") {
            if let Err(why) = check_tcp_address(address) {
                return Err(ConfigError::Invalid {
                    key: "endpoint",
                    message: format!("{}: {why}", self.endpoint),
                });
            }
        }
        if self.heartbeat_interval_ms == 0 {
            return invalid("heartbeat_interval_ms", "must be at least 1");
        }
        if self.liveness == 0 {
            return invalid("liveness", "must be at least 1");
        }
        if self.default_step_timeout_ms == 0 {
            return invalid("default_step_timeout_ms", "must be at least 1");
        }
        if self.batch_size == 0 {
            return invalid("batch_size", "must be at least 1");
        }
        if self.worker_capacity == 0 {
            return invalid("worker_capacity", "must be at least 1");
        }
        if self.queue_bound == 0 {
            return invalid("queue_bound", "must be at least 1");
        }
        if self.send_hwm < 0 || self.recv_hwm < 0 {
            return invalid("send_hwm", "high-water marks must not be negative");
        }
        if self.max_message_bytes < 1024 {
            return invalid("max_message_bytes", "must be at least 1024");
        }
        if self.linger_ms < -1 {
            return invalid("linger_ms", "must be -1 (forever) or more");
        }
        if self.max_workers == 0 {
            return invalid("max_workers", "must be at least 1");
        }
        if self.store.trim() != self.store {
            // A copy-paste slip, not a name: `sqlite:tasks.db ` made a file
            // called "tasks.db " that the next start, typed right, missed.
            return invalid("store", "starts or ends with whitespace; remove it");
        }
        if !(self.store.starts_with("sqlite:")
            || self.store.starts_with("postgres://")
            || self.store.starts_with("postgresql://"))
        {
            return invalid(
                "store",
                "must be sqlite:PATH or postgres://USER@HOST/DATABASE",
            );
        }
        if self.api_listen.parse::<std::net::SocketAddr>().is_err() {
            return invalid(
                "api_listen",
                "must be HOST:PORT with a numeric host, e.g. 127.0.0.1:8080",
            );
        }
        if !self.api_url.is_empty() {
            if let Err(message) = parse_api_url(&self.api_url) {
                return invalid("api_url", &message);
            }
        }
        if self.reconnect_initial_ms == 0 || self.reconnect_max_ms < self.reconnect_initial_ms {
            return invalid(
                "reconnect_initial_ms",
                "must be at least 1 and not above reconnect_max_ms",
            );
        }
        Ok(())
    }

    /// The API's base URL for a client, without a trailing slash:
    /// `api_url`, else `http://` + `api_listen` with an unspecified address
    /// (`0.0.0.0`, `::`) reached on loopback.
    ///
    /// ```
    /// let config = tasker_config::TaskerConfig::default();
    /// assert_eq!(config.api_base_url().unwrap(), "http://127.0.0.1:8080");
    /// ```
    pub fn api_base_url(&self) -> Result<String, ConfigError> {
        if !self.api_url.is_empty() {
            return parse_api_url(&self.api_url).map_err(|message| ConfigError::Invalid {
                key: "api_url",
                message,
            });
        }
        let invalid = |message: String| ConfigError::Invalid {
            key: "api_listen",
            message,
        };
        let addr: std::net::SocketAddr = self
            .api_listen
            .parse()
            .map_err(|_| invalid("must be HOST:PORT with a numeric host".into()))?;
        if addr.port() == 0 {
            return Err(invalid(
                "is port 0 (a free port chosen when the server starts): set api_url to the \
                 address `tasker serve` printed"
                    .into(),
            ));
        }
        let ip = match addr.ip() {
            std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
            other => other,
        };
        Ok(format!(
            "http://{}",
            std::net::SocketAddr::new(ip, addr.port())
        ))
    }

    /// [`heartbeat_interval_ms`](Self::heartbeat_interval_ms) as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// Silence after which a peer is dead: interval × liveness.
    pub fn peer_expiry(&self) -> Duration {
        self.heartbeat_interval() * self.liveness
    }

    /// [`default_step_timeout_ms`](Self::default_step_timeout_ms) as a duration.
    pub fn default_step_timeout(&self) -> Duration {
        Duration::from_millis(self.default_step_timeout_ms)
    }

    /// [`shutdown_timeout_ms`](Self::shutdown_timeout_ms) as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn clients_find_the_api_from_api_url_or_api_listen() {
        let with = |url: &str, listen: &str| TaskerConfig {
            api_url: url.into(),
            api_listen: listen.into(),
            ..TaskerConfig::default()
        };
        assert_eq!(
            with("", "0.0.0.0:8080").api_base_url().unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            with("", "[::]:8080").api_base_url().unwrap(),
            "http://[::1]:8080"
        );
        assert_eq!(
            with("http://tasks.internal:9000/", "127.0.0.1:8080")
                .api_base_url()
                .unwrap(),
            "http://tasks.internal:9000"
        );
        let port_zero = with("", "127.0.0.1:0")
            .api_base_url()
            .unwrap_err()
            .to_string();
        assert!(port_zero.contains("api_url"), "{port_zero}");
        assert_eq!(
            with("https://tasks.example.com:8443/", "127.0.0.1:8080")
                .api_base_url()
                .unwrap(),
            "https://tasks.example.com:8443"
        );
        for (url, base) in [
            ("HTTPS://tasks.example.com/", "https://tasks.example.com"),
            ("https://[::1]", "https://[::1]"),
            ("http://[::1]:8080/api", "http://[::1]:8080/api"),
        ] {
            assert_eq!(parse_api_url(url).unwrap(), base, "{url}");
        }
        for bad in [
            "http://127.0.0.1:8080/v1",
            "http://127.0.0.1:8080/v1/",
            "https://tasks.example.com/api/V1",
            "https://",
            "http://[::1",
            "http://[::1]:x",
            "ftp://x",
            "http://:80",
            "http://host:port",
        ] {
            assert!(parse_api_url(bad).is_err(), "{bad}");
            assert!(with(bad, "127.0.0.1:8080").validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_store_with_whitespace_around_it_is_refused_before_any_file_is_made() {
        for store in [
            "sqlite:tasks.db ",
            " sqlite:tasks.db",
            "postgres://db/tasks\n",
        ] {
            let config = TaskerConfig {
                store: store.into(),
                ..TaskerConfig::default()
            };
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("store") && err.contains("whitespace"), "{err}");
        }
    }

    #[test]
    fn keys_list_matches_the_struct() {
        let value = serde_norway::to_value(TaskerConfig::default()).unwrap();
        let keys: Vec<String> = value
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_string())
            .collect();
        assert_eq!(keys, KEYS);
    }

    #[test]
    fn section_overrides_defaults_and_env_overrides_section() {
        let yaml = "development:\n  batch_size: 5\ntest:\n  batch_size: 7\n  liveness: 4\n";
        let config = TaskerConfig::from_yaml_str(
            yaml,
            "test",
            vars(&[
                ("TASKER_LIVENESS", "9"),
                ("TASKER_ENDPOINT", "ipc:///tmp/x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.batch_size, 7);
        assert_eq!(config.liveness, 9);
        assert_eq!(config.endpoint, "ipc:///tmp/x");
        assert_eq!(config.heartbeat_interval_ms, 1_000);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = TaskerConfig::from_yaml_str("test:\n  batch_sise: 5\n", "test", vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch_sise"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = TaskerConfig::from_yaml_str("test:\n  liveness: many\n", "test", vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("liveness"), "{err}");
        let err = TaskerConfig::from_yaml_str("test:\n  batch_size: 0\n", "test", vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch_size"), "{err}");
    }

    #[test]
    fn bad_override_names_the_variable() {
        let err = TaskerConfig::from_yaml_str("", "test", vars(&[("TASKER_BATCH_SIZE", "lots")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("TASKER_BATCH_SIZE"), "{err}");
        let err =
            TaskerConfig::from_yaml_str("", "test", vars(&[("TASKER_SUBMIT_POLICY", "sometimes")]))
                .unwrap_err()
                .to_string();
        assert!(err.contains("TASKER_SUBMIT_POLICY"), "{err}");
        let err = TaskerConfig::from_yaml_str("", "test", vars(&[("TASKER_API_URL", "ftp://x")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("TASKER_API_URL") && err.contains("https://HOST"),
            "{err}"
        );
    }

    #[test]
    fn an_api_token_is_printable_ascii_and_never_quoted() {
        for (token, ok) in [
            ("tok-0123456789abcdef\n", true),
            ("tok-0123\r\nX: 1", false),
            ("tök-0123456789abcdef", false),
        ] {
            let result =
                TaskerConfig::from_yaml_str("", "test", vars(&[("TASKER_API_TOKEN", token)]))
                    .and_then(|c| c.validate().map(|()| c));
            match result {
                Ok(_) => assert!(ok, "{token:?} taken"),
                Err(e) => {
                    let e = e.to_string();
                    assert!(!ok && e.contains("api_token") && !e.contains("0123"), "{e}");
                }
            }
        }
    }

    #[test]
    fn unknown_environment_is_rejected() {
        let err = TaskerConfig::from_yaml_str("", "staging", vec![]).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownEnvironment(_)));
        let err = TaskerConfig::from_yaml_str("staging:\n  liveness: 1\n", "test", vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("staging"), "{err}");
    }

    #[test]
    fn an_unknown_environment_is_rejected_without_a_file_too() {
        let sources = Sources::with_vars(vars(&[("TASKER_ENV", "prodution")]));
        let err = TaskerConfig::resolve(&sources).unwrap_err();
        assert!(
            matches!(err, ConfigError::UnknownEnvironment(ref e) if e == "prodution"),
            "{err}"
        );
        let sources = Sources::with_vars(vars(&[("TASKER_ENV", "production")]));
        assert!(TaskerConfig::resolve(&sources).is_ok());
    }

    #[test]
    fn a_tcp_endpoint_needs_a_host_and_a_port_zeromq_can_use() {
        let check = |endpoint: &str| {
            TaskerConfig {
                endpoint: endpoint.into(),
                ..TaskerConfig::default()
            }
            .validate()
            .map_err(|e| e.to_string())
        };
        for good in [
            "tcp://127.0.0.1:5555",
            "tcp://localhost:0",
            "tcp://*:5555",
            "tcp://127.0.0.1:*",
            "tcp://[::1]:5555",
            "tcp://10.0.0.1;192.168.1.1:5555",
            "ipc:///tmp/tasker.sock",
        ] {
            assert!(check(good).is_ok(), "{good}: {:?}", check(good));
        }
        for (bad, why) in [
            ("tcp://127.0.0.1:99999", "is not a number from 0 to 65535"),
            ("tcp://127.0.0.1:http", "is not a number"),
            ("tcp://127.0.0.1", "the port is missing"),
            ("tcp://:5555", "the host is missing"),
            ("tcp://[::1]5555", "[ADDRESS]:PORT"),
        ] {
            let err = check(bad).unwrap_err();
            assert!(err.contains(bad) && err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn resolve_applies_file_then_variables_then_options() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "test:\n  batch_size: 7\n  liveness: 4\n").unwrap();
        let mut sources = Sources::with_vars(vars(&[
            ("TASKER_ENV", "test"),
            ("TASKER_LIVENESS", "5"),
            ("TASKER_BIN", "/usr/bin/tasker"),
        ]));
        sources.path = Some(path);
        sources
            .options
            .insert("liveness".into(), serde_json::json!(6));
        let config = TaskerConfig::resolve(&sources).unwrap();
        assert_eq!(config.batch_size, 7);
        assert_eq!(config.liveness, 6);
    }

    #[test]
    fn unknown_keys_are_named_with_the_closest_valid_one_in_every_source() {
        let mut sources = Sources::with_vars(vec![]);
        sources
            .options
            .insert("heartbeat_interval".into(), serde_json::json!(5));
        let err = TaskerConfig::resolve(&sources).unwrap_err().to_string();
        assert!(err.contains("`heartbeat_interval` (option)"), "{err}");
        assert!(
            err.contains("did you mean `heartbeat_interval_ms`"),
            "{err}"
        );

        let sources = Sources::with_vars(vars(&[("TASKER_WORKER_CAPACTY", "3")]));
        let err = TaskerConfig::resolve(&sources).unwrap_err().to_string();
        assert!(
            err.contains("environment variable TASKER_WORKER_CAPACTY"),
            "{err}"
        );
        assert!(err.contains("did you mean `worker_capacity`"), "{err}");

        // The key without its first word, when one key alone ends so.
        let sources = Sources::with_vars(vars(&[("TASKER_CAPACITY", "3")]));
        let err = TaskerConfig::resolve(&sources).unwrap_err().to_string();
        assert!(err.contains("did you mean `worker_capacity`"), "{err}");
        assert_eq!(closest_key("token"), Some("api_token"));
        assert_eq!(closest_key("file"), None, "three keys end in _file");
        assert_eq!(closest_key("bin"), None);

        let err = TaskerConfig::from_yaml_str("test:\n  batch_sise: 5\n", "test", vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean `batch_size`"), "{err}");
    }

    #[test]
    fn a_bad_option_value_names_the_option() {
        let mut sources = Sources::with_vars(vec![]);
        sources
            .options
            .insert("liveness".into(), serde_json::json!("many"));
        let err = TaskerConfig::resolve(&sources).unwrap_err().to_string();
        assert!(err.contains("option `liveness`"), "{err}");
        let mut sources = Sources::with_vars(vec![]);
        sources
            .options
            .insert("liveness".into(), serde_json::json!(0));
        let err = TaskerConfig::resolve(&sources).unwrap_err().to_string();
        assert!(err.contains("liveness"), "{err}");
    }

    #[test]
    fn repository_config_loads_in_every_environment() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/zeromq.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        for env in ENVIRONMENTS {
            let config = TaskerConfig::from_yaml_str(&text, env, vec![]).unwrap();
            assert!(config.endpoint.contains("127.0.0.1") || config.endpoint.starts_with("ipc"));
        }
    }
}
