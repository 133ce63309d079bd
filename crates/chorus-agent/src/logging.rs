//! Logging: tracing to stderr as text or JSON, and the one place alerts become log events.

use std::io::IsTerminal;

use chorus_core::alert::{Alert, Severity};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; `RUST_LOG` refines the default `info` level. A second call
/// (several in-process agents in one test) is a no-op.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,chitchat=warn,quinn=warn,rustls=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Logs an alert: its text line contains `alert=<kind>`, its JSON object has a field `alert`,
/// and `details` carries every field of the alert as JSON.
pub fn log_alert(observer: &str, alert: &Alert) {
    let kind = alert.kind();
    let node = alert.node().unwrap_or("");
    let details = serde_json::to_string(alert).unwrap_or_default();
    match alert.severity() {
        Severity::Info => {
            tracing::info!(alert = %kind, node = %node, observer = %observer, details = %details, "{alert}")
        }
        Severity::Warn => {
            tracing::warn!(alert = %kind, node = %node, observer = %observer, details = %details, "{alert}")
        }
        Severity::Error => {
            tracing::error!(alert = %kind, node = %node, observer = %observer, details = %details, "{alert}")
        }
    }
}
