//! Wiring: builds the stores, storage and front-ends from the config, binds the listeners
//! (exposing the bound addresses, so tests can use port 0), runs until a shutdown signal,
//! then drains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{AdminServer, AdminState};
use crate::config::Config;
use crate::db::Db;
use crate::events::arrivals::OutboxObserver;
use crate::events::dispatcher::{Dispatcher, SinkWorker};
use crate::events::outbox::Outbox;
use crate::events::sinks;
use crate::ftps::{FtpsContext, FtpsServer};
use crate::identity::audit::Actor;
use crate::identity::auth::Authenticator;
use crate::identity::bans::Bans;
use crate::identity::manage::Manager;
use crate::identity::Hasher;
use crate::journal::reconciler::Reconciler;
use crate::journal::Journal;
use crate::session::limits::{ConnectionLimits, Gate};
use crate::session::{SessionContext, UploadRegistry};
use crate::sftp::{hostkeys, SftpContext, SftpServer};
use crate::storage::{Home, S3Storage, Storage};
use crate::telemetry::http::{self, Check, Endpoint};
use crate::telemetry::metrics::metrics;

/// How long aborts of cut-off uploads may take to reach storage at shutdown.
const ABORT_DRAIN: Duration = Duration::from_secs(15);

pub struct App {
    config: Config,
    db: Db,
    /// The admin API's and the audit pruning's own pool.
    admin_db: Db,
    admin: Option<AdminServer>,
    manager: Arc<Manager>,
    ops: Option<(TcpListener, Arc<Endpoint>)>,
    sftp: Arc<SftpServer>,
    sftp_listener: TcpListener,
    ftps: Option<(Arc<FtpsServer>, TcpListener, Option<TcpListener>)>,
    uploads: Arc<UploadRegistry>,
    dispatcher: Dispatcher,
    expectations: crate::events::expectations::Evaluator,
    journal: Journal,
    reconciler: Reconciler,
    /// Set at the start of a shutdown (`/readyz` then answers 503 `draining`).
    draining: Arc<std::sync::atomic::AtomicBool>,
}

impl App {
    /// Opens and migrates the database, loads (or creates) host keys and binds the listeners.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let db = Db::open(&config.database).await?;
        let hasher = Hasher::from_config(&config.security)?;
        let bans = Bans::new(db.clone(), &config.security);
        let auth = Authenticator::new(db.account_store(), hasher.clone()).with_bans(bans.clone());
        let storage =
            Storage::new(S3Storage::new(&config.storage.s3, config.storage.upload_memory.0).await);
        let keys = hostkeys::load_or_generate(&config.sftp.host_key_dir)?;
        // The admin API and the audit trail's pruning work on a pool of their own: a burst
        // of admin requests never takes a connection a partner's session needs.
        let admin_db = db.own_pool(crate::admin::POOL_CONNECTIONS);
        let manager = Arc::new(Manager::with_db(&config, admin_db.clone(), hasher.clone()));
        let admin = if config.admin.enabled {
            let state = Arc::new(AdminState::new(
                manager.clone(),
                admin_db.clone(),
                bans.clone(),
                hostkeys::fingerprints(&keys),
            ));
            Some(AdminServer::bind(&config.admin, state).await?)
        } else {
            None
        };
        let uploads = Arc::new(UploadRegistry::default());
        let sink_configs = sinks::configured(config.events.sinks.as_deref());
        let outbox = Outbox::new(
            db.clone(),
            sink_configs.iter().map(sinks::sink_name).collect(),
        );
        let mut workers = Vec::new();
        metrics().register_protocol("sftp");
        for c in &sink_configs {
            metrics().register_sink(&sinks::sink_name(c));
            workers.push(SinkWorker {
                sink: sinks::build(c)?,
                max_age: c.max_age.map(|d| d.0),
            });
        }
        let source = if config.events.source.is_empty() {
            crate::events::default_source()
        } else {
            config.events.source.clone()
        };
        let journal = Journal::new(outbox.clone(), config.recovery.heartbeat.0);
        // Malware scanning before commit, when clamd is configured.
        let scanner: Option<Arc<dyn crate::scan::Scanner>> = match config.scan.clamd.as_str() {
            "" => None,
            url => {
                let endpoint = crate::scan::clamd::Endpoint::parse(url)
                    .map_err(|e| anyhow::anyhow!("scan.clamd: {e}"))?;
                Some(Arc::new(crate::scan::clamd::ClamdScanner::new(
                    endpoint,
                    config.scan.max_bytes.0,
                    config.scan.timeout.0,
                    config.scan.max_concurrent,
                )))
            }
        };
        // PGP decryption of arrivals in folders with --decrypt-to: a delivery only for
        // arrivals that ask for one.
        let (keyring, key_infos) = crate::pgp::Keyring::load(
            &config.pgp,
            &std::env::current_dir().context("current directory")?,
        )?;
        if !key_infos.is_empty() {
            tracing::info!(
                keys = %key_infos.iter().map(|k| k.fingerprint.as_str()).collect::<Vec<_>>().join(","),
                "PGP decryption keys loaded"
            );
        }
        metrics().register_sink(crate::events::outbox::DECRYPT);
        workers.push(SinkWorker {
            sink: Box::new(crate::pgp::sink::DecryptSink {
                outbox: outbox.clone(),
                storage: storage.clone(),
                accounts: db.account_store(),
                keyring: Arc::new(keyring),
                slots: Arc::new(tokio::sync::Semaphore::new(config.pgp.max_concurrent)),
                journal: Arc::new(journal.clone()),
                instance: journal.instance().to_string(),
                source: source.clone(),
                max_expansion: config.pgp.max_expansion,
                worker_memory: config.pgp.worker_memory.0,
                scanner: scanner.clone(),
                scan: config.scan.clone(),
            }),
            max_age: None,
        });
        // Receipts of partner folders: delivered only for arrivals that ask for one.
        metrics().register_sink(crate::events::outbox::RECEIPTS);
        workers.push(SinkWorker {
            sink: Box::new(crate::events::sinks::receipts::ReceiptSink::new(
                outbox.clone(),
                storage.clone(),
            )),
            max_age: None,
        });
        let dispatcher = Dispatcher::new(outbox.clone(), workers, config.events.lease.0);
        let expectations = crate::events::expectations::Evaluator {
            outbox: outbox.clone(),
            source: source.clone(),
            interval: config.expectations.interval.0,
        };
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ops = if config.metrics.listen.is_empty() {
            None
        } else {
            let listener = TcpListener::bind(&config.metrics.listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on metrics.listen = {}",
                        config.metrics.listen
                    )
                })?;
            let default_home = Home::default_base(
                &config.storage.default_home,
                &std::env::current_dir().context("current directory")?,
            )?;
            let endpoint = operations_endpoint(
                db.clone(),
                storage.clone(),
                default_home,
                keys.len(),
                outbox.clone(),
                draining.clone(),
            );
            Some((listener, Arc::new(endpoint)))
        };
        let observer = OutboxObserver::new(
            outbox,
            source,
            config.security.temp_suffixes.clone(),
            journal.instance().to_string(),
        );
        let reconciler = Reconciler {
            journal: journal.clone(),
            storage: storage.clone(),
            observer: observer.clone(),
            default_home: Home::default_base(
                &config.storage.default_home,
                &std::env::current_dir().context("current directory")?,
            )?,
            interval: config.recovery.interval.0,
            orphan_grace: config.recovery.orphan_grace.0,
            staged_ttl: config.recovery.staged_ttl.0,
            retention: config.events.retention.0,
        };
        let sessions = Arc::new(SessionContext {
            uploads: uploads.clone(),
            observer: Arc::new(observer),
            journal: Arc::new(journal.clone()),
            setstat: config.security.setstat,
            pgp_suffixes: config.pgp.suffixes.clone(),
            settle_wait: config.recovery.settle_wait.0,
            scanner: scanner.clone(),
            scan: config.scan.clone(),
        });
        let gate = Gate::new(
            ConnectionLimits::new(config.sftp.max_sessions, config.sftp.max_sessions_per_ip),
            config.security.proxy_protocol,
            config.security.proxy_trusted.clone(),
            config.sftp.login_timeout.0,
        );
        let ftps_ctx = Arc::new(FtpsContext {
            auth: auth.clone(),
            gate: gate.clone(),
            storage: storage.clone(),
            sessions: sessions.clone(),
        });
        let ftps = match FtpsServer::from_config(
            &config.ftps,
            config.sftp.idle_timeout.0,
            config.sftp.login_timeout.0,
            ftps_ctx,
        )? {
            Some(server) => {
                server.check()?;
                metrics().register_protocol("ftps");
                let listener = TcpListener::bind(&config.ftps.listen)
                    .await
                    .with_context(|| {
                        format!("cannot listen on ftps.listen = {}", config.ftps.listen)
                    })?;
                let implicit = match config.ftps.implicit_listen.as_str() {
                    "" => None,
                    addr => Some(TcpListener::bind(addr).await.with_context(|| {
                        format!("cannot listen on ftps.implicit_listen = {addr}")
                    })?),
                };
                Some((Arc::new(server), listener, implicit))
            }
            None => None,
        };
        let banner = Some(config.sftp.banner.clone()).filter(|b| !b.is_empty());
        let ctx = Arc::new(SftpContext {
            auth,
            storage,
            sessions,
            banner,
        });
        let sftp = Arc::new(SftpServer::new(&config.sftp, keys, ctx, gate));
        let sftp_listener = TcpListener::bind(&config.sftp.listen)
            .await
            .with_context(|| format!("cannot listen on sftp.listen = {}", config.sftp.listen))?;
        Ok(App {
            config,
            db,
            admin_db,
            admin,
            manager,
            ops,
            sftp,
            sftp_listener,
            ftps,
            uploads,
            dispatcher,
            expectations,
            journal,
            reconciler,
            draining,
        })
    }

    pub fn sftp_addr(&self) -> std::io::Result<SocketAddr> {
        self.sftp_listener.local_addr()
    }

    /// The FTPS (explicit TLS) address, when FTPS is configured.
    pub fn ftps_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.ftps.as_ref().map(|(_, l, _)| l.local_addr())
    }

    /// The implicit-TLS FTPS address, when `ftps.implicit_listen` is set.
    pub fn ftps_implicit_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.ftps
            .as_ref()
            .and_then(|(_, _, l)| l.as_ref().map(|l| l.local_addr()))
    }

    /// The admin API's address, when `admin.enabled`.
    pub fn admin_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.admin.as_ref().map(|a| a.local_addr())
    }

    /// Whether the admin API speaks HTTPS.
    pub fn admin_tls(&self) -> bool {
        self.admin.as_ref().is_some_and(AdminServer::is_tls)
    }

    /// The `/metrics`, `/healthz` and `/readyz` address, unless `metrics.listen` is empty.
    pub fn metrics_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.ops.as_ref().map(|(l, _)| l.local_addr())
    }

    /// Serves until `shutdown` resolves, then stops accepting, gives running sessions
    /// `sftp.shutdown_grace` to finish, cuts the rest (aborting their uploads) and returns.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let force = CancellationToken::new();
        let stop_events = CancellationToken::new();
        let events = tokio::spawn(self.dispatcher.run(stop_events.clone()));
        let expectations = tokio::spawn(self.expectations.run(stop_events.clone()));
        // Alive first, then settle what dead instances left (this one's previous life too).
        let stop_journal = CancellationToken::new();
        if let Err(e) = self.journal.beat().await {
            tracing::warn!(error = %e, "cannot record this instance's heartbeat");
        }
        let heartbeat = tokio::spawn(self.journal.clone().run_heartbeat(stop_journal.clone()));
        let reconciler = tokio::spawn(self.reconciler.run(stop_journal.clone()));
        let pruning = tokio::spawn(prune_audit(self.manager.clone(), stop_journal.clone()));
        // Stops with the partners' listeners: no admin change lands while the instance drains.
        let admin = self
            .admin
            .map(|server| tokio::spawn(server.run(stop.clone())));
        // Stays up through the drain, so probes see the instance until it is gone.
        let stop_ops = CancellationToken::new();
        if let Some((listener, endpoint)) = self.ops {
            tokio::spawn(http::serve(listener, endpoint, stop_ops.clone()));
        }
        let ftps = self.ftps.map(|(server, listener, implicit)| {
            let implicit = implicit
                .map(|l| tokio::spawn(server.clone().run(l, true, stop.clone(), force.clone())));
            let explicit = tokio::spawn(server.run(listener, false, stop.clone(), force.clone()));
            async move {
                let _ = explicit.await;
                if let Some(i) = implicit {
                    let _ = i.await;
                }
            }
        });
        let sftp = tokio::spawn(self.sftp.clone().run(
            self.sftp_listener,
            stop.clone(),
            force.clone(),
        ));
        // Both front-ends drain under the same deadline.
        let sftp = async move {
            let r = sftp.await;
            if let Some(f) = ftps {
                let _ = f.await;
            }
            r
        };
        tokio::pin!(sftp);
        tokio::select! {
            _ = shutdown => {}
            r = &mut sftp => {
                r.context("sftp server task")?;
                return Ok(());
            }
        }
        // Draining first: /readyz says so while the listeners still accept, so a balancer
        // checking it stops choosing this instance before connections would be refused.
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
        let delay = self.config.sftp.drain_delay.0;
        if !delay.is_zero() {
            tracing::info!(drain_delay = ?delay, "draining: /readyz answers 503, still accepting");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                r = &mut sftp => {
                    r.context("sftp server task")?;
                    return Ok(());
                }
            }
        }
        tracing::info!(grace = ?self.config.sftp.shutdown_grace.0, "shutting down: no new connections");
        stop.cancel();
        if tokio::time::timeout(self.config.sftp.shutdown_grace.0, &mut sftp)
            .await
            .is_err()
        {
            tracing::warn!("grace period over: disconnecting remaining sessions");
            force.cancel();
            let _ = sftp.await;
        }
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        self.uploads.tasks.close();
        if tokio::time::timeout(ABORT_DRAIN, self.uploads.tasks.wait())
            .await
            .is_err()
        {
            tracing::error!("some aborted uploads could not be cleaned up in time");
        }
        // Undelivered events stay in the outbox for the next start (or another instance).
        // Deliveries in flight (a decryption) finish first while this instance still beats,
        // so no other instance takes them over and aborts them; only then does it leave the
        // instance list.
        stop_events.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), events).await;
        let _ = expectations.await;
        stop_journal.cancel();
        let _ = reconciler.await;
        let _ = heartbeat.await;
        let _ = pruning.await;
        self.journal.leave().await;
        stop_ops.cancel();
        self.admin_db.close().await;
        self.db.close().await;
        Ok(())
    }
}

/// How often an instance prunes audit records older than `audit.retention`.
const AUDIT_PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Prunes the audit trail now and then every hour until `stop` (every instance does; the
/// head's lock makes one of them do the work, the others find nothing left).
async fn prune_audit(manager: Arc<Manager>, stop: CancellationToken) {
    loop {
        match manager.prune_audit(&Actor::server()).await {
            Ok(Some(p)) => tracing::info!(
                rows = p.rows,
                through_seq = p.through_seq,
                "audit records past audit.retention pruned; the chain is re-anchored"
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e.message, "cannot prune the audit trail"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(AUDIT_PRUNE_EVERY) => {}
        }
    }
}

/// Readiness checks (database, default storage, host keys) and the outbox gauges.
fn operations_endpoint(
    db: Db,
    storage: Storage,
    default_home: Home,
    host_keys: usize,
    outbox: Outbox,
    draining: Arc<std::sync::atomic::AtomicBool>,
) -> Endpoint {
    let checks = vec![
        Check {
            name: "database",
            probe: Box::new(move || {
                let db = db.clone();
                Box::pin(async move { db.ping().await.map_err(|e| e.to_string()) })
            }),
        },
        Check {
            name: "storage",
            probe: Box::new(move || {
                let (storage, home) = (storage.clone(), default_home.clone());
                Box::pin(async move { storage.probe(&home).await.map_err(|e| e.to_string()) })
            }),
        },
        Check {
            name: "host_keys",
            probe: Box::new(move || {
                Box::pin(async move {
                    if host_keys > 0 {
                        Ok(())
                    } else {
                        Err("no host keys loaded".into())
                    }
                })
            }),
        },
    ];
    let refresh = Box::new(move || {
        let outbox = outbox.clone();
        Box::pin(async move {
            outbox.export_pending().await;
            outbox.export_expectations().await;
        }) as http::BoxFuture<()>
    });
    Endpoint {
        checks,
        refresh,
        draining,
        checked: Default::default(),
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
