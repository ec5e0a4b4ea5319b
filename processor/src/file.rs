//! Pipeline files: a TOML description of a pipeline over JSON values, built into the same [`Job`] as the Rust
//! API builds. The format is documented in the README ("Pipeline files"); `examples/pipelines/` has examples.
//!
//! Steps run in a fixed order: source, filters, projection, key, window + aggregate, sink. Errors name the
//! line of the file they come from.

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use crate::aggregate::{Avg, Count, Max, Min, Sum};
use crate::error::{Error, Result};
use crate::pipeline::{Job, Pipeline, Stream};
use crate::record::{Message, OutRecord, WindowResult};
use crate::window::Window;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    name: Spanned<String>,
    source: SourceSpec,
    #[serde(default)]
    filter: Vec<FilterSpec>,
    project: Option<Spanned<Vec<String>>>,
    key_by: Option<Spanned<KeySpec>>,
    window: Option<Spanned<WindowSpec>>,
    aggregate: Option<Spanned<AggregateSpec>>,
    sink: TopicSpecFile,
    late: Option<TopicSpecFile>,
    #[serde(default)]
    settings: SettingsSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceSpec {
    topic: String,
    partitions: Option<Spanned<i32>>,
    /// "timestamp" (the record's) or { field = "..." }.
    event_time: Option<Spanned<Selector>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicSpecFile {
    topic: Spanned<String>,
    partitions: Option<Spanned<i32>>,
}

/// A string naming a record part ("key", "timestamp"), or a JSON field of the value.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Selector {
    Part(String),
    Field { field: String },
}

/// `record_key = true` (group by the record key) or `field = "..."` (a JSON field of the value).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySpec {
    #[serde(default)]
    record_key: bool,
    field: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterSpec {
    field: String,
    op: Spanned<String>,
    value: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowSpec {
    #[serde(rename = "type")]
    kind: String,
    size_ms: Option<i64>,
    advance_ms: Option<i64>,
    gap_ms: Option<i64>,
    #[serde(default)]
    allowed_lateness_ms: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AggregateSpec {
    op: String,
    field: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SettingsSpec {
    checkpoint_interval_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    out_of_orderness_ms: Option<u64>,
    checkpoint_fsync: Option<bool>,
    parallelism: Option<usize>,
    max_parallelism: Option<usize>,
    /// "memory" or "disk".
    state_backend: Option<Spanned<String>>,
    state_memory_budget_mb: Option<usize>,
}

/// The pipeline with a file's settings applied.
pub(crate) fn apply_settings(cx: &Ctx, mut p: Pipeline, s: &SettingsSpec) -> Result<Pipeline> {
    if let Some(b) = &s.state_backend {
        match b.get_ref().parse::<crate::keyed_state::BackendKind>() {
            Ok(kind) => p = p.state_backend(kind),
            Err(e) => return cx.err(b.span(), e.to_string()),
        }
    }
    if let Some(mb) = s.state_memory_budget_mb {
        p = p.state_memory_budget(mb.saturating_mul(1 << 20));
    }
    if let Some(ms) = s.checkpoint_interval_ms {
        p = p.checkpoint_interval(Duration::from_millis(ms));
    }
    if let Some(ms) = s.idle_timeout_ms {
        p = p.idle_timeout(Duration::from_millis(ms));
    }
    if let Some(f) = s.checkpoint_fsync {
        p = p.checkpoint_fsync(f);
    }
    if let Some(ms) = s.out_of_orderness_ms {
        p = p.out_of_orderness(Duration::from_millis(ms));
    }
    if let Some(n) = s.parallelism {
        p = p.parallelism(n);
    }
    if let Some(n) = s.max_parallelism {
        p = p.max_parallelism(n);
    }
    Ok(p)
}

/// A pipeline name: 1 or more of [a-zA-Z0-9._-].
pub(crate) fn check_name(cx: &Ctx, name: &Spanned<String>) -> Result<String> {
    let n = name.get_ref();
    if n.is_empty()
        || !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return cx.err(
            name.span(),
            "a pipeline name is 1 or more of [a-zA-Z0-9._-]",
        );
    }
    Ok(n.clone())
}

/// The line (1-based) where byte `at` of `src` is.
fn line_of(src: &str, at: usize) -> usize {
    src.get(..at.min(src.len()))
        .map_or(1, |s| s.bytes().filter(|b| *b == b'\n').count() + 1)
}

pub(crate) struct Ctx<'a> {
    src: &'a str,
    pub(crate) path: &'a str,
}

impl Ctx<'_> {
    pub(crate) fn err<T>(
        &self,
        at: std::ops::Range<usize>,
        msg: impl std::fmt::Display,
    ) -> Result<T> {
        Err(Error::File(format!(
            "{}:{}: {msg}",
            self.path,
            line_of(self.src, at.start)
        )))
    }
}

/// A record on its way through a file pipeline: the source record unchanged (late records are written as
/// they came) and its value parsed as JSON once, when a step needs it.
#[derive(Debug, Clone)]
pub struct JsonRecord {
    pub message: Message,
    pub json: Option<Value>,
    /// The value after projection, when the pipeline projects.
    pub projected: Option<Bytes>,
}

impl From<JsonRecord> for OutRecord {
    fn from(r: JsonRecord) -> OutRecord {
        r.message.into()
    }
}

use crate::json_rec::{key_of, lookup};

fn parse_json(m: &Message) -> Option<Value> {
    serde_json::from_slice(m.value.as_deref()?).ok()
}

#[derive(Clone, Copy)]
pub(crate) enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Exists,
    Missing,
}

pub(crate) fn compare(cmp: Cmp, got: Option<&Value>, want: &Value) -> bool {
    let ordering = || -> Option<std::cmp::Ordering> {
        let g = got?;
        match (g.as_f64(), want.as_f64()) {
            (Some(a), Some(b)) => a.partial_cmp(&b),
            _ => Some(g.as_str()?.cmp(want.as_str()?)),
        }
    };
    match cmp {
        Cmp::Exists => got.is_some_and(|v| !v.is_null()),
        Cmp::Missing => got.is_none_or(Value::is_null),
        Cmp::Eq => {
            got.is_some_and(|g| g == want || (g.as_f64().is_some() && g.as_f64() == want.as_f64()))
        }
        Cmp::Ne => {
            !got.is_some_and(|g| g == want || (g.as_f64().is_some() && g.as_f64() == want.as_f64()))
        }
        Cmp::Lt => ordering() == Some(std::cmp::Ordering::Less),
        Cmp::Le => matches!(
            ordering(),
            Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
        ),
        Cmp::Gt => ordering() == Some(std::cmp::Ordering::Greater),
        Cmp::Ge => matches!(
            ordering(),
            Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
        ),
    }
}

pub(crate) fn toml_to_json(v: &toml::Value) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Reads and builds the pipeline in the file at `path`.
pub fn load(path: &std::path::Path) -> Result<Job> {
    let src = std::fs::read_to_string(path)
        .map_err(|e| Error::File(format!("{}: {e}", path.display())))?;
    parse(&src, &path.display().to_string())
}

/// Builds a pipeline from the text of a pipeline file (`path` names it in errors): a graph file (with
/// `[[sources]]`, `[[steps]]`, `[[sinks]]`; see [`crate::graph_file`]) or a linear one.
pub fn parse(src: &str, path: &str) -> Result<Job> {
    let toml_err = |e: toml::de::Error| {
        let line = e.span().map_or(0, |s| line_of(src, s.start));
        Error::File(format!("{path}:{line}: {}", e.message()))
    };
    let doc: toml::Table = toml::from_str(src).map_err(toml_err)?;
    let cx = Ctx { src, path };
    if crate::graph_file::is_graph(&doc) {
        let spec: crate::graph_file::GraphFile = toml::from_str(src).map_err(toml_err)?;
        return crate::graph_file::build(spec, &cx);
    }
    let spec: FileSpec = toml::from_str(src).map_err(toml_err)?;
    build(spec, &cx)
}

/// A filter op by name.
pub(crate) fn parse_cmp(op: &str) -> Option<Cmp> {
    Some(match op {
        "eq" => Cmp::Eq,
        "ne" => Cmp::Ne,
        "lt" => Cmp::Lt,
        "le" => Cmp::Le,
        "gt" => Cmp::Gt,
        "ge" => Cmp::Ge,
        "exists" => Cmp::Exists,
        "missing" => Cmp::Missing,
        _ => return None,
    })
}

impl Cmp {
    pub(crate) fn needs_value(self) -> bool {
        !matches!(self, Cmp::Exists | Cmp::Missing)
    }
}

pub(crate) fn check_partitions(cx: &Ctx, p: &Option<Spanned<i32>>) -> Result<Option<i32>> {
    match p {
        Some(p) if *p.get_ref() <= 0 || *p.get_ref() > 100_000 => cx.err(
            p.span(),
            format!(
                "partitions must be between 1 and 100000, got {}",
                p.get_ref()
            ),
        ),
        Some(p) => Ok(Some(*p.get_ref())),
        None => Ok(None),
    }
}

fn build(spec: FileSpec, cx: &Ctx) -> Result<Job> {
    let name = check_name(cx, &spec.name)?;
    let p = apply_settings(cx, Pipeline::new(name), &spec.settings)?;
    let partitions = check_partitions(cx, &spec.source.partitions)?;
    let mut stream: Stream<Message> =
        p.source_with_partitions(spec.source.topic.clone(), partitions);
    match spec
        .source
        .event_time
        .as_ref()
        .map(|s| (s.get_ref().clone(), s.span()))
    {
        None => {}
        Some((Selector::Part(p), _)) if p == "timestamp" => {}
        Some((Selector::Part(other), span)) => {
            return cx.err(
                span,
                format!("event_time is \"timestamp\" or {{ field = \"...\" }}, not {other:?}"),
            );
        }
        Some((Selector::Field { field }, _)) => {
            stream = stream.event_time(move |m: &Message| {
                parse_json(m).and_then(|v| lookup(&v, &field).and_then(Value::as_i64))
            });
        }
    }

    let mut recs: Stream<JsonRecord> = stream.map(|m: Message| JsonRecord {
        json: parse_json(&m),
        message: m,
        projected: None,
    });
    recs = recs.uid("parse");
    for f in &spec.filter {
        let Some(cmp) = parse_cmp(f.op.get_ref()) else {
            return cx.err(
                f.op.span(),
                format!(
                    "unknown filter op {:?} (eq, ne, lt, le, gt, ge, exists, missing)",
                    f.op.get_ref()
                ),
            );
        };
        let want = match (&f.value, cmp) {
            (None, Cmp::Exists | Cmp::Missing) => Value::Null,
            (None, _) => return cx.err(f.op.span(), "this filter needs a value"),
            (Some(v), _) => toml_to_json(v),
        };
        let field = f.field.clone();
        recs = recs.filter(move |r: &JsonRecord| {
            let got = r.json.as_ref().and_then(|v| lookup(v, &field));
            compare(cmp, got, &want)
        });
    }
    if let Some(fields) = &spec.project {
        if fields.get_ref().is_empty() {
            return cx.err(
                fields.span(),
                "project lists the fields to keep; it is empty",
            );
        }
        let fields = fields.get_ref().clone();
        recs = recs.map(move |mut r: JsonRecord| {
            let mut out = serde_json::Map::new();
            if let Some(v) = &r.json {
                for f in &fields {
                    if let Some(x) = lookup(v, f) {
                        out.insert(f.clone(), x.clone());
                    }
                }
            }
            let value = Value::Object(out);
            r.projected = serde_json::to_vec(&value).ok().map(Bytes::from);
            r.json = Some(value);
            r
        });
    }

    let key = match spec
        .key_by
        .as_ref()
        .map(|k| (k.get_ref().clone(), k.span()))
    {
        None => None,
        Some((
            KeySpec {
                record_key: true,
                field: None,
            },
            _,
        )) => Some(None),
        Some((
            KeySpec {
                record_key: false,
                field: Some(f),
            },
            _,
        )) => Some(Some(f)),
        Some((_, span)) => {
            return cx.err(
                span,
                "[key_by] takes either record_key = true or field = \"...\"",
            )
        }
    };

    let (window, aggregate) = match (spec.window, spec.aggregate) {
        (None, None) => {
            // Stateless: filtered and projected records, re-keyed if a key is named.
            let sink = &spec.sink;
            let sink_parts = check_partitions(cx, &sink.partitions)?;
            if spec.late.is_some() {
                return cx.err(
                    sink.topic.span(),
                    "[late] needs a [window]: only windows have late records",
                );
            }
            let key_fn: Option<String> = key.flatten();
            return recs
                .flat_map(move |r: JsonRecord| {
                    let key = match &key_fn {
                        None => r.message.key.clone(),
                        Some(f) => match r.json.as_ref().and_then(|v| lookup(v, f)) {
                            Some(v) => Some(key_of(v)),
                            None => return None,
                        },
                    };
                    let value = r.projected.clone().or(r.message.value.clone());
                    Some(OutRecord {
                        key,
                        value,
                        timestamp: r.message.timestamp,
                        headers: r.message.headers,
                    })
                })
                .sink_with_partitions(sink.topic.get_ref().clone(), sink_parts, |r| r)
                .map_err(|e| Error::File(format!("{}: {e}", cx.path)));
        }
        (Some(w), Some(a)) => (w, a),
        (Some(w), None) => return cx.err(w.span(), "a [window] needs an [aggregate]"),
        (None, Some(a)) => return cx.err(a.span(), "an [aggregate] needs a [window]"),
    };

    let Some(key) = key else {
        return cx.err(
            window.span(),
            "a [window] needs a [key_by]: record_key = true or field = \"...\"",
        );
    };
    let ws = window.get_ref();
    let need = |v: Option<i64>, what: &str| -> Result<i64> {
        match v {
            Some(x) if x > 0 => Ok(x),
            _ => cx.err(
                window.span(),
                format!("a {} window needs a positive {what}", ws.kind),
            ),
        }
    };
    let shape = match ws.kind.as_str() {
        "tumbling" => Window::Tumbling {
            size_ms: need(ws.size_ms, "size_ms")?,
        },
        "hopping" => Window::Hopping {
            size_ms: need(ws.size_ms, "size_ms")?,
            advance_ms: need(ws.advance_ms, "advance_ms")?,
        },
        "session" => Window::Session {
            gap_ms: need(ws.gap_ms, "gap_ms")?,
        },
        other => {
            return cx.err(
                window.span(),
                format!("unknown window type {other:?} (tumbling, hopping, session)"),
            )
        }
    };
    if let Err(e) = shape.validate() {
        return cx.err(window.span(), e);
    }
    if ws.allowed_lateness_ms < 0 {
        return cx.err(window.span(), "allowed_lateness_ms cannot be negative");
    }
    let Some(late) = &spec.late else {
        return cx.err(
            window.span(),
            "a [window] needs a [late] topic: late records are written there, never dropped",
        );
    };
    let late_parts = check_partitions(cx, &late.partitions)?;
    let key_field = key.clone();
    let keyed = recs
        .flat_map(move |r: JsonRecord| {
            let k = match &key_field {
                None => r.message.key.clone()?,
                Some(f) => key_of(r.json.as_ref().and_then(|v| lookup(v, f))?),
            };
            Some((k, r))
        })
        .uid("select-key")
        .key_by(|(k, _): &(Bytes, JsonRecord)| k.clone());
    let windowed = keyed
        .window(shape)
        .allowed_lateness(Duration::from_millis(ws.allowed_lateness_ms as u64))
        .late_to(
            late.topic.get_ref().clone(),
            late_parts,
            |_, (_, r): &(Bytes, JsonRecord), _| r.message.clone().into(),
        );

    let a = aggregate.get_ref();
    let field = match (a.op.as_str(), &a.field) {
        ("count", None) => None,
        ("count", Some(_)) => return cx.err(aggregate.span(), "count takes no field"),
        ("sum" | "min" | "max" | "avg", Some(f)) => Some(f.clone()),
        ("sum" | "min" | "max" | "avg", None) => {
            return cx.err(
                aggregate.span(),
                format!(
                    "{} needs the JSON field it aggregates: field = \"...\"",
                    a.op
                ),
            )
        }
        (other, _) => {
            return cx.err(
                aggregate.span(),
                format!("unknown aggregate op {other:?} (count, sum, min, max, avg)"),
            )
        }
    };
    let op = a.op.clone();
    let sink = &spec.sink;
    let sink_parts = check_partitions(cx, &sink.partitions)?;
    let number = move |(_, r): &(Bytes, JsonRecord)| -> f64 {
        field
            .as_deref()
            .and_then(|f| r.json.as_ref().and_then(|v| lookup(v, f)))
            .and_then(Value::as_f64)
            .unwrap_or(0.0)
    };
    let topic = sink.topic.get_ref().clone();
    let job = match op.as_str() {
        "count" => finish(
            windowed.aggregate(Count),
            topic,
            sink_parts,
            "count",
            |n: u64| Value::from(n),
        ),
        "sum" => finish(
            windowed.aggregate(Sum(number)),
            topic,
            sink_parts,
            "sum",
            Value::from,
        ),
        "min" => finish(
            windowed.aggregate(Min(number)),
            topic,
            sink_parts,
            "min",
            Value::from,
        ),
        "max" => finish(
            windowed.aggregate(Max(number)),
            topic,
            sink_parts,
            "max",
            Value::from,
        ),
        _ => finish(
            windowed.aggregate(Avg(number)),
            topic,
            sink_parts,
            "avg",
            Value::from,
        ),
    };
    job.map_err(|e| Error::File(format!("{}: {e}", cx.path)))
}

/// Writes window results as `{"window_start": .., "window_end": .., "<op>": ..}` keyed by the window's key.
fn finish<V: Clone + Send + 'static>(
    s: Stream<WindowResult<Bytes, V>>,
    topic: String,
    partitions: Option<i32>,
    name: &'static str,
    to_json: impl Fn(V) -> Value + Send + Sync + Clone + 'static,
) -> Result<Job> {
    s.sink_with_partitions(topic, partitions, move |r: WindowResult<Bytes, V>| {
        // Written by hand to keep the field order of the documented format.
        let value = format!(
            "{{\"window_start\":{},\"window_end\":{},\"{name}\":{}}}",
            r.window_start,
            r.window_end,
            to_json(r.value)
        );
        OutRecord::new(Some(r.key), Some(Bytes::from(value)), r.window_end - 1)
    })
}
