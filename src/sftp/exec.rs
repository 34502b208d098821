//! SSH `exec` of a checksum command: exactly `sha256sum PATH` or `sha1sum PATH` (or either with
//! no operand, hashing standard input, which is how rclone probes for them), answered as
//! coreutils would (`<hex>  <operand>\n` and exit status 0; a message on stderr and exit
//! status 1 for a file that cannot be hashed) from the session's checksums, inside the
//! partner's jail and permissions. wharf runs no shell and no program: the command line is
//! split into words as a POSIX shell would (quotes and backslashes, which is how rclone and
//! OpenSSH users quote paths), and anything a shell would expand, redirect or chain is refused.
//! Every other exec request is refused before a channel runs anything.

use std::sync::Arc;

use bytes::Bytes;
use russh::server::Msg;
use russh::{Channel, ChannelMsg};

use crate::session::checksum::{Algo, ChecksumError, ChecksumErrorKind, HashStreams, Part};
use crate::session::Session;

/// Standard input a command without an operand hashes at most (rclone's probe sends none).
pub const MAX_STDIN: usize = 1 << 20;
/// The longest command line accepted (paths are at most 1024 bytes, escaped at most twice that).
const MAX_COMMAND: usize = 4096;

/// What an exec request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Exec {
    /// A checksum command wharf answers.
    Hash(HashCommand),
    /// A checksum command that cannot be answered as written: told on stderr with this exit
    /// status (2 for what a shell would have rejected or expanded, 1 for what the program
    /// would).
    Invalid {
        program: &'static str,
        message: String,
        status: u32,
    },
    /// Anything else: the request is refused (`why` is for the log).
    Refused(String),
}

#[derive(Debug, PartialEq, Eq)]
pub struct HashCommand {
    pub algo: Algo,
    pub operand: Operand,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Operand {
    /// No operand (or `-`): standard input.
    Stdin,
    /// A path, as the client wrote it after unquoting.
    File(String),
}

/// Parses an exec request's command line.
pub fn parse(command: &[u8]) -> Exec {
    if command.len() > MAX_COMMAND {
        return Exec::Refused(format!("command line of {} bytes", command.len()));
    }
    let Ok(line) = std::str::from_utf8(command) else {
        return Exec::Refused("command line is not UTF-8".into());
    };
    let first = line
        .trim_start_matches([' ', '\t'])
        .split([' ', '\t', '\n'])
        .next()
        .unwrap_or_default();
    let Some(algo) = Algo::from_program(first) else {
        return Exec::Refused("not a checksum command wharf answers".into());
    };
    let program = algo.program();
    let words = match words(line) {
        Ok(w) => w,
        Err(why) => {
            return Exec::Invalid {
                program,
                message: format!("{program}: wharf runs no shell: {why}"),
                status: 2,
            }
        }
    };
    // The first word is the program itself (unquoted: checked above).
    let mut operands = Vec::new();
    let mut options_done = false;
    for w in words.into_iter().skip(1) {
        if !options_done && w == "--" {
            options_done = true;
        } else if !options_done && w.starts_with('-') && w != "-" {
            return Exec::Invalid {
                program,
                message: format!(
                    "{program}: unsupported option {w:?}: wharf answers `{program} PATH`"
                ),
                status: 1,
            };
        } else {
            operands.push(w);
        }
    }
    let operand = match operands.len() {
        0 => Operand::Stdin,
        1 if operands[0] == "-" => Operand::Stdin,
        1 => Operand::File(operands.remove(0)),
        n => {
            return Exec::Invalid {
                program,
                message: format!(
                "{program}: {n} files given: wharf answers one file per command (`{program} PATH`)"
            ),
                status: 1,
            }
        }
    };
    Exec::Hash(HashCommand { algo, operand })
}

/// Splits a command line into words as a POSIX shell does with quotes and backslashes, and
/// refuses what a shell would do more with: expansions, globs, redirections, pipes, command
/// separators, comments.
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut word = String::new();
    // Whether a word has started (an empty quoted string is a word).
    let mut started = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if started {
                    out.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            '\\' => match chars.next() {
                // A line continuation.
                Some('\n') => {}
                Some(n) => {
                    word.push(n);
                    started = true;
                }
                None => return Err("a backslash ends the command".into()),
            },
            '\'' => {
                started = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(n) => word.push(n),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                started = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(n @ ('$' | '`' | '"' | '\\')) => word.push(n),
                            Some('\n') => {}
                            Some(n) => {
                                word.push('\\');
                                word.push(n);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(n @ ('$' | '`')) => {
                            return Err(format!("{n:?} would be expanded by a shell: escape it"))
                        }
                        Some(n) => word.push(n),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\n' | ';' | '&' | '|' | '<' | '>' | '(' | ')' => {
                return Err(format!(
                    "{c:?} would start another command or a redirection: only one checksum command is answered"
                ))
            }
            '$' | '`' | '*' | '?' | '[' | ']' | '{' | '}' | '!' => {
                return Err(format!(
                    "{c:?} would be expanded by a shell: quote or escape it"
                ))
            }
            '#' | '~' if !started => {
                return Err(format!(
                    "{c:?} at the start of a word means something to a shell: quote or escape it"
                ))
            }
            other => {
                word.push(other);
                started = true;
            }
        }
    }
    if started {
        out.push(word);
    }
    Ok(out)
}

/// A line of `sha256sum` output for `name`: coreutils escapes a name holding a backslash, a
/// newline or a carriage return, and marks the line with a leading backslash.
pub fn output_line(hex: &str, name: &str) -> String {
    if name.contains(['\\', '\n', '\r']) {
        let escaped = name
            .replace('\\', "\\\\")
            .replace('\n', "\\n")
            .replace('\r', "\\r");
        format!("\\{hex}  {escaped}\n")
    } else {
        format!("{hex}  {name}\n")
    }
}

/// The coreutils error line for a file that could not be hashed (with wharf's reason).
fn error_line(program: &str, name: &str, e: &ChecksumError) -> String {
    let what = match e.kind {
        ChecksumErrorKind::NotFound => "No such file or directory",
        ChecksumErrorKind::IsDirectory => "Is a directory",
        ChecksumErrorKind::Denied => "Permission denied",
        ChecksumErrorKind::Busy => "Resource temporarily unavailable",
        ChecksumErrorKind::TooLarge => "File too large",
        ChecksumErrorKind::Failure => "Input/output error",
    };
    match e.kind {
        ChecksumErrorKind::NotFound | ChecksumErrorKind::IsDirectory => {
            format!("{program}: {name}: {what}\n")
        }
        _ => format!("{program}: {name}: {what} ({})\n", e.message),
    }
}

/// What a command printed and its exit status.
struct Outcome {
    stdout: String,
    stderr: String,
    status: u32,
}

/// Runs `exec` on `channel` (already accepted) for `session`, then closes the channel. Whatever
/// the client sends meanwhile is read (and, for standard input, hashed up to `MAX_STDIN`), so
/// the connection never waits on this channel; a client that closes the channel ends the work.
pub async fn run(
    channel: Channel<Msg>,
    session: Arc<Session>,
    exec: Exec,
    streams: Arc<HashStreams>,
) {
    let (mut rd, wr) = channel.split();
    let outcome = match exec {
        Exec::Refused(_) => return,
        Exec::Invalid {
            message, status, ..
        } => Some(Outcome {
            stdout: String::new(),
            stderr: format!("{message}\n"),
            status,
        }),
        Exec::Hash(HashCommand {
            algo,
            operand: Operand::Stdin,
        }) => hash_stdin(&mut rd, algo).await,
        Exec::Hash(HashCommand {
            algo,
            operand: Operand::File(name),
        }) => {
            let work = hash_file(&session, algo, &name, &streams);
            tokio::pin!(work);
            loop {
                tokio::select! {
                    out = &mut work => break Some(out),
                    msg = rd.wait() => match msg {
                        None | Some(ChannelMsg::Close) => break None,
                        Some(_) => {}
                    },
                }
            }
        }
    };
    // None: the client went away; nothing to answer.
    if let Some(o) = outcome {
        if !o.stdout.is_empty() {
            let _ = wr.data_bytes(Bytes::from(o.stdout)).await;
        }
        if !o.stderr.is_empty() {
            let _ = wr.extended_data_bytes(1, Bytes::from(o.stderr)).await;
        }
        let _ = wr.eof().await;
        let _ = wr.exit_status(o.status).await;
    }
    let _ = wr.close().await;
}

async fn hash_file(session: &Session, algo: Algo, name: &str, streams: &HashStreams) -> Outcome {
    let program = algo.program();
    let path = match session.resolve(name) {
        Ok(p) => p,
        Err(e) => {
            let e = ChecksumError::from(e);
            return Outcome {
                stdout: String::new(),
                stderr: error_line(program, name, &e),
                status: 1,
            };
        }
    };
    match session.checksum(&path, algo, Part::whole(), streams).await {
        Ok(c) => Outcome {
            stdout: output_line(&c.hex(), name),
            stderr: String::new(),
            status: 0,
        },
        Err(e) => Outcome {
            stdout: String::new(),
            stderr: error_line(program, name, &e),
            status: 1,
        },
    }
}

/// Hashes what the client sends until its EOF (`None`: it closed the channel first).
async fn hash_stdin(rd: &mut russh::ChannelReadHalf, algo: Algo) -> Option<Outcome> {
    let program = algo.program();
    let mut hash = algo.hasher();
    let mut seen = 0usize;
    loop {
        match rd.wait().await {
            Some(ChannelMsg::Data { data }) => {
                seen += data.len();
                if seen <= MAX_STDIN {
                    hash.update(&data);
                }
            }
            Some(ChannelMsg::Eof) => break,
            None | Some(ChannelMsg::Close) => return None,
            Some(_) => {}
        }
    }
    if seen > MAX_STDIN {
        return Some(Outcome {
            stdout: String::new(),
            stderr: format!(
                "{program}: -: standard input is limited to {MAX_STDIN} bytes; name a file instead\n"
            ),
            status: 1,
        });
    }
    Some(Outcome {
        stdout: output_line(&hex::encode(hash.finish()), "-"),
        stderr: String::new(),
        status: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(algo: Algo, name: &str) -> Exec {
        Exec::Hash(HashCommand {
            algo,
            operand: Operand::File(name.into()),
        })
    }

    #[test]
    fn rclone_and_openssh_quoting() {
        // rclone escapes every byte outside [A-Za-z0-9_.,:/@-] and non-ASCII with a backslash,
        // and puts a newline in single quotes.
        assert_eq!(
            parse(br#"sha1sum /in/a\ file\ \(1\)\ it\'s\ \"q\".csv"#),
            file(Algo::Sha1, r#"/in/a file (1) it's "q".csv"#)
        );
        assert_eq!(
            parse("sha256sum /in/résumé\\ \\&\\ co.csv".as_bytes()),
            file(Algo::Sha256, "/in/résumé & co.csv")
        );
        assert_eq!(
            parse(b"sha256sum 'a file.csv'"),
            file(Algo::Sha256, "a file.csv")
        );
        assert_eq!(
            parse(br#"sha256sum "a \"q\" \$x.csv""#),
            file(Algo::Sha256, r#"a "q" $x.csv"#)
        );
        assert_eq!(
            parse(b"sha256sum -- -odd.csv"),
            file(Algo::Sha256, "-odd.csv")
        );
        assert_eq!(parse(b"sha256sum a\\\\b"), file(Algo::Sha256, "a\\b"));
    }

    #[test]
    fn standard_input_is_what_rclone_probes() {
        for (cmd, algo) in [
            (&b"sha1sum"[..], Algo::Sha1),
            (b"sha256sum -", Algo::Sha256),
            (b"  sha1sum  ", Algo::Sha1),
        ] {
            assert_eq!(
                parse(cmd),
                Exec::Hash(HashCommand {
                    algo,
                    operand: Operand::Stdin
                })
            );
        }
    }

    #[test]
    fn everything_else_is_refused() {
        for cmd in [
            &b"md5sum /x"[..],
            b"ls",
            b"echo ${ShellId}%ComSpec%",
            b"/usr/bin/sha256sum x",
            b"scp -t /",
            b"'sha256sum' x",
            b"",
            b"sha256sum\xff",
        ] {
            assert!(
                matches!(parse(cmd), Exec::Refused(_)),
                "{:?}",
                String::from_utf8_lossy(cmd)
            );
        }
    }

    #[test]
    fn what_a_shell_would_do_more_with_is_not_guessed() {
        for cmd in [
            &b"sha256sum x; rm -rf /"[..],
            b"sha256sum x && ls",
            b"sha256sum x | tee y",
            b"sha256sum $(ls)",
            b"sha256sum `ls`",
            b"sha256sum *.csv",
            b"sha256sum x > y",
            b"sha256sum \"$HOME\"",
            b"sha256sum ~/x",
            b"sha256sum 'x",
            b"sha256sum x\nls",
            b"sha256sum {a,b}",
        ] {
            assert!(
                matches!(parse(cmd), Exec::Invalid { status: 2, .. }),
                "{:?}: {:?}",
                String::from_utf8_lossy(cmd),
                parse(cmd)
            );
        }
        for cmd in [
            &b"sha256sum a b"[..],
            b"sha256sum -c sums",
            b"sha1sum --tag x",
        ] {
            assert!(
                matches!(parse(cmd), Exec::Invalid { status: 1, .. }),
                "{:?}",
                String::from_utf8_lossy(cmd)
            );
        }
    }

    #[test]
    fn output_is_coreutils() {
        assert_eq!(output_line("ab", "a file.csv"), "ab  a file.csv\n");
        assert_eq!(output_line("ab", "a\\b"), "\\ab  a\\\\b\n");
        assert_eq!(output_line("ab", "-"), "ab  -\n");
    }
}
