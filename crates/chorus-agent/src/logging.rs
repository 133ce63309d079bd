//! Logging: tracing to stderr as text or JSON, and the one place alerts become log events.
//!
//! JSON lines are written by [`JsonLines`] rather than tracing-subscriber's JSON formatter,
//! which can only write a field as a string: an alert's `details` is a JSON object in the
//! line, so `jq .details.node` works without decoding a string first.

use std::fmt;
use std::io::IsTerminal;
use std::time::SystemTime;

use chorus_core::alert::{Alert, Severity};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;
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
        LogFormat::Json => builder.event_format(JsonLines).try_init(),
    };
}

/// Logs an alert: its text line contains `alert=<kind>`, its JSON object has a field `alert`,
/// and `details` carries every field of the alert (an object in JSON lines).
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

/// The field whose text is JSON and is written as JSON.
const JSON_FIELDS: [&str; 1] = ["details"];

/// One JSON object a line: `timestamp` (RFC 3339, UTC, microseconds), `level`, `target`, the
/// event's fields at the top level (`message`, `alert`, ...), `spans` when there are any.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            humantime::format_rfc3339_micros(SystemTime::now())
                .to_string()
                .into(),
        );
        let meta = event.metadata();
        line.insert("level".into(), meta.level().as_str().into());
        event.record(&mut JsonFields(&mut line));
        line.insert("target".into(), meta.target().into());
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope.from_root().map(|s| s.name().into()).collect();
            line.insert("spans".into(), spans.into());
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Collects an event's fields into a JSON object.
struct JsonFields<'a>(&'a mut Map<String, Value>);

impl JsonFields<'_> {
    fn text(&mut self, field: &Field, text: String) {
        let value = if JSON_FIELDS.contains(&field.name()) {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        } else {
            Value::String(text)
        };
        self.0.insert(field.name().into(), value);
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field, value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.text(field, format!("{value:?}"));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_alert_lines_carry_details_as_an_object() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            log_alert(
                "n1",
                &Alert::NodeFailed {
                    node: "n2".into(),
                    addr: "127.0.0.1:7946".parse().unwrap(),
                },
            );
            tracing::info!(count = 3, "plain");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let mut parsed = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect(l));
        let alert = parsed.next().expect("the alert line");
        assert_eq!(alert["alert"], "node_failed", "{alert}");
        assert_eq!(alert["level"], "WARN");
        assert_eq!(alert["details"]["node"], "n2", "{alert}");
        assert_eq!(alert["details"]["addr"], "127.0.0.1:7946", "{alert}");
        assert_eq!(alert["message"], "node n2 at 127.0.0.1:7946 failed");
        assert!(
            alert["timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{alert}"
        );
        let plain = parsed.next().expect("the plain line");
        assert_eq!(plain["count"], 3);
        assert_eq!(plain["target"], "chorus_agent::logging::tests");
    }
}
