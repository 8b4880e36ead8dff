//! Runs the `custodian` binary as an operator would: a clean environment (PATH only, plus
//! what the test passes), and never the configuration of a `custodian dev` run in this
//! checkout.

use std::process::{Command, Output};

/// A `custodian` command with a clean environment, ready for more arguments or input.
pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_custodian"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CUSTODIAN_DEV_DIR", "/nonexistent/custodian-dev");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `custodian <args>` to completion.
pub fn custodian(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env).output().unwrap()
}
