//! The one place helper commands are prepared: cargo and test listings.
//! Each can print its command line (`--verbose`).

use std::ffi::OsStr;
use std::process::Command;

/// The command line of `command`, quoted where needed, for messages.
pub(crate) fn display(command: &Command) -> String {
    std::iter::once(command.get_program()).chain(command.get_args()).map(quote).collect::<Vec<_>>().join(" ")
}

fn quote(arg: &OsStr) -> String {
    let text = arg.to_string_lossy();
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Prints the command line on stderr when `verbose`.
pub(crate) fn announce(command: &Command, verbose: bool) {
    if verbose {
        eprintln!("     Running `{}`", display(command));
    }
}

/// A helper command: it starts with no signal blocked (we block some).
pub(crate) fn helper(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    crate::run::reset_signals_on_exec(&mut command);
    command
}

/// The cargo to run: `$CARGO` when cargo started us, else `cargo` from PATH.
pub(crate) fn cargo() -> Command {
    helper(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}
