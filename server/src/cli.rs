//! The `onetrip` command line: `serve`, `keys …`, `server-key …`, `audience-key`, `store …`.
//! Key commands go to a running server over its admin socket, or open the store
//! directly when no server runs.

use crate::admin::answers::{AudienceKeys, AuditPage, TokenKeyRotated, TokenRevoked};
use crate::admin::AdminRequest;
use crate::state::unix_now;

mod args;
mod backup;
mod bulk;
mod commands;
mod exit;
mod output;
mod reload;
mod serve;
mod store_access;

pub use args::{
    parse_since, Cli, Command, KeysCommand, ServeArgs, ServerKeyCommand, Since, SinceError, TokenArgs, TokenKeyCommand,
    TokensCommand,
};
use commands::{keys, server_key, token};
use output::{print_answer, print_value};
use serve::serve;
use store_access::admin_call;
use store_access::{passphrase, settings};

pub use backup::StoreCommand;
pub use exit::{
    CliError, EXIT_CODES_HELP, EXIT_CONFLICT, EXIT_DAMAGED, EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_PASSPHRASE,
    EXIT_UNAVAILABLE, EXIT_USAGE,
};

/// Runs the command line; returns the process exit code.
pub fn main_with(cli: Cli) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    if let Command::Store(ref cmd) = cli.command {
        // Its own exit codes (a damaged backup is not any other error).
        return runtime.block_on(backup::run(&cli, cmd));
    }
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(ref args) => serve(&cli, args).await,
            Command::Keys(ref k) => keys(&cli, k).await,
            Command::Token(ref t) => token(t).await,
            Command::ServerKey(ref s) => server_key(&cli, s).await,
            Command::Audit { since, since_secs, limit, ref before, json } => {
                let since = match (since_secs, since) {
                    (Some(secs), _) => unix_now().saturating_sub(secs),
                    (None, Since::Ago(secs)) => unix_now().saturating_sub(secs),
                    (None, Since::At(at)) => at,
                };
                let v = admin_call(&cli, AdminRequest::Audit { since, limit, before: before.clone() }).await?;
                audit_page(&v, since, limit, json)
            }
            Command::TokenKey(TokenKeyCommand::Rotate { overlap_secs, json }) => {
                let v = admin_call(&cli, AdminRequest::TokenKeyRotate { overlap_secs }).await?;
                print_answer(&v, json, |a: &TokenKeyRotated| {
                    format!(
                        "new token key {}; older keys open tokens until {} (unix time), then go.\nRun `onetrip audience-key <audience>` for each resource server now.",
                        a.new_key_id, a.older_keys_retire_at
                    )
                })
            }
            Command::Tokens(TokensCommand::Revoke { ref token_id, json }) => {
                let v = admin_call(&cli, AdminRequest::TokensRevoke { token_id: token_id.clone() }).await?;
                print_answer(&v, json, |a: &TokenRevoked| {
                    format!("token {} revoked until {} (unix time)", a.token_id, a.revoked_until)
                })
            }
            Command::Store(_) => unreachable!("handled above"),
            Command::AudienceKey { ref audience, json } => {
                let v = admin_call(&cli, AdminRequest::AudienceKey { audience: audience.clone() }).await?;
                // One `<key_id>:<key>` per line, current first: the form
                // ONETRIP_AUDIENCE_KEY and TokenVerifier users take as it is.
                print_answer(&v, json, |a: &AudienceKeys| {
                    let lines: Vec<String> = a.keys.iter().map(|k| format!("{}:{}", k.key_id, k.key.expose())).collect();
                    lines.join("\n")
                })
            }
        }
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", e.message);
            e.code
        }
    }
}

/// Prints one page of `audit`, then, on stderr, how to see older events if any are left.
fn audit_page(v: &serde_json::Value, since: u64, limit: usize, json: bool) -> Result<(), CliError> {
    // A server from before audit pages answers the bare list.
    let page: AuditPage = match v {
        serde_json::Value::Array(_) => AuditPage { events: output::decode(v)?, next_before: None },
        _ => output::decode(v)?,
    };
    let events = serde_json::to_value(&page.events).map_err(crate::admin::AdminError::Answer)?;
    print_value(&events, json, || {
        let lines: Vec<String> =
            page.events.iter().map(|e| format!("{}  {:<20} {}", e.at, e.event, e.detail)).collect();
        lines.join("\n")
    })?;
    if let Some(cursor) = page.next_before {
        eprintln!(
            "more events: these are the newest {limit}; older ones: onetrip audit --since {since} --limit {limit} --before {cursor}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_unix_times_and_explains_mistakes() {
        assert_eq!(parse_since("90s"), Ok(Since::Ago(90)));
        assert_eq!(parse_since("30m"), Ok(Since::Ago(1800)));
        assert_eq!(parse_since("12h"), Ok(Since::Ago(43_200)));
        assert_eq!(parse_since("7d"), Ok(Since::Ago(604_800)));
        assert_eq!(parse_since("3600"), Ok(Since::Ago(3600)));
        assert_eq!(parse_since("1795600000"), Ok(Since::At(1_795_600_000)));
        for bad in ["", "h", "5w", "-1h", "1.5h", "99999999999999999999d", "12hh"] {
            let e: SinceError = parse_since(bad).unwrap_err();
            assert_eq!(e.to_string(), format!("`{bad}` is neither a duration (90s, 30m, 12h, 7d) nor a Unix time"));
        }
    }
}
