//! `onetrip audit` shows the newest `--limit` events and, when older ones exist, says
//! so on stderr with the `--before` cursor that shows them: following the cursors
//! walks the whole log once, never cutting it off silently.

mod common;

use common::{cli, now};
use onetrip_server::store::Store;

fn json(out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The cursor of the stderr line "more events: … --before CURSOR", if any.
fn more(out: &std::process::Output) -> Option<String> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().find(|l| l.starts_with("more events"))?;
    Some(line.rsplit_once("--before ").expect("the line gives --before").1.trim().to_owned())
}

#[test]
fn audit_pages_walk_every_event_once_newest_first_and_say_when_more_exist() {
    let dir = tempfile::tempdir().unwrap();
    let base = now() - 1_000;
    {
        let (store, _) = Store::open_or_init(dir.path(), None, now()).unwrap();
        // Four events a second, so pages end in the middle of a second.
        for i in 0..37u64 {
            store.audit(base + i / 4, "test.event", serde_json::json!({ "i": i })).unwrap();
        }
    }
    let since = base.to_string();
    let all = json(&cli(dir.path(), &["audit", "--since", &since, "--limit", "100000", "--json"]));
    let ours = all.iter().filter(|e| e["event"] == "test.event").count();
    assert_eq!(ours, 37, "{all:?}");
    let whole = cli(dir.path(), &["audit", "--since", &since, "--limit", "100000"]);
    assert_eq!(more(&whole), None, "nothing is left when the limit holds everything");

    // Pages of 5, newest first; each page's events oldest first.
    let mut pages: Vec<Vec<serde_json::Value>> = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut args = vec!["audit", "--since", &since, "--limit", "5", "--json"];
        if let Some(cursor) = &before {
            args.extend(["--before", cursor.as_str()]);
        }
        let out = cli(dir.path(), &args);
        let page = json(&out);
        assert!(!page.is_empty() && page.len() <= 5, "page {}: {page:?}", pages.len());
        pages.push(page);
        match more(&out) {
            Some(cursor) => before = Some(cursor),
            None => break,
        }
        assert!(pages.len() <= all.len(), "the pages do not end");
    }
    let walked: Vec<serde_json::Value> = pages.iter().rev().flatten().cloned().collect();
    assert_eq!(walked, all, "the pages, oldest last, are the whole log once, in order");
    assert_eq!(pages.len(), all.len().div_ceil(5));

    // The human listing says the same, and a cursor that is not one is refused.
    let first = cli(dir.path(), &["audit", "--since", &since, "--limit", "5"]);
    assert_eq!(String::from_utf8_lossy(&first.stdout).lines().count(), 5);
    assert!(more(&first).is_some(), "{}", String::from_utf8_lossy(&first.stderr));
    let bad = cli(dir.path(), &["audit", "--before", "yesterday"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an audit cursor"));
}
