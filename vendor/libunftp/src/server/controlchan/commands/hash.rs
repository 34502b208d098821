//! wharf patch: checksums. `HASH path` (draft-bryan-ftpext-hash) answers
//! `213 <algorithm> 0-<size> <hex> <path>` with the algorithm `OPTS HASH` selected (the storage
//! back-end's first by default); `XSHA256 path` answers `250 <hex>`. Both ask the storage
//! back-end ([`StorageBackend::hash`]) and wait for its answer before the next command is read:
//! a control connection computes one checksum at a time.

use crate::{
    auth::UserDetail,
    server::controlchan::{
        Reply, ReplyCode,
        error::ControlChanError,
        handler::{CommandContext, CommandHandler},
    },
    storage::{ErrorKind, Metadata, StorageBackend},
};
use async_trait::async_trait;
use std::sync::Arc;

#[derive(Debug)]
pub struct Hash {
    /// `None`: the algorithm the session selected (`HASH`); else this one (`XSHA256`).
    algorithm: Option<&'static str>,
    path: String,
}

impl Hash {
    /// `HASH path`.
    pub fn selected(path: String) -> Self {
        Hash { algorithm: None, path }
    }

    /// `XSHA256 path` and the like: always `algorithm`, answered with the bare digest.
    pub fn with(algorithm: &'static str, path: String) -> Self {
        Hash {
            algorithm: Some(algorithm),
            path,
        }
    }
}

#[async_trait]
impl<Storage, User> CommandHandler<Storage, User> for Hash
where
    User: UserDetail + 'static,
    Storage: StorageBackend<User> + 'static,
    Storage::Metadata: Metadata,
{
    #[tracing_attributes::instrument]
    async fn handle(&self, args: CommandContext<Storage, User>) -> Result<Reply, ControlChanError> {
        let (user, storage, path, selected) = {
            let session = args.session.lock().await;
            (
                session.user.clone(),
                Arc::clone(&session.storage),
                session.cwd.join(&self.path),
                session.hash_algorithm,
            )
        };
        let offered = storage.hash_algorithms();
        let algorithm = match self.algorithm {
            Some(a) if offered.contains(&a) => a,
            Some(_) => return Ok(Reply::new(ReplyCode::CommandSyntaxError, "Command not implemented")),
            None => match selected.or_else(|| offered.first().copied()) {
                Some(a) => a,
                None => return Ok(Reply::new(ReplyCode::CommandSyntaxError, "Command not implemented")),
            },
        };
        let Some(user) = (*user).as_ref() else {
            return Ok(Reply::new(ReplyCode::NotLoggedIn, "Please authenticate"));
        };
        match storage.hash(user, &path, algorithm).await {
            Ok(h) if self.algorithm.is_none() => Ok(Reply::new_with_string(
                ReplyCode::FileStatus,
                format!("{algorithm} 0-{} {} {}", h.size, h.hex, self.path),
            )),
            Ok(h) => Ok(Reply::new_with_string(ReplyCode::FileActionOkay, h.hex)),
            Err(err) => {
                slog::info!(args.logger, "HASH: no checksum of {:?}: {}", path, err);
                let code = match err.kind() {
                    ErrorKind::PermanentFileNotAvailable | ErrorKind::PermissionDenied | ErrorKind::PermanentDirectoryNotAvailable => ReplyCode::FileError,
                    ErrorKind::FileNameNotAllowedError => ReplyCode::BadFileName,
                    ErrorKind::TransientFileNotAvailable => ReplyCode::TransientFileError,
                    ErrorKind::RefusedByPolicy => ReplyCode::RefusedByPolicy,
                    ErrorKind::CommandNotImplemented => ReplyCode::CommandNotImplemented,
                    _ => ReplyCode::LocalError,
                };
                let message = std::error::Error::source(&err).map_or_else(|| err.kind().to_string(), |s| s.to_string());
                // One line: a reply's text must not break the reply format.
                Ok(Reply::new_with_string(code, message.replace(['\r', '\n'], " ")))
            }
        }
    }
}
