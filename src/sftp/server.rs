//! The SSH side of the SFTP front-end (russh): the algorithm policy, password,
//! keyboard-interactive and public-key login, the SFTP subsystem's channel and the checksum
//! commands of `exec.rs`, started by the shared connection lifecycle (`session::listener`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::{Algorithm, EcdsaCurve, HashAlg, PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, VerifiedPublicKey};
use russh::{
    cipher, compression, kex, mac, Channel, ChannelId, ChannelOpenFailure, Disconnect, MethodKind,
    MethodSet, Preferred, SshId,
};
use secrecy::SecretString;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::dispatch;
use super::exec::{self, Exec};
use super::subsystem::{SftpHandler, MAX_PACKET_LEN};
use crate::config::SftpConfig;
use crate::identity::auth::{Authenticator, Refusal};
use crate::identity::keys::fingerprint;
use crate::identity::Account;
use crate::session::checksum::HashStreams;
use crate::session::limits::Gate;
use crate::session::listener::{self, Conn, FrontEnd, Running};
use crate::session::{ConnectionQuota, Mount, Protocol, Session, SessionContext, SessionInfo};
use crate::storage::Storage;
use crate::telemetry::metrics::metrics;

/// What every SFTP connection of this process shares.
pub struct SftpContext {
    pub auth: Authenticator,
    pub storage: Storage,
    pub sessions: Arc<SessionContext>,
    pub banner: Option<String>,
}

/// The modern default: no CBC, no SHA-1 key exchange, MAC or signatures.
fn preferred() -> Preferred {
    Preferred {
        kex: Cow::Owned(vec![
            kex::MLKEM768X25519_SHA256,
            kex::CURVE25519,
            kex::CURVE25519_PRE_RFC_8731,
            kex::ECDH_SHA2_NISTP256,
            kex::ECDH_SHA2_NISTP384,
            kex::ECDH_SHA2_NISTP521,
            kex::DH_G16_SHA512,
            kex::DH_G14_SHA256,
            kex::EXTENSION_SUPPORT_AS_SERVER,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
        ]),
        key: Cow::Owned(vec![
            Algorithm::Ed25519,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP384,
            },
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP521,
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha512),
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha256),
            },
        ]),
        cipher: Cow::Owned(vec![
            cipher::AES_128_GCM,
            cipher::AES_256_GCM,
            cipher::CHACHA20_POLY1305,
            cipher::AES_256_CTR,
            cipher::AES_192_CTR,
            cipher::AES_128_CTR,
        ]),
        mac: Cow::Owned(vec![
            mac::HMAC_SHA256_ETM,
            mac::HMAC_SHA512_ETM,
            mac::HMAC_SHA256,
            mac::HMAC_SHA512,
        ]),
        compression: Cow::Borrowed(&[compression::NONE]),
        ..Default::default()
    }
}

/// SSH messages russh queues for a channel (see `russh_config`).
pub const CHANNEL_BUFFER: usize = 64;
/// The largest channel data message a client may send (announced as the channel's maximum
/// packet size; RFC 4254 5.2). russh itself takes up to 256 KiB, so wharf ends a session that
/// sends more: with `CHANNEL_BUFFER`, 4 MiB is what one channel can make russh hold.
pub const MAX_CHANNEL_DATA: u32 = 65535;

/// The SSH window a channel starts with, and keeps on a short link. russh credits it back
/// once half of it is used, so a client gets about half of it per round trip: 4 MiB.
pub const WINDOW: u32 = 8 << 20;
/// The widest a channel's window grows to on a long link (`next_window`).
///
/// The window is credited as russh reads the connection, and russh stops reading it as soon
/// as the SFTP loop's request queue is full (`dispatch::REQUEST_QUEUE_BYTES`): what a wider
/// window lets a client send past that waits in the network and the kernel's socket buffers,
/// not in wharf's memory.
pub const MAX_WINDOW: u32 = 64 << 20;
/// The rate one upload's window is sized for on a long link: the window grows to twice what
/// this rate carries in one round trip (half of it is credited per round trip), within
/// `WINDOW..=MAX_WINDOW`: 8 MiB below a 20 ms round trip (`SHORT_LINK`), 51 MiB at 50 ms, 64 MiB from
/// 62.5 ms. (A stock OpenSSH put of 256 MiB over 50 ms reached 145 MB/s with 256 MiB/s here,
/// 156 MB/s with this rate.)
pub const LINK_RATE: u64 = 512 << 20;

/// Round trips shorter than this are a short link, whatever `LINK_RATE` would ask: `WINDOW`
/// carries 400 MiB/s there, and a ping on a LAN through a busy host can take several ms (8.2
/// ms was measured with two test suites on one 2-core machine), which must not widen it.
pub const SHORT_LINK: Duration = Duration::from_millis(20);

/// The window target after russh credits a channel's window back: doubled while the
/// connection's round trip says the link needs more than `WINDOW` (HPN-SSH style), up to what
/// `LINK_RATE` needs over that round trip. Without a measured round trip, or on a short link
/// (`SHORT_LINK`), it stays `WINDOW`: a wider window there gains nothing, and it doubled the
/// CPU a stock OpenSSH client spent per byte it sent (measured on one machine, 512 MiB puts).
pub fn next_window(current: u32, rtt: Option<Duration>) -> u32 {
    let need = rtt.filter(|rtt| *rtt >= SHORT_LINK).map_or(0, |rtt| {
        (2 * u128::from(LINK_RATE) * rtt.as_micros() / 1_000_000).min(u128::from(MAX_WINDOW)) as u32
    });
    current.saturating_mul(2).min(need).max(WINDOW)
}

pub fn russh_config(cfg: &SftpConfig, keys: Vec<PrivateKey>) -> russh::server::Config {
    russh::server::Config {
        server_id: SshId::Standard(Cow::Borrowed("SSH-2.0-wharf")),
        methods: MethodSet::from(&METHODS[..]),
        // Every refusal waits the same; the first "none" probe of every client need not.
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        max_auth_attempts: 6,
        keys,
        inactivity_timeout: Some(cfg.idle_timeout.0),
        keepalive_interval: None,
        nodelay: true,
        // The window a channel starts with; `SshHandler::adjust_window` grows it on a long
        // link, up to `MAX_WINDOW`.
        window_size: WINDOW,
        maximum_packet_size: MAX_CHANNEL_DATA,
        // Messages russh holds for a channel before it stops reading the connection (each at
        // most one SSH packet, 64 KiB); the SFTP loop's own read-ahead queue (bounded in bytes)
        // takes them off as fast as it is scheduled. 64 (2 MiB of OpenSSH's 32 KiB packets)
        // keeps russh reading while that task waits for a core: measured against 4, the same
        // CPU per GiB and 1.2x the MB/s into S3, 1.3x into local storage.
        channel_buffer_size: CHANNEL_BUFFER,
        preferred: preferred(),
        ..Default::default()
    }
}

pub struct SftpServer {
    config: Arc<russh::server::Config>,
    ctx: Arc<SftpContext>,
    gate: Arc<Gate>,
    login_timeout: Duration,
}

impl SftpServer {
    /// `gate` (limits, PROXY protocol) is shared with the other front-ends.
    pub fn new(
        cfg: &SftpConfig,
        keys: Vec<PrivateKey>,
        ctx: Arc<SftpContext>,
        gate: Arc<Gate>,
    ) -> Self {
        SftpServer {
            config: Arc::new(russh_config(cfg, keys)),
            ctx,
            gate,
            login_timeout: cfg.login_timeout.0,
        }
    }

    /// Serves `listener` until `stop` is cancelled, then stops accepting and lets sessions
    /// finish until `force` is cancelled, when the remaining ones are disconnected (their
    /// open uploads abort). Returns when every session has ended.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        stop: CancellationToken,
        force: CancellationToken,
    ) {
        let (gate, login_timeout) = (self.gate.clone(), self.login_timeout);
        listener::serve(self, listener, gate, login_timeout, stop, force).await;
    }
}

impl FrontEnd for SftpServer {
    fn protocol(&self) -> &'static str {
        "sftp"
    }

    async fn start(self: Arc<Self>, sock: TcpStream, conn: &Conn) -> Result<Running, String> {
        let handler = SshHandler {
            ctx: self.ctx.clone(),
            peer: conn.client,
            session_id: conn.id.clone(),
            account: None,
            authed: conn.authed.clone(),
            channels: HashMap::new(),
            running_channels: Arc::new(AtomicUsize::new(0)),
            quota: ConnectionQuota::new(),
            streams: HashStreams::per_connection(),
            span: conn.span.clone(),
            rtt_us: Arc::new(AtomicU64::new(0)),
            rtt_asked: false,
            offered: None,
        };
        let running = russh::server::run_stream(self.config.clone(), sock, handler)
            .await
            .map_err(|e| e.to_string())?;
        let handle = running.handle();
        let span = conn.span.clone();
        Ok(Running {
            ended: Box::pin(async move {
                match running.await {
                    Ok(()) => "client closed the connection".to_string(),
                    Err(e) => {
                        tracing::debug!(parent: &span, error = %e, "session ended with an error");
                        "connection error".to_string()
                    }
                }
            }),
            cut: Box::new(move |why| {
                Box::pin(async move {
                    let _ = handle
                        .disconnect(Disconnect::ByApplication, why.into(), "en".into())
                        .await;
                })
            }),
        })
    }
}

struct SshHandler {
    ctx: Arc<SftpContext>,
    peer: SocketAddr,
    session_id: String,
    account: Option<Account>,
    authed: Arc<AtomicBool>,
    /// Session channels opened and not yet running SFTP.
    channels: HashMap<ChannelId, Channel<Msg>>,
    /// Channels running the SFTP subsystem.
    running_channels: Arc<AtomicUsize>,
    /// Open files and out-of-order bytes, over all the connection's channels.
    quota: Arc<ConnectionQuota>,
    /// Files read back for checksums, over all the connection's channels and exec requests.
    streams: Arc<HashStreams>,
    span: tracing::Span,
    /// The connection's round trip in µs (0 until measured), taken once, when its first
    /// session channel opens and nothing else is under way.
    rtt_us: Arc<AtomicU64>,
    rtt_asked: bool,
    /// The account whose key the client offered and wharf accepted (OpenSSH asks whether a
    /// key would do before it signs with it): the signed login that follows with the same
    /// user and key checks it again without looking it up again.
    offered: Option<Offered>,
}

/// An accepted key offer.
struct Offered {
    user: String,
    key: PublicKey,
    account: Account,
    at: std::time::Instant,
}

/// How long an accepted offer stands in for the lookup at the signed login that follows.
const OFFER_STANDS: Duration = Duration::from_secs(10);

/// Session channels one connection may have open at once (AWS Transfer Family allows 10):
/// each runs its own SFTP session, and all share the connection's `MAX_OPEN_FILES`.
pub const MAX_CHANNELS: usize = 10;

/// The login methods offered. keyboard-interactive asks for the password in one prompt: it
/// is how PuTTY, FileZilla, WinSCP and several Java and .NET libraries send one.
const METHODS: [MethodKind; 3] = [
    MethodKind::PublicKey,
    MethodKind::KeyboardInteractive,
    MethodKind::Password,
];

/// The one keyboard-interactive prompt. "Password:" is what clients that answer it from a
/// stored password (JSch, PuTTY's `-pw`) look for.
const PASSWORD_PROMPT: &str = "Password: ";

/// Refusal that lets the client try again with any method (russh would otherwise drop
/// "password" from the list after one wrong password).
fn reject() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(MethodSet::from(&METHODS[..])),
        partial_success: false,
    }
}

fn is_sha1_rsa(alg: &Algorithm) -> bool {
    matches!(alg, Algorithm::Rsa { hash: None })
}

impl SshHandler {
    /// Sends a ping (`keepalive@openssh.com`, which every client answers, with success or
    /// failure) and records how long the answer takes: the connection's round trip, through
    /// any load balancer in front. A client that never answers leaves it unmeasured.
    fn measure_rtt(&self, session: &mut russh::server::Session) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if session.send_ping(tx).is_err() {
            return;
        }
        let sent = std::time::Instant::now();
        let (rtt, span) = (self.rtt_us.clone(), self.span.clone());
        tokio::spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(30), rx).await {
                let us = (sent.elapsed().as_micros() as u64).max(1);
                rtt.store(us, Ordering::Relaxed);
                tracing::debug!(parent: &span, rtt_ms = us as f64 / 1000.0, "round trip measured");
            }
        });
    }

    async fn check_password(&mut self, user: &str, pw: SecretString, method: &'static str) -> Auth {
        match self.ctx.auth.password(user, &pw, self.peer.ip()).await {
            Ok(account) => self.accepted(account, method, None),
            Err(why) => self.refused(user, method, why),
        }
    }

    fn refused(&self, user: &str, method: &'static str, why: Refusal) -> Auth {
        metrics().auth_failed("sftp", method);
        self.span.in_scope(|| {
            tracing::info!(
                activity = "AUTH_FAILURE",
                username = user,
                method,
                reason = why.name()
            )
        });
        reject()
    }

    /// A session for one channel of the logged-in account.
    fn session(&self, account: Account) -> Arc<Session> {
        let info = SessionInfo {
            id: self.session_id.clone(),
            protocol: Protocol::Sftp,
            client_ip: self.peer.ip(),
            username: account.username.clone(),
        };
        let mounts = Mount::of(&account, &self.ctx.storage);
        Arc::new(Session::new(
            info,
            account,
            mounts,
            self.ctx.sessions.clone(),
            self.quota.clone(),
        ))
    }

    fn accepted(&mut self, account: Account, method: &str, key: Option<&PublicKey>) -> Auth {
        self.span.record("username", account.username.as_str());
        self.span.in_scope(|| {
            tracing::info!(
                activity = "AUTH_SUCCESS",
                method,
                key_fingerprint = key.map(fingerprint).unwrap_or_default()
            )
        });
        let auth = self.ctx.auth.clone();
        let (name, last) = (account.username.clone(), account.last_login_at);
        tokio::spawn(async move { auth.record_login(&name, last).await });
        self.account = Some(account);
        self.authed.store(true, Ordering::Release);
        Auth::Accept
    }
}

impl SshHandler {
    /// Refuses a channel data message larger than the maximum packet size wharf announced
    /// (russh has queued it already; the error ends the session and frees it).
    fn within_packet_size(&self, len: usize) -> Result<(), russh::Error> {
        if len > MAX_CHANNEL_DATA as usize {
            self.span.in_scope(|| {
                tracing::warn!(
                    activity = "PROTOCOL_VIOLATION",
                    bytes = len,
                    "channel data larger than the announced maximum packet size; disconnecting"
                )
            });
            return Err(russh::Error::PacketSize(len));
        }
        Ok(())
    }
}

impl russh::server::Handler for SshHandler {
    type Error = russh::Error;

    /// A long link keeps the window full: it grows (`next_window`) with the round trip the
    /// connection's first channel measured.
    fn adjust_window(&mut self, _channel: ChannelId, current: u32) -> u32 {
        let rtt = match self.rtt_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        };
        next_window(current, rtt)
    }

    /// Channel data past the maximum packet size wharf announced ends the session.
    async fn data(
        &mut self,
        _channel: ChannelId,
        data: &[u8],
        _session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        self.within_packet_size(data.len())
    }

    /// Extended data (stderr) is queued by russh like data: the same limit.
    async fn extended_data(
        &mut self,
        _channel: ChannelId,
        _code: u32,
        data: &[u8],
        _session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        self.within_packet_size(data.len())
    }

    async fn authentication_banner(&mut self) -> Result<Option<String>, Self::Error> {
        Ok(self.ctx.banner.clone())
    }

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(reject())
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let pw = SecretString::from(password.to_owned());
        Ok(self.check_password(user, pw, "password").await)
    }

    /// One prompt for the password, then the same check as password logins: the same bans,
    /// slow-down and refusal timing, whatever the username.
    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        let Some(mut answers) = response else {
            return Ok(Auth::Partial {
                name: Cow::Borrowed(""),
                instructions: Cow::Borrowed(""),
                prompts: Cow::Owned(vec![(Cow::Borrowed(PASSWORD_PROMPT), false)]),
            });
        };
        let answer = answers.next().unwrap_or_default();
        let pw = SecretString::from(String::from_utf8_lossy(&answer).into_owned());
        Ok(self.check_password(user, pw, "keyboard-interactive").await)
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if is_sha1_rsa(offer.algorithm) {
            return Ok(reject());
        }
        match self
            .ctx
            .auth
            .public_key(user, offer.public_key, self.peer.ip())
            .await
        {
            Ok(account) => {
                self.offered = Some(Offered {
                    user: user.to_owned(),
                    key: offer.public_key.clone(),
                    account,
                    at: std::time::Instant::now(),
                });
                Ok(Auth::Accept)
            }
            Err(why) => Ok(self.refused(user, "publickey", why)),
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if is_sha1_rsa(key.algorithm) {
            return Ok(self.refused(user, "publickey", Refusal::UnknownKey));
        }
        let offered = self.offered.take().filter(|o| {
            o.user == user
                && o.key.key_data() == key.public_key.key_data()
                && o.at.elapsed() < OFFER_STANDS
        });
        let checked = match offered {
            Some(o) => {
                self.ctx
                    .auth
                    .offered_key_signed(o.account, self.peer.ip())
                    .await
            }
            None => {
                self.ctx
                    .auth
                    .public_key(user, key.public_key, self.peer.ip())
                    .await
            }
        };
        match checked {
            Ok(account) => Ok(self.accepted(account, "publickey", Some(key.public_key))),
            Err(why) => Ok(self.refused(user, "publickey", why)),
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        let open = self.channels.len() + self.running_channels.load(Ordering::Acquire);
        if self.account.is_none() {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
        } else if open >= MAX_CHANNELS {
            self.span.in_scope(|| {
                tracing::warn!(
                    activity = "ERROR",
                    reason = "channel limit",
                    "channel refused: at most {MAX_CHANNELS} per connection"
                )
            });
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
        } else {
            self.channels.insert(channel.id(), channel);
            if !self.rtt_asked {
                self.rtt_asked = true;
                self.measure_rtt(session);
            }
            reply.accept().await;
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        // A channel closed before it ran SFTP no longer counts.
        self.channels.remove(&channel);
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        id: ChannelId,
        name: &str,
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        let (Some(account), "sftp") = (self.account.clone(), name) else {
            session.channel_failure(id)?;
            return Ok(());
        };
        let Some(channel) = self.channels.remove(&id) else {
            session.channel_failure(id)?;
            return Ok(());
        };
        session.channel_success(id)?;
        let fs = self.session(account);
        let handle = session.handle();
        let span = self.span.clone();
        let handler = SftpHandler::new(fs, self.streams.clone());
        let running = self.running_channels.clone();
        running.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            let ender = handle.clone();
            dispatch::serve(channel.into_stream(), handler, MAX_PACKET_LEN, move |v| {
                span.in_scope(|| tracing::warn!(activity = "ERROR", violation = ?v, reason = v.describe(), "SFTP framing violation; closing the session"));
                tokio::spawn(async move {
                    let _ = ender
                        .disconnect(Disconnect::ProtocolError, v.describe().into(), "en".into())
                        .await;
                });
            })
            .await;
            // What sshd sends when sftp-server exits: OpenSSH's scp exits 1 without it, after
            // a transfer that succeeded.
            let _ = handle.exit_status_request(id, 0).await;
            let _ = handle.close(id).await;
            running.fetch_sub(1, Ordering::AcqRel);
        });
        Ok(())
    }

    async fn shell_request(
        &mut self,
        id: ChannelId,
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(id)?;
        Ok(())
    }

    /// Only the checksum commands of `exec.rs` (`sha256sum PATH`, `sha1sum PATH`) are
    /// answered, by wharf itself: nothing is executed. Anything else is refused (scp from
    /// OpenSSH 9 speaks SFTP; `scp -O` needs a shell and is refused).
    async fn exec_request(
        &mut self,
        id: ChannelId,
        data: &[u8],
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        let command = exec::parse(data);
        let (Some(account), false) = (self.account.clone(), matches!(command, Exec::Refused(_)))
        else {
            if let Exec::Refused(why) = &command {
                self.span.in_scope(|| {
                    tracing::info!(
                        activity = "EXEC",
                        outcome = "refused",
                        command = %String::from_utf8_lossy(&data[..data.len().min(200)]).escape_debug(),
                        reason = %why,
                    )
                });
            }
            session.channel_failure(id)?;
            return Ok(());
        };
        let Some(channel) = self.channels.remove(&id) else {
            session.channel_failure(id)?;
            return Ok(());
        };
        session.channel_success(id)?;
        let fs = self.session(account);
        let streams = self.streams.clone();
        let running = self.running_channels.clone();
        running.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            exec::run(channel, fs, command, streams).await;
            running.fetch_sub(1, Ordering::AcqRel);
        });
        Ok(())
    }

    async fn pty_request(
        &mut self,
        id: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(id)?;
        Ok(())
    }

    async fn env_request(
        &mut self,
        id: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(id)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_grows_only_as_far_as_the_round_trip_needs() {
        let ms = Duration::from_millis;
        // Unmeasured, or a short link: the window stays where it started.
        assert_eq!(next_window(WINDOW, None), WINDOW);
        assert_eq!(next_window(WINDOW, Some(ms(1))), WINDOW);
        assert_eq!(next_window(WINDOW, Some(ms(7))), WINDOW);
        // A LAN ping slowed by a busy host is still a short link.
        assert_eq!(next_window(WINDOW, Some(ms(9))), WINDOW);
        assert_eq!(next_window(WINDOW, Some(ms(19))), WINDOW);
        assert_eq!(next_window(WINDOW, Some(ms(20))), 2 * WINDOW);
        // 50 ms: doubling, up to twice what LINK_RATE carries in a round trip.
        let at_50 = (2 * LINK_RATE * 50 / 1000) as u32;
        assert!(at_50 > 4 * WINDOW && at_50 < MAX_WINDOW);
        assert_eq!(next_window(WINDOW, Some(ms(50))), 2 * WINDOW);
        assert_eq!(next_window(2 * WINDOW, Some(ms(50))), 4 * WINDOW);
        assert_eq!(next_window(4 * WINDOW, Some(ms(50))), at_50);
        assert_eq!(next_window(at_50, Some(ms(50))), at_50);
        // A long link: never past MAX_WINDOW.
        let mut w = WINDOW;
        for _ in 0..10 {
            w = next_window(w, Some(ms(400)));
        }
        assert_eq!(w, MAX_WINDOW);
        // A window that grew never shrinks below where it started.
        assert_eq!(next_window(MAX_WINDOW, Some(ms(1))), WINDOW);
    }
}
