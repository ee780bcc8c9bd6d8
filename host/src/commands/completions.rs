//! `cairn completions SHELL` and `cairn man`: generated from the command-line definition, so
//! they always match the commands and flags of this cairn.

use anyhow::Result;
use clap::CommandFactory;

use crate::cli::Cli;

pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    clap_complete::generate(shell, &mut Cli::command(), "cairn", &mut std::io::stdout());
    Ok(())
}

/// The man page (roff) of cairn: its options and commands (`cairn COMMAND --help` gives
/// each command's flags).
pub fn man() -> Result<()> {
    clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout().lock())?;
    Ok(())
}
