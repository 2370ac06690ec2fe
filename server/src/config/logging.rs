//! How log lines are written: human text, or one JSON object a line for log
//! pipelines (Loki, Elasticsearch, journald's JSON export).

/// The `log_format` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-12-02T10:00:00Z  INFO request{id=…}: message key=value` (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object a line: `timestamp`, `level`, `target`, `fields`, and the
    /// request span (`spans`, with its `id`) when the line belongs to a request.
    Json,
}
