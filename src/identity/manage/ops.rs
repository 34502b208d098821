//! Bans, expectations, events and arrivals, admin tokens and the audit trail itself: the
//! checks and messages of `wharf ban|expect|events|admin|audit …`, shared with the admin API.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use super::{ErrorKind, ManageError, Manager};
use crate::events::query::{self, Arrival, ArrivalFilter, EventFilter, EventView};
use crate::identity::audit::{self, Actor};
use crate::identity::bans::{self, Ban};
use crate::identity::expectations::{self, Expectation, WindowStatus};
use crate::identity::tokens::{self, Scope, TokenInfo};

/// A page of events, newest first, each with its position (the cursor of the next page).
pub type EventsPage = Vec<(i64, EventView)>;

/// Deliver events again: one by id, or every one since a time; to one sink or all.
#[derive(Debug, Clone, Default)]
pub struct ReplayRequest {
    pub id: Option<String>,
    /// RFC 3339.
    pub since: Option<String>,
    pub sink: Option<String>,
}

/// Parses an RFC 3339 time as admins give it.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, ManageError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ManageError::new(
                ErrorKind::InvalidTime,
                format!("invalid time {s:?}: expected RFC 3339, e.g. 2026-11-26T09:00:00Z: {e}"),
            )
        })
}

impl Manager {
    /// The bans in force now.
    pub async fn bans(&self) -> Result<Vec<Ban>, ManageError> {
        let now = Utc::now();
        Ok(bans::list(self.db().await?)
            .await?
            .into_iter()
            .filter(|b| b.until > now)
            .collect())
    }

    /// Lifts the ban on `address`; returns the address as parsed.
    pub async fn lift_ban(
        &self,
        address: &str,
        actor: &Actor,
    ) -> Result<std::net::IpAddr, ManageError> {
        let ip: std::net::IpAddr = address.parse().map_err(|_| {
            ManageError::new(
                ErrorKind::InvalidAddress,
                format!("{address:?} is not an IP address"),
            )
        })?;
        if bans::remove(self.db().await?, &ip.to_string(), actor).await? {
            Ok(ip)
        } else {
            Err(ManageError::new(
                ErrorKind::NotBanned,
                format!("{ip} is not banned"),
            ))
        }
    }

    pub async fn add_expectation(&self, e: &Expectation, actor: &Actor) -> Result<(), ManageError> {
        Ok(expectations::add(self.db().await?, e, actor).await?)
    }

    pub async fn expectations(&self, user: Option<&str>) -> Result<Vec<Expectation>, ManageError> {
        Ok(expectations::list(self.db().await?, user).await?)
    }

    /// The `limit` most recent windows of each expectation (or of `name`).
    pub async fn expectation_status(
        &self,
        name: Option<&str>,
        limit: i64,
    ) -> Result<Vec<WindowStatus>, ManageError> {
        Ok(expectations::status(self.db().await?, name, limit.max(1)).await?)
    }

    pub async fn remove_expectation(&self, name: &str, actor: &Actor) -> Result<(), ManageError> {
        Ok(expectations::remove(self.db().await?, name, actor).await?)
    }

    /// Events matching `filter`, newest first, at most `limit`.
    pub async fn events(
        &self,
        filter: &EventFilter,
        limit: i64,
    ) -> Result<EventsPage, ManageError> {
        if limit < 1 {
            return Err(ManageError::new(
                ErrorKind::InvalidRequest,
                "--limit must be at least 1",
            ));
        }
        Ok(query::list(self.db().await?, filter, limit).await?)
    }

    /// Queues events again; returns how many deliveries were queued and to which sinks.
    pub async fn replay(
        &self,
        req: &ReplayRequest,
        actor: &Actor,
    ) -> Result<(u64, Vec<String>), ManageError> {
        let since = req.since.as_deref().map(parse_time).transpose()?;
        if req.id.is_none() && since.is_none() {
            return Err(ManageError::new(
                ErrorKind::InvalidRequest,
                "give an event id or a time to replay events since",
            ));
        }
        let targets = match &req.sink {
            Some(s) if !self.sinks.contains(s) => {
                return Err(ManageError::new(
                    ErrorKind::UnknownSink,
                    format!(
                        "unknown sink {s:?}; configured sinks: {}",
                        self.sinks.join(", ")
                    ),
                ))
            }
            Some(s) => vec![s.clone()],
            None => self.sinks.clone(),
        };
        let n = query::replay(
            self.db().await?,
            req.id.as_deref(),
            since,
            &targets,
            Some(actor),
        )
        .await?;
        if n == 0 {
            if let Some(id) = &req.id {
                return Err(ManageError::new(
                    ErrorKind::UnknownEvent,
                    format!("no event with id {id:?}"),
                ));
            }
        }
        Ok((n, targets))
    }

    /// Files that arrived, newest first: at most `limit`, and where to go on from.
    pub async fn arrivals(
        &self,
        filter: &ArrivalFilter,
        limit: i64,
    ) -> Result<(Vec<Arrival>, Option<i64>), ManageError> {
        if let Some(p) = &filter.pattern {
            glob::Pattern::new(p).map_err(|e| {
                ManageError::from_error(
                    ErrorKind::InvalidPattern,
                    &crate::identity::folders::FolderError::BadPattern(p.clone(), e.msg.into()),
                )
            })?;
        }
        if let Some(f) = &filter.folder {
            if f != "/" {
                crate::identity::folders::parse_path(f)?;
            }
        }
        if limit < 1 {
            return Err(ManageError::new(
                ErrorKind::InvalidRequest,
                "--limit must be at least 1",
            ));
        }
        Ok(query::arrivals(self.db().await?, filter, limit).await?)
    }

    /// Creates an admin API token; its secret is returned once.
    pub async fn add_token(
        &self,
        name: &str,
        scope: &str,
        expires: Option<Duration>,
        actor: &Actor,
    ) -> Result<(TokenInfo, SecretString), ManageError> {
        let scope: Scope = scope.parse()?;
        Ok(tokens::add(self.db().await?, name, scope, expires, actor).await?)
    }

    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, ManageError> {
        Ok(tokens::list(self.db().await?).await?)
    }

    pub async fn remove_token(&self, name: &str, actor: &Actor) -> Result<(), ManageError> {
        Ok(tokens::remove(self.db().await?, name, actor).await?)
    }

    /// Audit rows matching `filter`, oldest first, at most `limit`.
    pub async fn audit(
        &self,
        filter: &audit::Filter,
        limit: i64,
    ) -> Result<Vec<audit::Row>, ManageError> {
        Ok(audit::list(self.db().await?, filter, limit).await?)
    }

    /// Walks the audit chain (see `audit::verify`).
    pub async fn verify_audit(
        &self,
        checkpoint: Option<(i64, String)>,
    ) -> Result<audit::Report, ManageError> {
        Ok(audit::verify(self.db().await?, checkpoint).await?)
    }

    /// Prunes audit rows older than `audit.retention`.
    pub async fn prune_audit(&self, actor: &Actor) -> Result<Option<audit::Pruned>, ManageError> {
        Ok(audit::prune(self.db().await?, self.retention, actor).await?)
    }
}
