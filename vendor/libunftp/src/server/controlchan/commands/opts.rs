//! The RFC 2389 Options (`OPTS`) command
//
// The OPTS (options) command allows a user-PI to specify the desired
// behavior of a server-FTP process when another FTP command (the target
// command) is later issued.  The exact behavior, and syntax, will vary
// with the target command indicated, and will be specified with the
// definition of that command.  Where no OPTS behavior is defined for a
// particular command there are no options available for that command.

use crate::{
    auth::UserDetail,
    server::controlchan::{
        Reply, ReplyCode,
        error::ControlChanError,
        handler::{CommandContext, CommandHandler},
    },
    storage::{Metadata, StorageBackend},
};
use async_trait::async_trait;
use std::sync::Arc;

/// The parameters that can be given to the `OPTS` command, specifying the option the client wants
/// to set.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Opt {
    /// The client wants us to enable UTF-8 encoding for file paths and such.
    Utf8 { on: bool },
    /// wharf patch: `OPTS HASH [algorithm]`: the algorithm `HASH` uses, asked for or selected.
    Hash { algorithm: Option<String> },
}

#[derive(Debug)]
pub struct Opts {
    option: Opt,
}

impl Opts {
    pub fn new(option: Opt) -> Self {
        Opts { option }
    }
}

#[async_trait]
impl<Storage, User> CommandHandler<Storage, User> for Opts
where
    User: UserDetail + 'static,
    Storage: StorageBackend<User> + 'static,
    Storage::Metadata: Metadata,
{
    #[tracing_attributes::instrument]
    async fn handle(&self, args: CommandContext<Storage, User>) -> Result<Reply, ControlChanError> {
        match &self.option {
            Opt::Utf8 { on: true } => Ok(Reply::new(ReplyCode::CommandOkay, "Always in UTF-8 mode.")),
            Opt::Utf8 { on: false } => Ok(Reply::new(ReplyCode::CommandNotImplementedForParameter, "Non UTF-8 mode not supported")),
            // wharf patch: draft-bryan-ftpext-hash, section 3.2.
            Opt::Hash { algorithm } => {
                let mut session = args.session.lock().await;
                let storage = Arc::clone(&session.storage);
                let offered = storage.hash_algorithms();
                let Some(current) = session.hash_algorithm.or_else(|| offered.first().copied()) else {
                    return Ok(Reply::new(ReplyCode::ParameterSyntaxError, "Unknown option HASH"));
                };
                match algorithm {
                    None => Ok(Reply::new(ReplyCode::CommandOkay, current)),
                    Some(name) => match offered.iter().find(|a| a.eq_ignore_ascii_case(name)) {
                        Some(a) => {
                            session.hash_algorithm = Some(a);
                            Ok(Reply::new(ReplyCode::CommandOkay, a))
                        }
                        None => Ok(Reply::new(ReplyCode::ParameterSyntaxError, "Unknown algorithm, current selection not changed")),
                    },
                }
            }
        }
    }
}
