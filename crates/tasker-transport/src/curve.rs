//! CURVE (ZeroMQ RFC 26) for both ends, set up from the configuration.
//!
//! The orchestrator turns CURVE on with `curve_authorized_keys_dir` and its
//! own `curve_secret_key_file`; a worker with
//! `curve_server_public_key_file` and its own `curve_secret_key_file`. A
//! public key always follows from its secret key, so only secret keys are
//! configured for a side's own identity.
//!
//! Key files are what `tasker keygen NAME` writes: `NAME.key` (the secret,
//! mode 0600) and `NAME.pub`, both in the ZeroMQ certificate layout that
//! CZMQ and pyzmq also read and write (`public-key = "<Z85>"`,
//! `secret-key = "<Z85>"`). A file holding a bare 40-character Z85 key is
//! taken too.
//!
//! ```
//! use tasker_transport::curve::KeyPair;
//!
//! let pair = KeyPair::generate().unwrap();
//! let again = KeyPair::from_secret(pair.secret_bytes()).unwrap();
//! assert_eq!(pair.public(), again.public());
//! assert_eq!(pair.public().to_string().len(), 40);
//! ```

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tasker_config::TaskerConfig;

/// The ZAP domain the orchestrator's socket asks its handler about.
pub const ZAP_DOMAIN: &str = "tasker";

/// Why CURVE could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CurveError {
    /// The linked libzmq was built without CURVE (no libsodium).
    #[error("this build's libzmq has no CURVE support (it was built without libsodium)")]
    Unsupported,
    /// A key file could not be read.
    // The I/O error is in the message, not a `source`: printed as a chain
    // (anyhow's `{:#}`), it would say the same thing twice.
    #[error("cannot read {key} {path}: {error}")]
    Read {
        /// The config key that names the file.
        key: &'static str,
        /// The file.
        path: String,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A key file holds no usable key. The message never quotes the file,
    /// which may be a secret.
    #[error("{key} {path}: {message}")]
    BadKey {
        /// The config key that names the file (or `curve_authorized_keys_dir`).
        key: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// One CURVE key is set without another it needs.
    #[error("{set} is set but {missing} is not: {why}")]
    Missing {
        /// The key that is set.
        set: &'static str,
        /// The key that is needed with it.
        missing: &'static str,
        /// Why it is needed.
        why: &'static str,
    },
    /// ZeroMQ refused a CURVE option or a key operation.
    #[error("CURVE set-up failed: {0}")]
    Zmq(zmq::Error),
}

/// A CURVE public key: 32 bytes, written as 40 characters of Z85.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key from 40 characters of Z85.
    pub fn from_z85(text: &str) -> Result<Self, String> {
        decode_z85(text).map(Self)
    }

    /// Its 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode_z85(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A CURVE key pair. The secret never appears in `Debug` output.
#[derive(Clone)]
pub struct KeyPair {
    public: PublicKey,
    secret: [u8; 32],
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl KeyPair {
    /// A new random key pair.
    pub fn generate() -> Result<Self, CurveError> {
        ensure_curve()?;
        let pair = zmq::CurveKeyPair::new().map_err(CurveError::Zmq)?;
        Ok(Self {
            public: PublicKey(pair.public_key),
            secret: pair.secret_key,
        })
    }

    /// The pair of a secret key: the public key is computed from it.
    pub fn from_secret(secret: [u8; 32]) -> Result<Self, CurveError> {
        ensure_curve()?;
        let secret_z85 = CString::new(encode_z85(&secret)).expect("Z85 has no NUL");
        let mut public_z85 = [0u8; 41];
        // SAFETY: zmq_curve_public reads a NUL-terminated 40-character Z85
        // secret and writes 40 characters plus a NUL into its first
        // argument, which has room for exactly that.
        let rc = unsafe {
            zmq_sys::zmq_curve_public(public_z85.as_mut_ptr().cast(), secret_z85.as_ptr())
        };
        if rc != 0 {
            // It fails only without CURVE (checked above) or on input that
            // is not Z85, which encode_z85 never produces.
            return Err(CurveError::Zmq(zmq::Error::EINVAL));
        }
        let text = CStr::from_bytes_until_nul(&public_z85)
            .ok()
            .and_then(|c| c.to_str().ok())
            .ok_or(CurveError::Zmq(zmq::Error::EINVAL))?;
        let public = PublicKey::from_z85(text).map_err(|_| CurveError::Zmq(zmq::Error::EINVAL))?;
        Ok(Self { public, secret })
    }

    /// Reads a secret key file (`NAME.key`); `key` is the config key that
    /// named it, for the error message.
    pub fn load(path: &Path, key: &'static str) -> Result<Self, CurveError> {
        let text = read_key_file(path, key)?;
        warn_if_others_can_read(path, key);
        let bad = |message: &str| CurveError::BadKey {
            key,
            path: path.display().to_string(),
            message: message.to_string(),
        };
        let fields = parse_key_file(&text);
        let secret_text = fields.secret.or(fields.bare).ok_or_else(|| {
            bad(if fields.public.is_some() {
                "holds a public key only; give the secret key file (NAME.key, not NAME.pub)"
            } else {
                "holds no secret key (expected `secret-key = \"<40 Z85 characters>\"`)"
            })
        })?;
        let secret = decode_z85(secret_text)
            .map_err(|e| bad(&format!("the secret key is not valid: {e}")))?;
        let pair = Self::from_secret(secret)?;
        if let Some(public) = fields.public {
            if PublicKey::from_z85(public).ok() != Some(pair.public) {
                return Err(bad(
                    "its public-key line does not belong to its secret key; write the pair \
                     again with `tasker keygen`",
                ));
            }
        }
        Ok(pair)
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The secret half's 32 bytes.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret
    }

    /// Writes `NAME.key` (the secret, mode 0600, never over an existing
    /// file) and `NAME.pub` into `dir`; returns both paths.
    pub fn write(&self, dir: &Path, name: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let secret_path = dir.join(format!("{name}.key"));
        let public_path = dir.join(format!("{name}.pub"));
        for path in [&secret_path, &public_path] {
            if path.exists() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists; remove it first to make a new key",
                        path.display()
                    ),
                ));
            }
        }
        let public = self.public;
        let secret = encode_z85(&self.secret);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret_path)?;
        write!(
            file,
            "#   ZeroMQ CURVE **Secret** Certificate, written by tasker keygen\n\
             #   Keep it private: whoever holds it can connect as {name}.\n\
             \n\
             metadata\n    name = \"{name}\"\n\
             curve\n    public-key = \"{public}\"\n    secret-key = \"{secret}\"\n"
        )?;
        file.sync_all()?;
        self.public.write(&public_path, name)?;
        Ok((secret_path, public_path))
    }
}

impl PublicKey {
    /// Writes the key to `path` as a public key file under `name`.
    pub fn write(&self, path: &Path, name: &str) -> std::io::Result<()> {
        std::fs::write(
            path,
            format!(
                "#   ZeroMQ CURVE Public Certificate, written by tasker keygen\n\
                 #   Give it to the other side: an orchestrator admits a worker whose\n\
                 #   .pub is in its curve_authorized_keys_dir; a worker names the\n\
                 #   orchestrator's in curve_server_public_key_file.\n\
                 \n\
                 metadata\n    name = \"{name}\"\n\
                 curve\n    public-key = \"{self}\"\n"
            ),
        )
    }
}

/// Reads a public key file (`NAME.pub`, or a bare Z85 key).
pub fn read_public_key(path: &Path, key: &'static str) -> Result<PublicKey, CurveError> {
    let text = read_key_file(path, key)?;
    let bad = |message: String| CurveError::BadKey {
        key,
        path: path.display().to_string(),
        message,
    };
    let fields = parse_key_file(&text);
    if fields.secret.is_some() {
        // A secret in a file meant to be handed around is a leak waiting
        // to happen: say so rather than use it.
        return Err(bad(
            "holds a secret key; give the public key file (NAME.pub), and keep NAME.key private"
                .into(),
        ));
    }
    let text = fields.public.or(fields.bare).ok_or_else(|| {
        bad("holds no public key (expected `public-key = \"<40 Z85 characters>\"`)".into())
    })?;
    PublicKey::from_z85(text).map_err(|e| bad(format!("the public key is not valid: {e}")))
}

/// The orchestrator's CURVE settings: its key pair, and where the public
/// keys of the workers it admits are.
#[derive(Debug, Clone)]
pub struct ServerCurve {
    /// The orchestrator's own key pair.
    pub keys: KeyPair,
    /// The folder of admitted workers' `*.pub` files.
    pub authorized_keys_dir: PathBuf,
}

impl ServerCurve {
    /// The settings `config` asks for; `None` when CURVE is off (no
    /// `curve_authorized_keys_dir`).
    pub fn from_config(config: &TaskerConfig) -> Result<Option<Self>, CurveError> {
        if config.curve_authorized_keys_dir.is_empty() {
            return Ok(None);
        }
        if config.curve_secret_key_file.is_empty() {
            return Err(CurveError::Missing {
                set: "curve_authorized_keys_dir",
                missing: "curve_secret_key_file",
                why: "the orchestrator needs its own secret key to use CURVE (make one with \
                      `tasker keygen orchestrator`)",
            });
        }
        let keys = KeyPair::load(
            Path::new(&config.curve_secret_key_file),
            "curve_secret_key_file",
        )?;
        let dir = PathBuf::from(&config.curve_authorized_keys_dir);
        // Fail at start on a folder that is not there, rather than refuse
        // every worker later.
        AuthorizedKeys::new(dir.clone()).scan()?;
        Ok(Some(Self {
            keys,
            authorized_keys_dir: dir,
        }))
    }

    /// Makes `socket` a CURVE server that asks ZAP (domain [`ZAP_DOMAIN`])
    /// about each client. Call before `bind`.
    pub fn apply(&self, socket: &zmq::Socket) -> Result<(), CurveError> {
        socket.set_curve_server(true).map_err(CurveError::Zmq)?;
        socket
            .set_curve_secretkey(&self.keys.secret)
            .map_err(CurveError::Zmq)?;
        socket.set_zap_domain(ZAP_DOMAIN).map_err(CurveError::Zmq)?;
        Ok(())
    }
}

/// A worker's CURVE settings: its key pair and the orchestrator's public
/// key.
#[derive(Debug, Clone)]
pub struct ClientCurve {
    /// The worker's own key pair.
    pub keys: KeyPair,
    /// The orchestrator's public key.
    pub server: PublicKey,
}

impl ClientCurve {
    /// The settings `config` asks for; `None` when CURVE is off (no
    /// `curve_server_public_key_file`).
    pub fn from_config(config: &TaskerConfig) -> Result<Option<Self>, CurveError> {
        if config.curve_server_public_key_file.is_empty() {
            if !config.curve_secret_key_file.is_empty()
                && config.curve_authorized_keys_dir.is_empty()
            {
                return Err(CurveError::Missing {
                    set: "curve_secret_key_file",
                    missing: "curve_server_public_key_file",
                    why: "a worker needs the orchestrator's public key (its .pub file) to \
                          connect with CURVE",
                });
            }
            return Ok(None);
        }
        if config.curve_secret_key_file.is_empty() {
            return Err(CurveError::Missing {
                set: "curve_server_public_key_file",
                missing: "curve_secret_key_file",
                why: "a worker needs its own secret key to use CURVE (make one with \
                      `tasker keygen NAME`, and give NAME.pub to the orchestrator)",
            });
        }
        let server = read_public_key(
            Path::new(&config.curve_server_public_key_file),
            "curve_server_public_key_file",
        )?;
        let keys = KeyPair::load(
            Path::new(&config.curve_secret_key_file),
            "curve_secret_key_file",
        )?;
        Ok(Some(Self { keys, server }))
    }

    /// Makes `socket` a CURVE client of the orchestrator. Call before
    /// `connect`.
    pub fn apply(&self, socket: &zmq::Socket) -> Result<(), CurveError> {
        socket
            .set_curve_serverkey(self.server.as_bytes())
            .map_err(CurveError::Zmq)?;
        socket
            .set_curve_publickey(self.keys.public.as_bytes())
            .map_err(CurveError::Zmq)?;
        socket
            .set_curve_secretkey(&self.keys.secret)
            .map_err(CurveError::Zmq)?;
        Ok(())
    }
}

/// The public keys in `curve_authorized_keys_dir`, read again whenever the
/// folder changes (a file added, removed or renamed into place), so keys
/// are admitted and revoked without a restart.
#[derive(Debug)]
pub struct AuthorizedKeys {
    dir: PathBuf,
    scanned: Option<SystemTime>,
    keys: HashMap<PublicKey, String>,
}

impl AuthorizedKeys {
    /// Keys from `dir`, read on first use.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            scanned: None,
            keys: HashMap::new(),
        }
    }

    /// The name (file stem) under which `key` is admitted, if it is.
    pub fn lookup(&mut self, key: &PublicKey) -> Option<&str> {
        let modified = std::fs::metadata(&self.dir).and_then(|m| m.modified()).ok();
        if modified.is_none() || modified != self.scanned {
            if let Err(e) = self.scan() {
                // Keep the last good set: a folder briefly unreadable (being
                // replaced) should not lock every worker out.
                tracing::error!(error = %e, "cannot read the authorized keys; keeping the last set");
            }
        }
        self.keys.get(key).map(String::as_str)
    }

    /// Reads the folder now; returns how many keys it admits. A file that
    /// holds no valid public key is skipped with a warning naming it.
    pub fn scan(&mut self) -> Result<usize, CurveError> {
        const KEY: &str = "curve_authorized_keys_dir";
        let read_error = |error| CurveError::Read {
            key: KEY,
            path: self.dir.display().to_string(),
            error,
        };
        let modified = std::fs::metadata(&self.dir)
            .and_then(|m| m.modified())
            .map_err(read_error)?;
        let mut keys = HashMap::new();
        for entry in std::fs::read_dir(&self.dir).map_err(read_error)? {
            let path = match entry {
                Ok(entry) => entry.path(),
                Err(e) => return Err(read_error(e)),
            };
            if path.extension().and_then(|e| e.to_str()) != Some("pub") {
                continue;
            }
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            match read_public_key(&path, KEY) {
                Ok(key) => {
                    keys.insert(key, name);
                }
                Err(e) => tracing::warn!(error = %e, "skipping an authorized key file"),
            }
        }
        if keys.is_empty() {
            tracing::warn!(
                dir = %self.dir.display(),
                "curve_authorized_keys_dir holds no *.pub key: no worker can connect"
            );
        } else {
            tracing::debug!(dir = %self.dir.display(), keys = keys.len(), "authorized keys read");
        }
        self.keys = keys;
        self.scanned = Some(modified);
        Ok(self.keys.len())
    }
}

fn ensure_curve() -> Result<(), CurveError> {
    if zmq::has("curve").unwrap_or(false) {
        Ok(())
    } else {
        Err(CurveError::Unsupported)
    }
}

fn read_key_file(path: &Path, key: &'static str) -> Result<String, CurveError> {
    let read_error = |error| CurveError::Read {
        key,
        path: path.display().to_string(),
        error,
    };
    let meta = std::fs::metadata(path).map_err(read_error)?;
    // Key files are a few hundred bytes; do not read a huge file by mistake.
    if meta.len() > 64 * 1024 {
        return Err(CurveError::BadKey {
            key,
            path: path.display().to_string(),
            message: format!("is {} bytes, too large for a key file", meta.len()),
        });
    }
    std::fs::read_to_string(path).map_err(read_error)
}

fn warn_if_others_can_read(path: &Path, key: &'static str) {
    if let Some(mode) = tasker_config::open_to_others(path) {
        tracing::warn!(
            key,
            path = %path.display(),
            mode = format!("{mode:o}"),
            "a CURVE secret key file is readable by other users; chmod 600 it"
        );
    }
}

/// The keys found in a key file's text.
#[derive(Default)]
struct KeyFields<'a> {
    public: Option<&'a str>,
    secret: Option<&'a str>,
    /// A line that is nothing but a 40-character key.
    bare: Option<&'a str>,
}

fn parse_key_file(text: &str) -> KeyFields<'_> {
    let mut fields = KeyFields::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // Z85 has `=` in its alphabet: look for the field names first.
        let field = |name: &str| {
            let rest = line.strip_prefix(name)?.trim_start().strip_prefix('=')?;
            Some(rest.trim().trim_matches('"'))
        };
        if let Some(value) = field("public-key") {
            fields.public = Some(value);
        } else if let Some(value) = field("secret-key") {
            fields.secret = Some(value);
        } else if line.len() == 40 && !line.contains(char::is_whitespace) {
            fields.bare = Some(line);
        }
    }
    fields
}

fn encode_z85(bytes: &[u8; 32]) -> String {
    zmq::z85_encode(bytes).expect("32 bytes encode in Z85")
}

fn decode_z85(text: &str) -> Result<[u8; 32], String> {
    const Z85: &str =
        "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
    if text.len() != 40 {
        return Err(format!("expected 40 Z85 characters, found {}", text.len()));
    }
    if !text.chars().all(|c| Z85.contains(c)) {
        return Err("it holds characters that are not Z85".into());
    }
    let bytes = zmq::z85_decode(text).map_err(|e| e.to_string())?;
    bytes
        .try_into()
        .map_err(|_| "it does not decode to 32 bytes".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_files_load_back_as_the_same_pair() {
        let dir = tempfile::tempdir().unwrap();
        let pair = KeyPair::generate().unwrap();
        let (secret, public) = pair.write(dir.path(), "w1").unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let loaded = KeyPair::load(&secret, "curve_secret_key_file").unwrap();
        assert_eq!(loaded.public(), pair.public());
        assert_eq!(loaded.secret_bytes(), pair.secret_bytes());
        assert_eq!(
            read_public_key(&public, "k").unwrap(),
            pair.public(),
            "the .pub file names the pair's public key"
        );
        let again = pair.write(dir.path(), "w1").unwrap_err();
        assert!(again.to_string().contains("exists"), "{again}");
    }

    #[test]
    fn a_bare_z85_line_is_a_key_file_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bare.pub");
        // Z85 keys may hold `=` and `"`-free punctuation: try enough of them
        // that some do.
        for _ in 0..200 {
            let pair = KeyPair::generate().unwrap();
            std::fs::write(&path, format!("{}\n", pair.public())).unwrap();
            assert_eq!(read_public_key(&path, "k").unwrap(), pair.public());
        }
    }

    #[test]
    fn mixed_up_files_are_refused_by_name_without_quoting_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let pair = KeyPair::generate().unwrap();
        let (secret, public) = pair.write(dir.path(), "w").unwrap();
        let error = read_public_key(&secret, "curve_server_public_key_file")
            .unwrap_err()
            .to_string();
        assert!(error.contains("holds a secret key"), "{error}");
        assert!(error.contains("curve_server_public_key_file"), "{error}");
        assert!(
            !error.contains(&encode_z85(&pair.secret_bytes())),
            "{error}"
        );
        let error = KeyPair::load(&public, "curve_secret_key_file")
            .unwrap_err()
            .to_string();
        assert!(error.contains("public key only"), "{error}");

        let garbled = dir.path().join("garbled.key");
        std::fs::write(&garbled, "secret-key = \"not a key\"\n").unwrap();
        let error = KeyPair::load(&garbled, "curve_secret_key_file")
            .unwrap_err()
            .to_string();
        assert!(error.contains("expected 40 Z85 characters"), "{error}");
        assert!(!error.contains("not a key"), "{error}");
    }

    #[test]
    fn a_public_line_that_does_not_match_the_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let path = dir.path().join("odd.key");
        std::fs::write(
            &path,
            format!(
                "curve\n    public-key = \"{}\"\n    secret-key = \"{}\"\n",
                b.public(),
                encode_z85(&a.secret_bytes())
            ),
        )
        .unwrap();
        let error = KeyPair::load(&path, "curve_secret_key_file").unwrap_err();
        assert!(error.to_string().contains("does not belong"), "{error}");
    }

    #[test]
    fn authorized_keys_follow_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        a.write(dir.path(), "alpha").unwrap();
        std::fs::write(dir.path().join("junk.pub"), "nothing here").unwrap();
        let mut keys = AuthorizedKeys::new(dir.path().to_path_buf());
        assert_eq!(keys.lookup(&a.public()), Some("alpha"));
        assert_eq!(keys.lookup(&b.public()), None);

        // The folder's modification time must change for a rescan; make
        // sure it does even on a coarse clock.
        std::thread::sleep(std::time::Duration::from_millis(20));
        b.write(dir.path(), "beta").unwrap();
        std::fs::remove_file(dir.path().join("alpha.pub")).unwrap();
        assert_eq!(keys.lookup(&b.public()), Some("beta"));
        assert_eq!(keys.lookup(&a.public()), None, "a removed key is revoked");
    }

    #[test]
    fn config_pairs_are_checked_by_name() {
        let config = TaskerConfig {
            curve_authorized_keys_dir: "/tmp".into(),
            ..TaskerConfig::default()
        };
        let error = ServerCurve::from_config(&config).unwrap_err().to_string();
        assert!(error.contains("curve_secret_key_file"), "{error}");
        let config = TaskerConfig {
            curve_server_public_key_file: "/tmp/x.pub".into(),
            ..TaskerConfig::default()
        };
        let error = ClientCurve::from_config(&config).unwrap_err().to_string();
        assert!(error.contains("curve_secret_key_file"), "{error}");
        assert!(ClientCurve::from_config(&TaskerConfig::default())
            .unwrap()
            .is_none());
    }
}
