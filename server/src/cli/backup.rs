//! `onetrip store backup` and `onetrip store verify`. A backup goes through the admin
//! socket when a server runs (the server reads one committed state while it keeps
//! serving), or opens the store itself otherwise; verification only reads the file
//! it is given, here in the CLI. The exit codes of `verify` tell a damaged file
//! (3) from a missing or wrong passphrase (4), for scripts that check backups.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Subcommand;

use super::{admin_call, passphrase, print_answer, print_value, Cli};
use crate::admin::AdminRequest;
use crate::seal::SealError;
use crate::store::backup::{verify_backup, BackupError, BackupSummary};

/// `verify`: the file is damaged, truncated, or not an onetrip store.
pub const EXIT_INVALID: i32 = super::EXIT_DAMAGED;
/// `verify`: the backup is sealed and the passphrase is missing or wrong.
pub const EXIT_PASSPHRASE: i32 = super::EXIT_PASSPHRASE;

/// `onetrip store …`
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Write a consistent backup of the store to FILE (mode 0600), also while the
    /// server runs. It is sealed as the store is: the same passphrase opens it.
    /// Restore: stop the server, place FILE as onetrip.redb in the data directory.
    Backup {
        /// Backup file (a new file, unless --force).
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a backup read-only, as `serve` checks its store at start (format,
    /// passphrase, every sealed key, every API key record). Exit codes: 0 usable,
    /// 3 damaged, truncated or not an onetrip store, 4 passphrase missing or wrong,
    /// 1 any other error (e.g. the file cannot be read).
    Verify {
        /// Backup file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply pending schema migrations to the PostgreSQL store (`--store`), for
    /// operators who run them separately; `serve` also applies them at start.
    Migrate,
}

/// Runs a `store` command; returns the process exit code.
pub async fn run(cli: &Cli, cmd: &StoreCommand) -> i32 {
    let result = match cmd {
        StoreCommand::Backup { file, force, json } => backup(cli, file, *force, *json).await,
        StoreCommand::Verify { file, json } => verify(cli, file, *json).await,
        StoreCommand::Migrate => migrate(cli).await,
    };
    match result {
        Ok(()) => 0,
        Err((code, message)) => {
            eprintln!("error: {message}");
            code
        }
    }
}

async fn migrate(cli: &Cli) -> Result<(), (i32, String)> {
    let settings = super::settings(cli, None).map_err(|e| (super::EXIT_USAGE, e.to_string()))?;
    let crate::config::StoreSetting::Postgres(url) = &settings.store else {
        return Err((
            super::EXIT_USAGE,
            "the embedded store has no migrations to run: pass --store postgres://… (or ONETRIP_STORE)".into(),
        ));
    };
    let applied = crate::store::postgres::PgBackend::migrate(url).await.map_err(|e| {
        let e = super::CliError::from(e);
        (e.code, e.message)
    })?;
    match applied.as_slice() {
        [] => println!("{}: the schema is up to date", settings.store.shown()),
        versions => println!("{}: applied migrations {versions:?}", settings.store.shown()),
    }
    Ok(())
}

async fn backup(cli: &Cli, file: &std::path::Path, force: bool, json: bool) -> Result<(), (i32, String)> {
    // The server resolves paths from its own working directory: send an absolute one.
    let path = std::path::absolute(file).map_err(|e| (1, format!("{}: {e}", file.display())))?;
    let v = admin_call(cli, AdminRequest::StoreBackup { path, force }).await.map_err(|e| (e.code, e.message))?;
    print_answer(&v, json, |s: &BackupSummary| format!("backup written: {}", describe(s)))
        .map_err(|e| (e.code, e.message))
}

async fn verify(cli: &Cli, file: &std::path::Path, json: bool) -> Result<(), (i32, String)> {
    let pass = passphrase(cli).map_err(|e| (1, e.to_string()))?;
    let path = file.to_owned();
    let given = pass.clone();
    let first = tokio::task::spawn_blocking(move || verify_backup(&path, given.as_deref().map(String::as_str)))
        .await
        .map_err(|e| (1, e.to_string()))?;
    let result = match first {
        Err(BackupError::Passphrase { source: SealError::PassphraseRequired, .. })
            if pass.is_none() && std::io::stdin().is_terminal() =>
        {
            let typed = zeroize::Zeroizing::new(
                rpassword::prompt_password("backup passphrase: ")
                    .map_err(|e| (1, format!("cannot read passphrase: {e}")))?,
            );
            let path = file.to_owned();
            tokio::task::spawn_blocking(move || verify_backup(&path, Some(&typed)))
                .await
                .map_err(|e| (1, e.to_string()))?
        }
        other => other,
    };
    let summary = result.map_err(|e| {
        let code = match e {
            BackupError::Invalid { .. } => EXIT_INVALID,
            BackupError::Passphrase { .. } => EXIT_PASSPHRASE,
            _ => 1,
        };
        (code, e.to_string())
    })?;
    let v = serde_json::to_value(&summary).map_err(|e| (1, e.to_string()))?;
    print_value(&v, json, || format!("backup OK: {}", describe(&summary))).map_err(|e| (e.code, e.message))
}

fn describe(s: &BackupSummary) -> String {
    format!(
        "{}\n  API keys: {}\n  identity fingerprint: {}\n  private keys sealed: {}{}\n  size: {} bytes",
        s.path.display(),
        s.api_keys,
        s.fingerprint,
        if s.sealed { "yes" } else { "no" },
        if s.sealed { " (the store's passphrase opens it)" } else { "" },
        s.bytes,
    )
}
