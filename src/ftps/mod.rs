//! The FTPS front-end: libunftp speaks the protocol (explicit TLS on `listen`, implicit TLS on
//! `implicit_listen`, `PROT P` required on control and data) on connections the shared
//! lifecycle (`session::listener`) accepts; wharf logs partners in against the account store
//! (`Logins`) and serves their files through the shared session layer (`storage.rs`).

pub mod storage;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use libunftp::options::FtpsRequired;
use secrecy::SecretString;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use unftp_core::auth::{
    AuthenticationError, Authenticator as FtpAuthenticator, Credentials, Principal, UserDetail,
    UserDetailError, UserDetailProvider,
};

use crate::config::FtpsConfig;
use crate::identity::auth::Authenticator;
use crate::identity::Account;
use crate::session::checksum::HashStreams;
use crate::session::limits::Gate;
use crate::session::listener::{self, Conn, FrontEnd, Running};
use crate::session::{ConnectionQuota, Mount, Protocol, Session, SessionContext, SessionInfo};
use crate::storage::Storage;
use crate::telemetry::metrics::metrics;

#[derive(Debug, thiserror::Error)]
pub enum FtpsError {
    #[error("ftps: {0}")]
    Config(String),
}

/// A logged-in FTPS partner: their session, shared by every command of the connection.
#[derive(Clone)]
pub struct FtpsUser {
    pub session: Arc<Session>,
    /// Cancelled when wharf ends the connection (shutdown): running transfers abort.
    pub cut: CancellationToken,
    /// The connection's turns at reading files back for checksums (`HASH`, `XSHA256`).
    pub streams: Arc<HashStreams>,
}

impl fmt::Debug for FtpsUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.session.info.username)
    }
}

impl fmt::Display for FtpsUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.session.info.username)
    }
}

impl UserDetail for FtpsUser {}

/// Everything an FTPS connection needs.
pub struct FtpsContext {
    pub auth: Authenticator,
    pub gate: Arc<Gate>,
    pub storage: Storage,
    pub sessions: Arc<SessionContext>,
}

/// libunftp asks one object to check the password (it only learns a principal's name) and
/// another to turn that name into a user. The first hands the second a one-time ticket, so
/// the session is built with the right account and client address even when the same
/// account logs in from several places at once.
struct Logins {
    ctx: Arc<FtpsContext>,
    pending: Mutex<HashMap<String, FtpsUser>>,
}

impl fmt::Debug for Logins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("wharf logins")
    }
}

impl Logins {
    fn session(&self, id: &str, account: Account, ip: IpAddr) -> Arc<Session> {
        let info = SessionInfo {
            id: id.to_string(),
            protocol: Protocol::Ftps,
            client_ip: ip,
            username: account.username.clone(),
        };
        let mounts = Mount::of(&account, &self.ctx.storage);
        Arc::new(Session::new(
            info,
            account,
            mounts,
            self.ctx.sessions.clone(),
            ConnectionQuota::new(),
        ))
    }
}

/// One control connection: its id (the session id once logged in), whether it has logged
/// in yet (for `login_timeout`), and the span its activity lines belong to.
struct Connection {
    id: String,
    /// The client's address: the socket's peer, or the PROXY header's source. libunftp only
    /// knows the socket's.
    client_ip: IpAddr,
    logins: Arc<Logins>,
    authed: Arc<AtomicBool>,
    span: tracing::Span,
    cut: CancellationToken,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ftps connection {}", self.id)
    }
}

#[async_trait]
impl FtpAuthenticator for Connection {
    async fn authenticate(
        &self,
        username: &str,
        creds: &Credentials,
    ) -> Result<Principal, AuthenticationError> {
        let ip = self.client_ip;
        let password = SecretString::from(creds.password.clone().unwrap_or_default());
        let ctx = &self.logins.ctx;
        match ctx.auth.password(username, &password, ip).await {
            Ok(account) => {
                self.span.record("username", account.username.as_str());
                self.span
                    .in_scope(|| tracing::info!(activity = "AUTH_SUCCESS", method = "password"));
                let auth = ctx.auth.clone();
                let (name, last) = (account.username.clone(), account.last_login_at);
                tokio::spawn(async move { auth.record_login(&name, last).await });
                let ticket = uuid::Uuid::new_v4().to_string();
                let user = FtpsUser {
                    session: self.logins.session(&self.id, account, ip),
                    cut: self.cut.clone(),
                    streams: HashStreams::per_connection(),
                };
                if let Ok(mut p) = self.logins.pending.lock() {
                    p.insert(ticket.clone(), user);
                }
                self.authed.store(true, Ordering::Release);
                Ok(Principal { username: ticket })
            }
            Err(why) => {
                metrics().auth_failed("ftps", "password");
                self.span.in_scope(|| {
                    tracing::info!(
                        activity = "AUTH_FAILURE",
                        username,
                        method = "password",
                        reason = why.name()
                    )
                });
                Err(AuthenticationError::BadPassword)
            }
        }
    }
}

#[async_trait]
impl UserDetailProvider for Logins {
    type User = FtpsUser;

    async fn provide_user_detail(
        &self,
        principal: &Principal,
    ) -> Result<FtpsUser, UserDetailError> {
        self.pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(&principal.username))
            .ok_or_else(|| UserDetailError::Generic("login ticket not found".into()))
    }
}

/// Forwards to the shared `Logins` (libunftp wants the two roles as separate `Arc`s).
#[derive(Debug)]
struct Tickets(Arc<Logins>);

#[async_trait]
impl UserDetailProvider for Tickets {
    type User = FtpsUser;

    async fn provide_user_detail(
        &self,
        principal: &Principal,
    ) -> Result<FtpsUser, UserDetailError> {
        self.0.provide_user_detail(principal).await
    }
}

pub struct FtpsServer {
    logins: Arc<Logins>,
    cert: PathBuf,
    key: PathBuf,
    passive_ports: RangeInclusive<u16>,
    passive_host: Option<String>,
    require_tls_reuse: bool,
    idle_timeout: Duration,
    login_timeout: Duration,
}

impl FtpsServer {
    /// `None` when FTPS is not configured: no certificate at the default path.
    pub fn from_config(
        cfg: &FtpsConfig,
        idle_timeout: Duration,
        login_timeout: Duration,
        ctx: Arc<FtpsContext>,
    ) -> Result<Option<FtpsServer>, FtpsError> {
        let default = FtpsConfig::default();
        if !cfg.cert.exists() {
            if cfg.cert == default.cert {
                return Ok(None);
            }
            return Err(FtpsError::Config(format!(
                "ftps.cert = {}: no such file",
                cfg.cert.display()
            )));
        }
        if !cfg.key.exists() {
            return Err(FtpsError::Config(format!(
                "ftps.key = {}: no such file",
                cfg.key.display()
            )));
        }
        let passive_ports = parse_ports(&cfg.passive_ports)?;
        let passive_host = Some(cfg.passive_host.clone()).filter(|h| !h.is_empty());
        if let Some(h) = &passive_host {
            if h.parse::<std::net::Ipv4Addr>().is_err() {
                return Err(FtpsError::Config(format!(
                    "ftps.passive_host = {h:?}: expected an IPv4 address"
                )));
            }
        }
        Ok(Some(FtpsServer {
            logins: Arc::new(Logins {
                ctx,
                pending: Mutex::new(HashMap::new()),
            }),
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            passive_ports,
            passive_host,
            require_tls_reuse: cfg.require_tls_session_reuse,
            idle_timeout,
            login_timeout,
        }))
    }

    /// A libunftp server for one connection (it consumes itself serving it). The certificate
    /// is read each time, so a renewed one takes effect without a restart.
    fn build(
        &self,
        conn: Arc<Connection>,
    ) -> Result<libunftp::Server<storage::SessionStorage, FtpsUser>, String> {
        let mut b = libunftp::ServerBuilder::with_user_detail_provider(
            Box::new(storage::SessionStorage::default),
            Arc::new(Tickets(self.logins.clone())),
        )
        .authenticator(conn)
        .greeting("wharf FTPS: AUTH TLS required")
        .ftps(self.cert.clone(), self.key.clone())
        .ftps_required(FtpsRequired::All, FtpsRequired::All)
        .ftps_require_data_session_resumption(self.require_tls_reuse)
        .passive_ports(self.passive_ports.clone())
        .idle_session_timeout(self.idle_timeout.as_secs().max(1))
        .logger(slog::Logger::root(WarningsToTracing, slog::o!()));
        if let Some(h) = &self.passive_host {
            b = b.passive_host(h.as_str());
        }
        b.build().map_err(|e| e.to_string())
    }

    /// Checks the certificate and key load, so a bad pair fails at startup, not per client.
    pub fn check(&self) -> Result<(), FtpsError> {
        let probe = Arc::new(Connection {
            id: String::new(),
            client_ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
            logins: self.logins.clone(),
            authed: Arc::new(AtomicBool::new(false)),
            span: tracing::Span::none(),
            cut: CancellationToken::new(),
        });
        self.build(probe).map(drop).map_err(|e| {
            FtpsError::Config(format!(
                "cannot use ftps.cert {} / ftps.key {}: {e}",
                self.cert.display(),
                self.key.display()
            ))
        })
    }

    /// Accepts connections until `stop`; then waits for running sessions until `force`.
    /// `implicit`: the listener's clients speak TLS from their first byte (`implicit_listen`).
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        implicit: bool,
        stop: CancellationToken,
        force: CancellationToken,
    ) {
        let gate = self.logins.ctx.gate.clone();
        let login_timeout = self.login_timeout;
        let front = Arc::new(FtpsListener {
            server: self,
            implicit,
        });
        listener::serve(front, listener, gate, login_timeout, stop, force).await;
    }
}

/// One FTPS listener: explicit TLS (`AUTH TLS`) or implicit TLS from the first byte.
struct FtpsListener {
    server: Arc<FtpsServer>,
    implicit: bool,
}

impl FrontEnd for FtpsListener {
    fn protocol(&self) -> &'static str {
        "ftps"
    }

    async fn start(self: Arc<Self>, sock: TcpStream, c: &Conn) -> Result<Running, String> {
        // libunftp runs the connection on a task of its own: closing the socket is the way
        // to end it (login timeout, shutdown).
        let (sock, closer) = split_closer(sock).map_err(|e| {
            tracing::warn!(parent: &c.span, error = %e, "cannot set up an FTPS connection");
            format!("socket: {e}")
        })?;
        let conn = Arc::new(Connection {
            id: c.id.clone(),
            client_ip: c.client.ip(),
            logins: self.server.logins.clone(),
            authed: c.authed.clone(),
            span: c.span.clone(),
            cut: CancellationToken::new(),
        });
        let server = self.server.build(conn.clone()).map_err(|e| {
            tracing::error!(parent: &c.span, error = %e, "cannot serve an FTPS connection");
            "server configuration error".to_string()
        })?;
        let implicit = self.implicit;
        let cut_token = conn.cut.clone();
        Ok(Running {
            ended: Box::pin(async move {
                let r = if implicit {
                    server.service_implicit_tls(sock).await
                } else {
                    server.service(sock).await
                };
                conn.cut.cancel();
                match r {
                    Ok(()) => "connection closed".to_string(),
                    Err(e) => format!("connection error: {e}"),
                }
            }),
            cut: Box::new(move |_why| {
                Box::pin(async move {
                    // Running transfers abort; the control loop sees its socket closed.
                    cut_token.cancel();
                    let _ = closer.shutdown(std::net::Shutdown::Both);
                })
            }),
        })
    }
}

/// libunftp's own warnings and errors (a refused data connection, say) in wharf's log; its
/// chatter below that level is dropped.
struct WarningsToTracing;

impl slog::Drain for WarningsToTracing {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        if record.level().is_at_least(slog::Level::Warning) {
            tracing::warn!(
                activity = "ERROR",
                component = "libunftp",
                "{}",
                record.msg()
            );
        }
        Ok(())
    }
}

/// The connection, and a handle on the same socket that can shut it down from outside.
fn split_closer(sock: TcpStream) -> std::io::Result<(TcpStream, std::net::TcpStream)> {
    let std = sock.into_std()?;
    let closer = std.try_clone()?;
    Ok((TcpStream::from_std(std)?, closer))
}

fn parse_ports(s: &str) -> Result<RangeInclusive<u16>, FtpsError> {
    let bad = || {
        FtpsError::Config(format!(
            "ftps.passive_ports = {s:?}: expected a range like \"50000-50100\""
        ))
    };
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok(a..=b)
}

#[cfg(test)]
mod tests {
    use super::parse_ports;

    #[test]
    fn passive_port_ranges() {
        assert_eq!(parse_ports("50000-50100").unwrap(), 50000..=50100);
        assert!(parse_ports("50100-50000").is_err());
        assert!(parse_ports("0-10").is_err());
        assert!(parse_ports("5000").is_err());
    }
}
