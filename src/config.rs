//! Typed settings: a TOML file overlaid with `WHARF_SECTION__KEY` environment variables;
//! the defaults are the embedded mode (SQLite, `./data`, `./keys`, `./events.jsonl`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

/// Environment variables that configure wharf but are not `SECTION__KEY` overrides.
const ENV_PREFIX: &str = "WHARF_";
const ENV_NOT_KEYS: &[&str] = &["WHARF_CONFIG", "WHARF_LOG"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config key `{key}`{origin}: {message}")]
    Key {
        key: String,
        origin: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sftp: SftpConfig,
    pub ftps: FtpsConfig,
    pub database: DatabaseConfig,
    pub storage: StorageConfig,
    pub events: EventsConfig,
    pub security: SecurityConfig,
    pub recovery: RecoveryConfig,
    pub expectations: ExpectationsConfig,
    pub scan: ScanConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub pgp: PgpConfig,
    pub admin: AdminConfig,
    pub audit: AuditConfig,
}

/// The admin API (`admin/`): off unless enabled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub enabled: bool,
    pub listen: String,
    /// PEM certificate chain and key: HTTPS (rustls) when both are set, plain HTTP otherwise.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: "127.0.0.1:9465".into(),
            cert: None,
            key: None,
        }
    }
}

/// The audit trail of administrative changes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Rows older than this are pruned from the oldest end (the chain re-anchored).
    pub retention: HumanDuration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention: HumanDuration(Duration::from_secs(400 * 86400)),
        }
    }
}

/// PGP on arrival (`pgp/`): the deployment's decryption keys and what names are decrypted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PgpConfig {
    /// Files (globs) of armored OpenPGP secret keys, loaded at start.
    pub keys: Vec<String>,
    /// The environment variable holding the keys' passphrase (none: unprotected keys).
    pub passphrase_env: Option<String>,
    /// Names with one of these suffixes are decrypted in a folder with `--decrypt-to`.
    pub suffixes: Vec<String>,
    /// Decryptions this instance runs at once (each holds one upload's part buffers).
    pub max_concurrent: usize,
    /// A plaintext may be at most this many times its encrypted file (and always 64 MiB):
    /// a larger one is refused as a decompression bomb.
    pub max_expansion: u64,
    /// The address space of each decryption's worker process: a file that needs more is
    /// refused as hostile, and only that process ends.
    pub worker_memory: ByteSize,
}

impl Default for PgpConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            passphrase_env: None,
            suffixes: vec![".pgp".into(), ".gpg".into(), ".asc".into()],
            max_concurrent: 2,
            max_expansion: 100,
            worker_memory: ByteSize(1 << 30),
        }
    }
}

/// Malware scanning before commit (`scan/`): off while `clamd` is empty.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScanConfig {
    /// ClamAV's daemon: `tcp://HOST:PORT` or `unix:///PATH`; empty: no scanning.
    pub clamd: String,
    /// Files larger than this are not scanned (clamd's StreamMaxLength) and follow `oversize`.
    pub max_bytes: ByteSize,
    /// A file over `max_bytes`: refused, or let through with `scan: skipped`.
    pub oversize: ScanPolicy,
    /// clamd down or not answering in `timeout`: refused (fail closed), or let through with
    /// `scan: unavailable`.
    pub unavailable: ScanPolicy,
    /// Bound on each exchange with clamd (connecting, taking a chunk, the verdict).
    pub timeout: HumanDuration,
    /// Scans at once per instance; past it, uploads that need one wait.
    pub max_concurrent: usize,
    /// Whether folders (and accounts without folders) are scanned unless they say
    /// `--no-scan`; with false, only those that say `--scan` are.
    pub by_default: bool,
}

/// What happens to a file a scan could not judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScanPolicy {
    Refuse,
    Allow,
}

impl Default for ScanConfig {
    fn default() -> Self {
        Self {
            clamd: String::new(),
            max_bytes: ByteSize(100 << 20),
            oversize: ScanPolicy::Refuse,
            unavailable: ScanPolicy::Refuse,
            timeout: HumanDuration(Duration::from_secs(60)),
            max_concurrent: 16,
            by_default: true,
        }
    }
}

/// Expected arrivals (`wharf expect`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpectationsConfig {
    /// How often every instance evaluates the windows (a window's events come at most this
    /// long after the arrival or deadline that makes them).
    pub interval: HumanDuration,
}

impl Default for ExpectationsConfig {
    fn default() -> Self {
        Self {
            interval: HumanDuration(Duration::from_secs(10)),
        }
    }
}

/// What an instance does about work a dead one left (`journal/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecoveryConfig {
    /// How often an instance says it is alive; one silent for three of these is dead, and
    /// its commits under way and multipart uploads are taken over.
    pub heartbeat: HumanDuration,
    /// How often every instance looks for such work (and prunes old records).
    pub interval: HumanDuration,
    /// S3 multipart uploads no instance tracks, and local temporary files, are aborted or
    /// removed once this old.
    pub orphan_grace: HumanDuration,
    /// A temp-name upload never renamed is forgotten after this.
    pub staged_ttl: HumanDuration,
    /// How long a client's close (or rename) waits for an answer that was not definite (a
    /// database or storage outage, a lost reply) to be settled before it is told that the
    /// outcome could not be confirmed.
    pub settle_wait: HumanDuration,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            heartbeat: HumanDuration(Duration::from_secs(10)),
            interval: HumanDuration(Duration::from_secs(30)),
            orphan_grace: HumanDuration(Duration::from_secs(3600)),
            staged_ttl: HumanDuration(Duration::from_secs(7 * 86400)),
            settle_wait: HumanDuration(Duration::from_secs(60)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftpConfig {
    pub listen: String,
    pub host_key_dir: PathBuf,
    pub banner: String,
    pub idle_timeout: HumanDuration,
    pub login_timeout: HumanDuration,
    pub max_sessions: usize,
    pub max_sessions_per_ip: usize,
    /// On SIGTERM/SIGINT, how long running sessions may go on before they are cut (and their
    /// unfinished uploads aborted).
    pub shutdown_grace: HumanDuration,
    /// On SIGTERM/SIGINT, how long the listeners stay open while `/readyz` already says
    /// `draining` (so a load balancer's health check notices before connections are refused).
    pub drain_delay: HumanDuration,
}

impl Default for SftpConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:2222".into(),
            host_key_dir: "keys".into(),
            banner: String::new(),
            idle_timeout: HumanDuration(Duration::from_secs(600)),
            login_timeout: HumanDuration(Duration::from_secs(30)),
            max_sessions: 1000,
            max_sessions_per_ip: 50,
            shutdown_grace: HumanDuration(Duration::from_secs(30)),
            drain_delay: HumanDuration(Duration::ZERO),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FtpsConfig {
    pub listen: String,
    pub implicit_listen: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub passive_ports: String,
    pub passive_host: String,
    /// A TLS data connection must resume its control connection's TLS session (vsftpd's
    /// `require_ssl_reuse`): the proof that it comes from the same client, which the address
    /// alone is not behind a load balancer.
    pub require_tls_session_reuse: bool,
}

impl Default for FtpsConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:2121".into(),
            implicit_listen: String::new(),
            cert: "keys/ftps.crt".into(),
            key: "keys/ftps.key".into(),
            passive_ports: "50000-50100".into(),
            passive_host: String::new(),
            require_tls_session_reuse: true,
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// May carry a password, so it is kept secret and shown only through [`redact_url`].
    #[serde(deserialize_with = "secret_string")]
    pub url: SecretString,
    /// Upper bound of pooled connections per instance.
    pub max_connections: u32,
    /// How long to wait for a connection before calling the database unreachable.
    pub connect_timeout: HumanDuration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: SecretString::from("sqlite://wharf.db"),
            max_connections: 10,
            connect_timeout: HumanDuration(Duration::from_secs(5)),
        }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(self.url.expose_secret()))
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub default_home: String,
    /// Memory all S3 uploads together may hold in part buffers; writers wait beyond it.
    pub upload_memory: ByteSize,
    pub s3: S3Config,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            default_home: "data/".into(),
            upload_memory: ByteSize(1 << 30),
            s3: S3Config::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    pub endpoint: String,
    pub region: String,
    pub force_path_style: bool,
    pub part_size: ByteSize,
    pub max_inflight_parts: usize,
    /// The longest one attempt at an S3 request may take (a part upload included; copies get
    /// 10× and CompleteMultipartUpload 5×). A request S3 never answers is retried, then fails
    /// the operation, instead of holding the client and the upload forever.
    pub request_timeout: HumanDuration,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            region: "us-east-1".into(),
            force_path_style: false,
            part_size: ByteSize(8 << 20),
            max_inflight_parts: 4,
            request_timeout: HumanDuration(Duration::from_secs(60)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// CloudEvents `source`; empty means `wharf://<hostname>`.
    pub source: String,
    /// How long a claimed delivery stays reserved to one instance; a crashed instance's
    /// claims are taken over after this.
    pub lease: HumanDuration,
    /// Events whose deliveries are all done are deleted once this old.
    pub retention: HumanDuration,
    /// `None` (the key is absent) means the embedded default: one jsonl sink at `events.jsonl`.
    pub sinks: Option<Vec<SinkConfig>>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            source: String::new(),
            lease: HumanDuration(Duration::from_secs(30)),
            retention: HumanDuration(Duration::from_secs(30 * 86400)),
            sinks: None,
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: SinkKind,
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default, deserialize_with = "opt_secret_string")]
    pub secret: Option<SecretString>,
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    #[serde(default)]
    pub subject_prefix: Option<String>,
    #[serde(default)]
    pub stream: Option<String>,
    #[serde(default)]
    pub max_age: Option<HumanDuration>,
}

/// The URL is shown without credentials or query (a webhook's token often lives there).
impl std::fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("url", &self.url.as_deref().map(redact_endpoint))
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .field("subject_prefix", &self.subject_prefix)
            .field("stream", &self.stream)
            .field("max_age", &self.max_age)
            .finish()
    }
}

/// `scheme://host[:port]/path`, without user, password, query or fragment.
pub fn redact_endpoint(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            let hidden = !u.username().is_empty() || u.password().is_some() || u.query().is_some();
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            if hidden {
                format!("{u} (credentials and query hidden)")
            } else {
                u.to_string()
            }
        }
        Err(_) => "<unparseable url>".into(),
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid address range {0:?}: expected a CIDR such as 203.0.113.0/24 or 2001:db8::/32, or a single address")]
pub struct InvalidCidr(pub String);

/// Parses a CIDR or a bare address (a /32 or /128), normalised to its network address.
pub fn parse_cidr(s: &str) -> Result<ipnet::IpNet, InvalidCidr> {
    let t = s.trim();
    if let Ok(net) = t.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    t.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| InvalidCidr(s.into()))
}

impl SinkConfig {
    /// Its name: `name`, or the type's (what `events replay --sink` takes).
    pub fn sink_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| match self.kind {
            SinkKind::Jsonl => "jsonl".into(),
            SinkKind::Webhook => "webhook".into(),
            SinkKind::Nats => "nats".into(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Jsonl,
    Webhook,
    Nats,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    pub ban_after_failures: u32,
    pub ban_window: HumanDuration,
    pub ban_duration: HumanDuration,
    pub temp_suffixes: Vec<String>,
    pub setstat: SetstatPolicy,
    pub proxy_protocol: bool,
    /// The load balancers (CIDRs or addresses) whose PROXY headers are believed; a connection
    /// from anywhere else is refused while `proxy_protocol` is on.
    #[serde(deserialize_with = "cidrs")]
    pub proxy_trusted: Vec<ipnet::IpNet>,
    /// argon2id memory cost in KiB for new password hashes.
    pub argon2_memory_kib: u32,
    /// argon2id iterations for new password hashes.
    pub argon2_iterations: u32,
    /// argon2id lanes for new password hashes.
    pub argon2_parallelism: u32,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            ban_after_failures: 10,
            ban_window: HumanDuration(Duration::from_secs(300)),
            ban_duration: HumanDuration(Duration::from_secs(900)),
            temp_suffixes: vec![".filepart".into(), ".part".into(), ".tmp".into()],
            setstat: SetstatPolicy::Ignore,
            proxy_protocol: false,
            proxy_trusted: Vec::new(),
            argon2_memory_kib: 19456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
        }
    }
}

/// A list of CIDRs or single addresses (`"10.0.0.0/8"`, `"192.0.2.7"`).
fn cidrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    let items = Vec::<String>::deserialize(d)?;
    items
        .iter()
        .map(|s| parse_cidr(s).map_err(serde::de::Error::custom))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SetstatPolicy {
    Ignore,
    Refuse,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// A duration written as a humantime string ("30s", "10m").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string like \"30s\", \"10m\" or \"1h\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<HumanDuration, E> {
                humantime::parse_duration(s.trim())
                    .map(HumanDuration)
                    .map_err(|e| {
                        E::custom(format!(
                            "invalid duration {s:?} ({e}); expected a string like \"30s\", \"10m\" or \"1h\""
                        ))
                    })
            }
        }
        d.deserialize_str(V)
    }
}

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| format!("invalid duration {s:?} ({e}); expected e.g. 30s, 10m, 31d"))
    }
}

/// A size written as "8MiB", "512KiB", "1GiB" or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid size {s:?}; expected a string like \"8MiB\""))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            _ => {
                return Err(format!(
                    "invalid size {s:?}; expected a string like \"8MiB\""
                ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a size string like \"8MiB\" or a number of bytes")
        })? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

fn secret_string<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    String::deserialize(d).map(SecretString::from)
}

fn opt_secret_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    Option::<String>::deserialize(d).map(|o| o.map(SecretString::from))
}

/// A database URL with any password replaced, fit for error messages and logs.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparseable database url>".into(),
    }
}

impl Config {
    /// Loads the file (if any) and overlays the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Like [`Config::load`] with an explicit environment, so tests need not touch the process's.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut root = toml::Table::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            root = text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError::Syntax {
                    path: path.to_owned(),
                    message: e.message().to_string(),
                })?;
        }
        let mut from_env = Vec::new();
        let mut env: Vec<(String, String)> = env.into_iter().collect();
        env.sort();
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if ENV_NOT_KEYS.contains(&name.as_str()) || !rest.contains("__") {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            let dotted = path.join(".");
            set_path(&mut root, &path, env_value(&raw)).map_err(|message| ConfigError::Key {
                key: dotted.clone(),
                origin: format!(" (from {name})"),
                message,
            })?;
            from_env.push((dotted, name));
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(root)).map_err(|e| {
                let key = e.path().to_string();
                let origin = from_env
                    .iter()
                    .find(|(dotted, _)| key == *dotted || key.starts_with(&format!("{dotted}.")))
                    .map(|(_, var)| format!(" (from {var})"))
                    .unwrap_or_default();
                ConfigError::Key {
                    key,
                    origin,
                    message: e.into_inner().to_string(),
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Key {
            key: key.into(),
            origin: String::new(),
            message,
        };
        if self.storage.s3.part_size.0 < 5 << 20 || self.storage.s3.part_size.0 > 5 << 30 {
            return Err(bad(
                "storage.s3.part_size",
                "must be between 5MiB and 5GiB (S3 multipart limits)".into(),
            ));
        }
        if self.security.proxy_protocol && self.security.proxy_trusted.is_empty() {
            return Err(bad(
                "security.proxy_trusted",
                "must list the load balancers' addresses (CIDRs) when security.proxy_protocol is on: \
                 a PROXY header from anyone else could claim any client address"
                    .into(),
            ));
        }
        // Fewer than two parts: a multipart upload could never get the part it waits for.
        if self.storage.upload_memory.0 < 2 * self.storage.s3.part_size.0 {
            return Err(bad(
                "storage.upload_memory",
                format!(
                    "must hold at least two parts of storage.s3.part_size ({} bytes here), \
                     or uploads larger than one part could never proceed",
                    2 * self.storage.s3.part_size.0
                ),
            ));
        }
        if self.storage.s3.max_inflight_parts == 0 {
            return Err(bad(
                "storage.s3.max_inflight_parts",
                "must be at least 1".into(),
            ));
        }
        if self.sftp.max_sessions == 0 || self.sftp.max_sessions_per_ip == 0 {
            return Err(bad(
                "sftp.max_sessions",
                "sftp.max_sessions and sftp.max_sessions_per_ip must be at least 1".into(),
            ));
        }
        if self.security.argon2_memory_kib < 8 * self.security.argon2_parallelism.max(1)
            || self.security.argon2_iterations == 0
            || self.security.argon2_parallelism == 0
        {
            return Err(bad(
                "security.argon2_memory_kib",
                "argon2 costs must be positive (memory at least 8 KiB per lane)".into(),
            ));
        }
        if self.admin.cert.is_some() != self.admin.key.is_some() {
            return Err(bad(
                "admin.cert",
                "admin.cert and admin.key go together: set both for HTTPS, or neither".into(),
            ));
        }
        if self.audit.retention.0.is_zero() {
            return Err(bad(
                "audit.retention",
                "must be longer than 0s (PCI DSS 10.7 asks for at least a year)".into(),
            ));
        }
        if self.pgp.max_expansion == 0 {
            return Err(bad("pgp.max_expansion", "must be at least 1".into()));
        }
        if self.pgp.max_concurrent == 0 {
            return Err(bad("pgp.max_concurrent", "must be at least 1".into()));
        }
        if self
            .pgp
            .suffixes
            .iter()
            .any(|s| s.len() < 2 || !s.starts_with('.'))
        {
            return Err(bad(
                "pgp.suffixes",
                "each must be a file name suffix such as \".pgp\"".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, sink) in self.events.sinks.iter().flatten().enumerate() {
            let name = sink.sink_name();
            if !names.insert(name.clone()) {
                return Err(bad(
                    &format!("events.sinks[{i}].name"),
                    format!("two sinks are named {name:?}; give each a distinct name"),
                ));
            }
            let key = |field: &str| format!("events.sinks[{i}].{field}");
            let missing =
                |field: &str| bad(&key(field), format!("required for a {:?} sink", sink.kind));
            match sink.kind {
                SinkKind::Jsonl => {
                    if sink.path.is_none() {
                        return Err(missing("path"));
                    }
                }
                SinkKind::Webhook => {
                    let Some(u) = &sink.url else {
                        return Err(missing("url"));
                    };
                    match url::Url::parse(u) {
                        Ok(p) if p.scheme() == "http" || p.scheme() == "https" => {}
                        _ => return Err(bad(&key("url"), format!("{u:?} is not an http(s) URL"))),
                    }
                    if sink.secret.is_none() {
                        return Err(missing("secret"));
                    }
                }
                SinkKind::Nats => {
                    if sink.url.is_none() {
                        return Err(missing("url"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Environment values are TOML values when they parse as one (`10`, `true`, `["a"]`), else strings.
fn env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

fn set_path(root: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut table = root;
    for p in parents {
        let entry = table
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a section"))?;
    }
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_the_embedded_mode() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(c.database.url.expose_secret(), "sqlite://wharf.db");
        assert_eq!(c.storage.default_home, "data/");
        assert_eq!(c.sftp.listen, "0.0.0.0:2222");
        assert_eq!(c.storage.s3.part_size, ByteSize(8 << 20));
        assert!(c.events.sinks.is_none());
    }

    #[test]
    fn env_overrides_nested_keys_and_parses_types() {
        let c = Config::load_from(
            None,
            env(&[
                ("WHARF_DATABASE__URL", "postgres://u:pw@db/x"),
                ("WHARF_STORAGE__S3__PART_SIZE", "16MiB"),
                ("WHARF_SFTP__MAX_SESSIONS", "7"),
                ("WHARF_SECURITY__PROXY_PROTOCOL", "true"),
                (
                    "WHARF_SECURITY__PROXY_TRUSTED",
                    "[\"10.0.0.0/8\", \"192.0.2.7\"]",
                ),
                ("WHARF_CONFIG", "ignored.toml"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(c.database.url.expose_secret(), "postgres://u:pw@db/x");
        assert_eq!(c.storage.s3.part_size, ByteSize(16 << 20));
        assert_eq!(c.sftp.max_sessions, 7);
        assert!(c.security.proxy_protocol);
        assert_eq!(c.security.proxy_trusted.len(), 2);
        assert!(
            !format!("{c:?}").contains("pw@"),
            "password leaked in Debug"
        );
    }

    #[test]
    fn sink_urls_are_shown_without_credentials() {
        let c = Config::load_from(
            None,
            env(&[(
                "WHARF_EVENTS__SINKS",
                "[{type = \"webhook\", url = \"https://user:hunter2@hooks.example/in?token=abc123\", secret = \"s3cr3t\"}]",
            )]),
        )
        .unwrap();
        let shown = format!("{:?}", c.events);
        assert!(shown.contains("https://hooks.example/in"), "{shown}");
        for secret in ["hunter2", "abc123", "s3cr3t", "user:"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
    }

    #[test]
    fn unknown_env_key_is_named() {
        let e = Config::load_from(None, env(&[("WHARF_SFTP__LISTNE", "x")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sftp.listne") && e.contains("WHARF_SFTP__LISTNE"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_key_and_form() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("w.toml");
        std::fs::write(&f, "[sftp]\nidle_timeout = \"soon\"\n").unwrap();
        let e = Config::load_from(Some(&f), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sftp.idle_timeout") && e.contains("\"30s\""),
            "{e}"
        );

        std::fs::write(&f, "[storage]\ndefualt_home = \"x\"\n").unwrap();
        let e = Config::load_from(Some(&f), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("defualt_home"), "{e}");

        std::fs::write(&f, "[storage.s3]\npart_size = \"8 furlongs\"\n").unwrap();
        let e = Config::load_from(Some(&f), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("storage.s3.part_size"), "{e}");

        // PROXY headers without the balancers to believe them from.
        std::fs::write(&f, "[security]\nproxy_protocol = true\n").unwrap();
        let e = Config::load_from(Some(&f), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("security.proxy_trusted"), "{e}");
        std::fs::write(
            &f,
            "[security]\nproxy_protocol = true\nproxy_trusted = [\"10.0.0.0/8\", \"192.0.2.7\", \"bogus\"]\n",
        )
        .unwrap();
        let e = Config::load_from(Some(&f), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("security.proxy_trusted") && e.contains("bogus"),
            "{e}"
        );

        // A budget smaller than two parts would hang every multipart upload.
        std::fs::write(&f, "[storage]\nupload_memory = \"8MiB\"\n").unwrap();
        let e = Config::load_from(Some(&f), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("storage.upload_memory") && e.contains("two parts"),
            "{e}"
        );

        std::fs::write(&f, "[[events.sinks]]\ntype = \"webhook\"\nsecret = \"s\"\n").unwrap();
        let e = Config::load_from(Some(&f), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("events.sinks[0].url"), "{e}");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!("8MiB".parse::<ByteSize>().unwrap(), ByteSize(8 << 20));
        assert_eq!("512 KiB".parse::<ByteSize>().unwrap(), ByteSize(512 << 10));
        assert_eq!("100".parse::<ByteSize>().unwrap(), ByteSize(100));
        assert!("MiB".parse::<ByteSize>().is_err());
        assert!("5 parsecs".parse::<ByteSize>().is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://wharf:hunter2@db.internal:5432/wharf"),
            "postgres://wharf:***@db.internal:5432/wharf"
        );
    }
}
