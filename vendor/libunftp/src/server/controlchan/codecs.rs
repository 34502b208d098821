use super::{
    Reply,
    command::Command,
    error::{ControlChanError, ControlChanErrorKind},
    line_parser,
};

/// wharf patch: the longest command line accepted, terminator included. A path may be 1024
/// bytes after decoding; a command, a space and an escaped path fit well within this.
pub const MAX_LINE_LEN: usize = 4096;

use bytes::BytesMut;
use std::io::Write;
use tokio_util::codec::{Decoder, Encoder};

// FTPCodec implements tokio's `Decoder` and `Encoder` traits for the control channel, that we'll
// use to decode FTP commands and encode their responses.
pub struct FtpCodec {
    // Stored index of the next index to examine for a '\n' character. This is used to optimize
    // searching. For example, if `decode` was called with `abc`, it would hold `3`, because that
    // is the next index to examine. The next time `decode` is called with `abcde\n`, we will only
    // look at `de\n` before returning.
    next_index: usize,
}

impl FtpCodec {
    pub fn new() -> Self {
        FtpCodec { next_index: 0 }
    }
}

/// wharf patch: a line that does not parse is an item (`Err`), not an error of the stream.
/// tokio-util's `Framed` ends the stream after the decoder's first error, so upstream closed
/// the control connection after every command it could not parse (`OPTS` with an option it
/// does not know, `NOOP x`), whatever `handle_control_channel_error` said; the client got its
/// `501` and then EOF. Errors of the stream itself (an over-long line) still end it.
pub type Decoded = Result<Command, ControlChanError>;

impl Decoder for FtpCodec {
    type Item = Decoded;
    type Error = ControlChanError;

    // Here we decode the incoming bytes into a meaningful command. We'll split on newlines, and
    // parse the resulting line using `Command::parse()`. This method will be called by tokio.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, Self::Error> {
        if let Some(newline_offset) = buf[self.next_index..].iter().position(|b| *b == b'\n') {
            let newline_index = newline_offset + self.next_index;
            if newline_index >= MAX_LINE_LEN {
                // wharf patch: a whole over-long line that arrived at once is refused too.
                return Err(ControlChanError::new(ControlChanErrorKind::LineTooLong));
            }
            let line = buf.split_to(newline_index + 1);
            self.next_index = 0;
            Ok(Some(line_parser::parse(line).map_err(ControlChanError::from)))
        } else if buf.len() > MAX_LINE_LEN {
            // wharf patch: an endless line must not grow the buffer without bound.
            Err(ControlChanError::new(ControlChanErrorKind::LineTooLong))
        } else {
            self.next_index = buf.len();
            Ok(None)
        }
    }
}

impl Encoder<Reply> for FtpCodec {
    type Error = ControlChanError;

    // Here we encode the outgoing response
    fn encode(&mut self, reply: Reply, buf: &mut BytesMut) -> Result<(), Self::Error> {
        let mut buffer = vec![];
        match reply {
            Reply::None => {
                return Ok(());
            }
            Reply::CodeAndMsg { code, msg } => {
                if msg.is_empty() {
                    writeln!(buffer, "{}\r", code as u32)?;
                } else {
                    writeln!(buffer, "{} {}\r", code as u32, msg)?;
                }
            }
            Reply::MultiLine { code, mut lines } => {
                // Get the last line since it needs to be preceded by the response code.
                let last_line = lines.pop().unwrap_or_default();

                // Lines starting with a digit should be indented
                for it in lines.iter_mut() {
                    if it.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                        it.insert(0, ' ');
                    }
                }
                if lines.is_empty() {
                    writeln!(buffer, "{} {}\r", code as u32, last_line)?;
                } else {
                    write!(buffer, "{}-{}\r\n{} {}\r\n", code as u32, lines.join("\r\n"), code as u32, last_line)?;
                }
            }
        }
        buf.extend(&buffer);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::ReplyCode;
    use super::*;

    #[test]
    fn encode_multiline_reply_with_blank_line_does_not_panic() {
        let mut codec = FtpCodec::new();
        let mut buf = BytesMut::new();
        let reply = Reply::new_multiline(ReplyCode::HelpMessage, vec!["Usage: foo", "", "Options:"]);

        codec.encode(reply, &mut buf).unwrap();

        assert_eq!(buf, "214-Usage: foo\r\n\r\n214 Options:\r\n".as_bytes());
    }
}
