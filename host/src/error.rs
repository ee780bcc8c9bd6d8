//! Errors that end a command, and the exit codes they map to.
//!
//! Every failure reaches the user as one line on stderr: `cairn: <what happened>`, with
//! what to do about it where there is something to do.

use std::fmt;

/// Exit code: the command did what was asked.
pub const EXIT_OK: u8 = 0;
/// Exit code: the command failed; nothing was lost, the repository is consistent.
pub const EXIT_ERROR: u8 = 1;
/// Exit code: bad command-line usage (clap uses it too).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the command ran to the end but found damage or could not handle some items
/// (files that could not be restored, objects that failed verification).
pub const EXIT_PROBLEMS: u8 = 3;

/// An error that carries its own exit code. Anything else exits with [`EXIT_ERROR`].
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    pub fn problems(message: impl Into<String>) -> Self {
        Exit { code: EXIT_PROBLEMS, message: message.into() }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Renders an error chain on one line: `outer: inner: root cause`.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string().replace('\n', " ");
        let text = text.trim().to_string();
        // anyhow contexts often repeat the inner message; skip exact repeats.
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// The exit code for an error: the code of an [`Exit`] anywhere in the chain, else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    err.chain().find_map(|c| c.downcast_ref::<Exit>()).map(|e| e.code).unwrap_or(EXIT_ERROR)
}
