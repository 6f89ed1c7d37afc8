//! Log lines on stderr: `key="value"` text for a person, or one JSON object
//! per line for a log collector (`--log-format json`), filtered by
//! `--log-level`, else `RUST_LOG`, else [`DEFAULT_FILTER`].
//!
//! A traced request's work runs inside a [`request_scope`] span, so a line
//! logged on its behalf carries the trace and span id: as span fields in
//! text, as top-level `trace_id` / `span_id` in JSON.

use clap::ValueEnum;
use serde_json::{Map, Value};
use std::fmt;
use std::io::IsTerminal;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// What is logged when neither `--log-level` nor `RUST_LOG` says.
pub const DEFAULT_FILTER: &str = "info,ort=warn,notify=warn";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `timestamp LEVEL target: message key=value`, coloured only on a terminal.
    Text,
    /// One JSON object per line: timestamp, level, target, message, fields,
    /// and trace_id / span_id when the line belongs to a traced request.
    Json,
}

/// Checks a `--log-level` value: a level (`debug`) or EnvFilter directives
/// (`info,ferroserve::audit=warn`).
pub fn parse_filter(value: &str) -> Result<String, String> {
    EnvFilter::builder().parse(value).map(|_| value.to_string()).map_err(|e| format!("{value:?}: {e}"))
}

/// The filter in force: the flag, else `RUST_LOG`, else the default.
fn filter(level: Option<&str>) -> EnvFilter {
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let directives = level.map(str::to_string).or(from_env).unwrap_or_else(|| DEFAULT_FILTER.to_string());
    EnvFilter::builder().parse(&directives).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

/// Installs the global subscriber: the filter, the chosen format on stderr,
/// and `extra` (the OpenTelemetry layer, when tracing is on).
pub fn install<L>(format: LogFormat, level: Option<&str>, extra: Option<L>)
where
    L: Layer<tracing_subscriber::layer::Layered<EnvFilter, tracing_subscriber::Registry>> + Send + Sync,
{
    let output = match format {
        // Colour only for a person at a terminal: a file or a pipe gets plain text.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(JsonLines)
            .boxed(),
    };
    tracing_subscriber::registry().with(filter(level)).with(extra).with(TraceIds).with(output).init();
}

/// A span that gives the lines logged inside it a request's trace and span
/// id. An error-level span, so no level filter hides it while the events
/// inside may show.
pub fn request_scope(trace_id: impl fmt::Display, span_id: impl fmt::Display) -> tracing::Span {
    tracing::error_span!("request", trace_id = %trace_id, span_id = %span_id)
}

/// The trace and span id of a [`request_scope`] span, kept structured for
/// the JSON lines.
struct Ids {
    trace_id: String,
    span_id: String,
}

/// Records [`Ids`] on each span that has both fields.
struct TraceIds;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for TraceIds {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let (Some(Value::String(trace_id)), Some(Value::String(span_id))) =
            (fields.values.remove("trace_id"), fields.values.remove("span_id"))
        else {
            return;
        };
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Ids { trace_id, span_id });
        }
    }
}

/// An event's fields as JSON values; `message` apart.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    values: Map<String, Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.values.insert(field.name().to_string(), value);
        }
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(
            field,
            serde_json::Number::from_f64(value).map_or_else(|| Value::String(value.to_string()), Value::Number),
        );
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

/// `--log-format json`: one object per line.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert("timestamp".into(), Value::String(timestamp));
        line.insert("level".into(), Value::String(meta.level().as_str().into()));
        line.insert("target".into(), Value::String(meta.target().into()));
        line.insert("message".into(), Value::String(fields.message.unwrap_or_default()));
        line.insert("fields".into(), Value::Object(fields.values));
        if let Some(scope) = ctx.event_scope() {
            for span in scope {
                if let Some(ids) = span.extensions().get::<Ids>() {
                    line.insert("trace_id".into(), Value::String(ids.trace_id.clone()));
                    line.insert("span_id".into(), Value::String(ids.span_id.clone()));
                    break;
                }
            }
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(f: impl FnOnce()) -> Vec<Value> {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::registry().with(TraceIds).with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .event_format(JsonLines),
        );
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"))).collect()
    }

    #[test]
    fn each_line_is_one_json_object_with_its_fields() {
        let logged = lines(|| {
            tracing::warn!(model = "mlp", version = 2, ok = false, ratio = 0.5, error = %"bad \"input\"\nnext", "canary rolled back");
        });
        assert_eq!(logged.len(), 1);
        let line = &logged[0];
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "canary rolled back");
        assert_eq!(line["target"], module_path!());
        assert_eq!(line["fields"]["model"], "mlp");
        assert_eq!(line["fields"]["version"], 2);
        assert_eq!(line["fields"]["ok"], false);
        assert_eq!(line["fields"]["ratio"], 0.5);
        assert_eq!(line["fields"]["error"], "bad \"input\"\nnext");
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
        assert!(line.get("trace_id").is_none());
    }

    #[test]
    fn a_line_inside_a_request_scope_carries_its_ids() {
        let logged = lines(|| {
            let _scope = request_scope("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7").entered();
            tracing::info!("inside");
        });
        assert_eq!(logged[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(logged[0]["span_id"], "00f067aa0ba902b7");
    }

    #[test]
    fn a_bad_level_is_refused_by_name() {
        assert!(parse_filter("debug").is_ok());
        assert!(parse_filter("info,ferroserve::audit=warn").is_ok());
        let err = parse_filter("info,=loud").unwrap_err();
        assert!(err.contains("info,=loud"), "{err}");
    }
}
