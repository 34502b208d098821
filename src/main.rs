//! The `wharf` binary: parse the command line and hand it to the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    wharf::cli::main()
}
