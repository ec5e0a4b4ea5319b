//! Graph pipeline files: named sources, tables, steps and sinks, each step naming its inputs, over JSON
//! values. Built into the same [`Job`] as the Rust API builds; the format is in the README ("Pipeline
//! files"), and `examples/pipelines/` has examples. Errors name the line of the entry they come from.
//!
//! Steps are defined in order: a step's inputs are sources, tables or steps above it. Elements are [`Rec`]s:
//! a record key, an event time and a JSON value.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use crate::error::{Error, Result};
use crate::file::{
    check_partitions, compare, parse_cmp, toml_to_json, Ctx, Selector, SettingsSpec,
};
use crate::join::JoinKind;
use crate::json_agg::{AggOp, JsonAggs};
use crate::json_rec::{key_of, Rec};
use crate::pipeline::{EndAt, Job, Pipeline, StartAt, Stream, Table};
use crate::record::{Message, OutRecord, WindowResult};
use crate::trigger::Trigger;
use crate::window::Window;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GraphFile {
    name: Spanned<String>,
    #[serde(default)]
    settings: SettingsSpec,
    #[serde(default)]
    sources: Vec<Spanned<SourceDef>>,
    #[serde(default)]
    tables: Vec<Spanned<SourceDef>>,
    #[serde(default)]
    steps: Vec<Spanned<StepDef>>,
    #[serde(default)]
    sinks: Vec<Spanned<SinkDef>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceDef {
    /// What steps call it (default: the topic).
    name: Option<String>,
    topic: String,
    partitions: Option<Spanned<i32>>,
    event_time: Option<Spanned<Selector>>,
    /// "earliest" (default), "latest", { offset = n } or { time_ms = n }.
    start: Option<Spanned<Position>>,
    /// "end", { offset = n } or { time_ms = n }: a bounded source (a batch job when all are bounded).
    end: Option<Spanned<Position>>,
    /// A remote cluster to read the topic from (Kafka's name for the setting; None: this broker).
    #[serde(rename = "bootstrap.servers", alias = "bootstrap_servers")]
    bootstrap_servers: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Position {
    Named(String),
    Offset { offset: i64 },
    Time { time_ms: i64 },
}

/// `"record_key"`, or `{ field = "...", default = ... }` (a JSON field of the value; `default` when it is
/// missing or null).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum KeySel {
    Part(String),
    Field {
        field: String,
        default: Option<toml::Value>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowDef {
    #[serde(rename = "type")]
    kind: String,
    size_ms: Option<i64>,
    advance_ms: Option<i64>,
    gap_ms: Option<i64>,
    step_ms: Option<i64>,
    max_size_ms: Option<i64>,
    difference_ms: Option<i64>,
    /// Global windows: `{ count = n }`, `{ event_time_ms = n }` or `{ processing_time_ms = n }`.
    trigger: Option<TriggerDef>,
    #[serde(default)]
    allowed_lateness_ms: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerDef {
    count: Option<u64>,
    event_time_ms: Option<u64>,
    processing_time_ms: Option<u64>,
    #[serde(default)]
    accumulate: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AggDef {
    op: String,
    field: Option<String>,
    #[serde(rename = "as")]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicDef {
    topic: String,
    partitions: Option<Spanned<i32>>,
}

/// Every step's fields; which apply depends on `type` (checked when the step is built).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepDef {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    input: Option<String>,
    inputs: Option<Vec<String>>,
    // filter
    field: Option<String>,
    op: Option<String>,
    value: Option<toml::Value>,
    // project / join / select
    fields: Option<toml::Value>,
    // joins
    table: Option<String>,
    left: Option<String>,
    right: Option<String>,
    on: Option<KeySel>,
    left_on: Option<KeySel>,
    right_on: Option<KeySel>,
    join: Option<String>,
    lower_ms: Option<i64>,
    upper_ms: Option<i64>,
    // windows
    key: Option<KeySel>,
    key_as: Option<String>,
    window: Option<WindowDef>,
    aggregates: Option<Vec<AggDef>>,
    late: Option<TopicDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SinkDef {
    input: String,
    topic: String,
    partitions: Option<Spanned<i32>>,
    /// The record key written (default: the element's key).
    key: Option<KeySel>,
    /// A remote cluster to write the topic to (None: this broker).
    #[serde(rename = "bootstrap.servers", alias = "bootstrap_servers")]
    bootstrap_servers: Option<Spanned<String>>,
}

enum Handle {
    Stream(Stream<Rec>),
    Table(Table<Bytes, Rec>),
}

/// How a step takes a key from an element.
#[derive(Clone)]
enum KeyFn {
    RecordKey,
    Field(String, Option<Value>),
}

impl KeyFn {
    fn of(&self, r: &Rec) -> Option<Bytes> {
        match self {
            KeyFn::RecordKey => r.key.clone(),
            KeyFn::Field(f, default) => match r.get(f).filter(|v| !v.is_null()) {
                Some(v) => Some(key_of(v)),
                None => default.as_ref().map(key_of),
            },
        }
    }

    /// The key as a step keys by it: a record without one gets the empty key (kept, so that outer joins
    /// still emit it).
    fn keyed(&self, r: &Rec) -> Bytes {
        self.of(r).unwrap_or_default()
    }
}

fn key_fn(cx: &Ctx, at: std::ops::Range<usize>, k: &KeySel) -> Result<KeyFn> {
    match k {
        KeySel::Part(p) if p == "record_key" => Ok(KeyFn::RecordKey),
        KeySel::Part(p) => cx.err(
            at,
            format!("a key is \"record_key\" or {{ field = \"...\" }}, not {p:?}"),
        ),
        KeySel::Field { field, default } => Ok(KeyFn::Field(
            field.clone(),
            default.as_ref().map(toml_to_json),
        )),
    }
}

/// Whether a TOML document is a graph pipeline file (it has sources, tables or steps).
pub(crate) fn is_graph(doc: &toml::Table) -> bool {
    ["sources", "tables", "steps", "sinks"]
        .iter()
        .any(|k| doc.contains_key(*k))
}

pub(crate) fn build(spec: GraphFile, cx: &Ctx) -> Result<Job> {
    let name = crate::file::check_name(cx, &spec.name)?;
    let p = crate::file::apply_settings(cx, Pipeline::new(name), &spec.settings)?;
    let mut handles: HashMap<String, (Handle, std::ops::Range<usize>)> = HashMap::new();
    if spec.sources.is_empty() {
        return cx.err(
            spec.name.span(),
            "a pipeline needs at least one [[sources]] entry",
        );
    }
    for (table, defs) in [(false, &spec.sources), (true, &spec.tables)] {
        for def in defs {
            let at = def.span();
            let d = def.get_ref();
            let name = d.name.clone().unwrap_or_else(|| d.topic.clone());
            if handles.contains_key(&name) {
                return cx.err(at, format!("{name:?} is defined twice"));
            }
            let parts = check_partitions(cx, &d.partitions)?;
            let field = match d
                .event_time
                .as_ref()
                .map(|s| (s.get_ref().clone(), s.span()))
            {
                None => None,
                Some((Selector::Part(p), _)) if p == "timestamp" => None,
                Some((Selector::Part(other), span)) => {
                    return cx.err(
                        span,
                        format!(
                            "event_time is \"timestamp\" or {{ field = \"...\" }}, not {other:?}"
                        ),
                    )
                }
                Some((Selector::Field { field }, _)) => Some(field),
            };
            let event_time = move |m: &Message| -> Option<i64> {
                let f = field.as_deref()?;
                let v: Value = serde_json::from_slice(m.value.as_deref()?).ok()?;
                crate::json_rec::lookup(&v, f).and_then(Value::as_i64)
            };
            let start = match d.start.as_ref().map(|s| (s.get_ref().clone(), s.span())) {
                None => StartAt::Earliest,
                Some((Position::Named(n), _)) if n == "earliest" => StartAt::Earliest,
                Some((Position::Named(n), _)) if n == "latest" => StartAt::Latest,
                Some((Position::Offset { offset }, _)) => StartAt::Offset(offset),
                Some((Position::Time { time_ms }, _)) => StartAt::Time(time_ms),
                Some((_, span)) => {
                    return cx.err(
                        span,
                        "start is \"earliest\", \"latest\", { offset = n } or { time_ms = n }",
                    )
                }
            };
            let end = match d.end.as_ref().map(|s| (s.get_ref().clone(), s.span())) {
                None => EndAt::Unbounded,
                Some((Position::Named(n), _)) if n == "end" => EndAt::End,
                Some((Position::Offset { offset }, _)) => EndAt::Offset(offset),
                Some((Position::Time { time_ms }, _)) => EndAt::Time(time_ms),
                Some((_, span)) => {
                    return cx.err(span, "end is \"end\", { offset = n } or { time_ms = n }")
                }
            };
            let cluster = bootstrap(cx, &d.bootstrap_servers)?;
            let h = if table {
                let mut t = p.table_with_partitions(d.topic.clone(), parts);
                if let Some(c) = &cluster {
                    t = t.from_cluster(c.clone());
                }
                let t = t
                    .event_time(event_time)
                    .start_at(start)
                    .bounded(end)
                    .map_values(|m: Message| {
                        let ts = m.timestamp;
                        Rec::from_message(m, ts)
                    });
                Handle::Table(t)
            } else {
                let mut s = p.source_with_partitions(d.topic.clone(), parts);
                if let Some(c) = cluster {
                    s = s.from_cluster(c);
                }
                let s = s.event_time(event_time).start_at(start).bounded(end);
                Handle::Stream(s.process(|| ToRec).uid(&format!("{name}.parse")))
            };
            handles.insert(name, (h, at));
        }
    }
    for step in &spec.steps {
        let at = step.span();
        let s = step.get_ref();
        if handles.contains_key(&s.name) {
            return cx.err(at, format!("{:?} is defined twice", s.name));
        }
        let h = build_step(cx, at.clone(), s, &handles)?;
        handles.insert(s.name.clone(), (h, at));
    }
    if spec.sinks.is_empty() {
        return cx.err(
            spec.name.span(),
            "a pipeline needs at least one [[sinks]] entry",
        );
    }
    for sink in &spec.sinks {
        let at = sink.span();
        let s = sink.get_ref();
        let stream = stream_input(cx, at.clone(), &handles, &s.input)?;
        let parts = check_partitions(cx, &s.partitions)?;
        let key = match &s.key {
            None => None,
            Some(k) => Some(key_fn(cx, at.clone(), k)?),
        };
        let cluster = bootstrap(cx, &s.bootstrap_servers)?;
        stream.to_cluster(cluster, s.topic.clone(), parts, move |r: Rec| {
            let k = match &key {
                None => r.key.clone(),
                Some(k) => k.of(&r),
            };
            r.into_record(k)
        });
    }
    p.build()
        .map_err(|e| Error::File(format!("{}: {e}", cx.path)))
}

/// A source's or sink's `bootstrap.servers`: a non-empty list of host:port addresses.
fn bootstrap(cx: &Ctx<'_>, v: &Option<Spanned<String>>) -> Result<Option<String>> {
    let Some(v) = v else { return Ok(None) };
    let list: Vec<&str> = v
        .get_ref()
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    if list.is_empty()
        || list.iter().any(|a| {
            a.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        })
    {
        return cx.err(
            v.span(),
            "bootstrap.servers is a comma-separated list of host:port addresses",
        );
    }
    Ok(Some(list.join(",")))
}

/// Turns source records into [`Rec`]s, with their event time.
struct ToRec;

impl crate::operator::Operator<Message> for ToRec {
    type Out = Rec;
    fn process(&mut self, ts: i64, m: Message, out: &mut dyn crate::operator::Collector<Rec>) {
        out.emit(ts, Rec::from_message(m, ts));
    }
}

fn stream_input(
    cx: &Ctx,
    at: std::ops::Range<usize>,
    handles: &HashMap<String, (Handle, std::ops::Range<usize>)>,
    name: &str,
) -> Result<Stream<Rec>> {
    match handles.get(name) {
        Some((Handle::Stream(s), _)) => Ok(s.clone()),
        Some((Handle::Table(t), _)) => Ok(t
            .clone()
            .to_stream()
            .flat_map(|(_, v): (Bytes, Option<Rec>)| v)),
        None => cx.err(
            at,
            format!("unknown input {name:?} (inputs are sources, tables or steps defined above)"),
        ),
    }
}

fn need<T: Clone>(
    cx: &Ctx,
    at: &std::ops::Range<usize>,
    v: &Option<T>,
    what: &str,
    kind: &str,
) -> Result<T> {
    match v {
        Some(x) => Ok(x.clone()),
        None => cx.err(at.clone(), format!("a {kind} step needs {what}")),
    }
}

fn join_kind(
    cx: &Ctx,
    at: &std::ops::Range<usize>,
    s: &StepDef,
    allowed: &[JoinKind],
) -> Result<JoinKind> {
    let k = match &s.join {
        None => JoinKind::Inner,
        Some(j) => match JoinKind::parse(j) {
            Some(k) => k,
            None => {
                return cx.err(
                    at.clone(),
                    format!("unknown join {j:?} (inner, left, right, full)"),
                )
            }
        },
    };
    if !allowed.contains(&k) {
        return cx.err(
            at.clone(),
            format!(
                "a {} step takes join = {}",
                s.kind,
                allowed
                    .iter()
                    .map(|k| format!("{k:?}").to_lowercase())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    Ok(k)
}

fn string_list(
    cx: &Ctx,
    at: &std::ops::Range<usize>,
    v: &toml::Value,
    what: &str,
) -> Result<Vec<String>> {
    match v.as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|x| match x.as_str() {
                Some(s) => Ok(s.to_string()),
                None => cx.err(at.clone(), format!("{what} lists field names (strings)")),
            })
            .collect(),
        _ => cx.err(
            at.clone(),
            format!("{what} is a non-empty list of field names"),
        ),
    }
}

/// One output field of a `select` step.
#[derive(Clone)]
enum Expr {
    Path(String),
    Sub(String, String),
    Literal(Value),
}

impl Expr {
    fn eval(&self, v: &Value) -> Value {
        let get = |p: &str| {
            crate::json_rec::lookup(v, p)
                .cloned()
                .unwrap_or(Value::Null)
        };
        match self {
            Expr::Path(p) => get(p),
            Expr::Literal(x) => x.clone(),
            Expr::Sub(a, b) => match (get(a).as_i64(), get(b).as_i64()) {
                (Some(x), Some(y)) => Value::from(x.saturating_sub(y)),
                _ => match (get(a).as_f64(), get(b).as_f64()) {
                    (Some(x), Some(y)) => {
                        serde_json::Number::from_f64(x - y).map_or(Value::Null, Value::Number)
                    }
                    _ => Value::Null,
                },
            },
        }
    }
}

fn select_fields(
    cx: &Ctx,
    at: &std::ops::Range<usize>,
    v: &toml::Value,
) -> Result<Vec<(String, Expr)>> {
    let Some(t) = v.as_table() else {
        return cx.err(at.clone(), "a select step's fields is a table: out_name = \"path\" or { sub = [a, b] } or { value = .. }");
    };
    let mut out = Vec::new();
    for (name, e) in t {
        let expr = match e {
            toml::Value::String(p) => Expr::Path(p.clone()),
            toml::Value::Table(t) if t.len() == 1 && t.contains_key("value") => {
                Expr::Literal(toml_to_json(&t["value"]))
            }
            toml::Value::Table(t) if t.len() == 1 && t.contains_key("sub") => {
                match t["sub"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>())
                {
                    Some(a) if a.len() == 2 => Expr::Sub(a[0].to_string(), a[1].to_string()),
                    _ => return cx.err(at.clone(), format!("field {name}: sub takes two paths")),
                }
            }
            _ => {
                return cx.err(
                    at.clone(),
                    format!("field {name}: a path string, {{ sub = [a, b] }} or {{ value = .. }}"),
                )
            }
        };
        out.push((name.clone(), expr));
    }
    if out.is_empty() {
        return cx.err(at.clone(), "a select step lists at least one field");
    }
    Ok(out)
}

fn window_shape(cx: &Ctx, at: &std::ops::Range<usize>, w: &WindowDef) -> Result<Window> {
    let pos = |v: Option<i64>, what: &str| -> Result<i64> {
        match v {
            Some(x) if x > 0 => Ok(x),
            _ => cx.err(
                at.clone(),
                format!("a {} window needs a positive {what}", w.kind),
            ),
        }
    };
    let d = |ms: i64| Duration::from_millis(ms as u64);
    let shape = match w.kind.as_str() {
        "tumbling" => Window::tumbling(d(pos(w.size_ms, "size_ms")?)),
        "hopping" => Window::hopping(d(pos(w.size_ms, "size_ms")?), d(pos(w.advance_ms, "advance_ms")?)),
        "session" => Window::session(d(pos(w.gap_ms, "gap_ms")?)),
        "cumulative" => Window::cumulative(d(pos(w.step_ms, "step_ms")?), d(pos(w.max_size_ms, "max_size_ms")?)),
        "sliding" => Window::sliding(d(pos(w.difference_ms, "difference_ms")?)),
        "global" => {
            let Some(t) = &w.trigger else {
                return cx.err(at.clone(), "a global window needs a trigger: { count = n }, { event_time_ms = n } or { processing_time_ms = n }");
            };
            let trigger = match (t.count, t.event_time_ms, t.processing_time_ms) {
                (Some(n), None, None) => Trigger::count(n),
                (None, Some(ms), None) => Trigger::event_time(Duration::from_millis(ms)),
                (None, None, Some(ms)) => Trigger::processing_time(Duration::from_millis(ms)),
                _ => return cx.err(at.clone(), "a trigger is one of count, event_time_ms, processing_time_ms"),
            };
            Window::global(if t.accumulate { trigger.accumulating() } else { trigger })
        }
        other => {
            return cx.err(
                at.clone(),
                format!("unknown window type {other:?} (tumbling, hopping, session, cumulative, sliding, global)"),
            )
        }
    };
    if let Err(e) = shape.validate() {
        return cx.err(at.clone(), e);
    }
    if w.allowed_lateness_ms < 0 {
        return cx.err(at.clone(), "allowed_lateness_ms cannot be negative");
    }
    Ok(shape)
}

fn build_step(
    cx: &Ctx,
    at: std::ops::Range<usize>,
    s: &StepDef,
    handles: &HashMap<String, (Handle, std::ops::Range<usize>)>,
) -> Result<Handle> {
    let input = |name: &Option<String>, what: &str| -> Result<Stream<Rec>> {
        let n = need(cx, &at, name, what, &s.kind)?;
        stream_input(cx, at.clone(), handles, &n)
    };
    let uid = |suffix: &str| format!("{}{suffix}", s.name);
    Ok(match s.kind.as_str() {
        "filter" => {
            let field = need(cx, &at, &s.field, "a field", "filter")?;
            let op = need(cx, &at, &s.op, "an op", "filter")?;
            let Some(cmp) = parse_cmp(&op) else {
                return cx.err(at, format!("unknown filter op {op:?} (eq, ne, lt, le, gt, ge, exists, missing)"));
            };
            let want = match (&s.value, cmp.needs_value()) {
                (None, false) => Value::Null,
                (None, true) => return cx.err(at, "this filter needs a value"),
                (Some(v), _) => toml_to_json(v),
            };
            let st = input(&s.input, "an input")?;
            Handle::Stream(st.filter(move |r: &Rec| compare(cmp, r.get(&field), &want)).uid(&s.name))
        }
        "project" => {
            let fields = string_list(cx, &at, &need(cx, &at, &s.fields, "fields", "project")?, "fields")?;
            let st = input(&s.input, "an input")?;
            Handle::Stream(
                st.map(move |mut r: Rec| {
                    let mut out = serde_json::Map::new();
                    for f in &fields {
                        if let Some(x) = r.get(f) {
                            out.insert(f.clone(), x.clone());
                        }
                    }
                    r.value = Value::Object(out);
                    r.raw = None;
                    r
                })
                .uid(&s.name),
            )
        }
        "select" => {
            let fields = select_fields(cx, &at, &need(cx, &at, &s.fields, "fields", "select")?)?;
            let st = input(&s.input, "an input")?;
            Handle::Stream(
                st.map(move |mut r: Rec| {
                    let mut out = serde_json::Map::new();
                    for (name, e) in &fields {
                        out.insert(name.clone(), e.eval(&r.value));
                    }
                    r.value = Value::Object(out);
                    r.raw = None;
                    r
                })
                .uid(&s.name),
            )
        }
        "key_by" => {
            let k = key_fn(cx, at.clone(), &need(cx, &at, &s.key, "a key", "key_by")?)?;
            let st = input(&s.input, "an input")?;
            Handle::Stream(
                st.map(move |mut r: Rec| {
                    r.key = k.of(&r);
                    r
                })
                .uid(&s.name),
            )
        }
        "union" => {
            let names = need(cx, &at, &s.inputs, "inputs = [..] (two or more)", "union")?;
            if names.len() < 2 {
                return cx.err(at, "a union step needs two or more inputs");
            }
            let mut streams = Vec::new();
            for n in &names {
                streams.push(stream_input(cx, at.clone(), handles, n)?);
            }
            let first = streams.remove(0);
            Handle::Stream(first.union_all(streams).uid(&s.name))
        }
        "join" => {
            // Stream-table, as of each element's time.
            let kind = join_kind(cx, &at, s, &[JoinKind::Inner, JoinKind::Left])?;
            let tname = need(cx, &at, &s.table, "a table", "join")?;
            let Some((Handle::Table(table), _)) = handles.get(&tname) else {
                return cx.err(at, format!("{tname:?} is not a table (define it under [[tables]])"));
            };
            let on = key_fn(cx, at.clone(), &need(cx, &at, &s.on, "on = { field = \"...\" }", "join")?)?;
            let fields = match &s.fields {
                Some(v) => Some(string_list(cx, &at, v, "fields")?),
                None => None,
            };
            let st = input(&s.input, "an input")?;
            let keyed = st.key_by(move |r: &Rec| on.keyed(r)).uid(&uid(".key"));
            Handle::Stream(
                keyed
                    .join_table(table, kind, move |_, mut r: Rec, row: Option<&Rec>| {
                        merge_row(&mut r, row, fields.as_deref());
                        r
                    })
                    .uid(&s.name),
            )
        }
        "interval_join" | "window_join" => {
            let kinds = [JoinKind::Inner, JoinKind::Left, JoinKind::Right, JoinKind::Full];
            let kind = join_kind(cx, &at, s, &kinds)?;
            let left = input(&s.left, "a left input")?;
            let right = input(&s.right, "a right input")?;
            let lk = match (&s.left_on, &s.on) {
                (Some(k), _) | (None, Some(k)) => key_fn(cx, at.clone(), k)?,
                _ => return cx.err(at, "a join needs on (or left_on and right_on)"),
            };
            let rk = match (&s.right_on, &s.on) {
                (Some(k), _) | (None, Some(k)) => key_fn(cx, at.clone(), k)?,
                _ => return cx.err(at, "a join needs on (or left_on and right_on)"),
            };
            let l = left.key_by(move |r: &Rec| lk.keyed(r)).uid(&uid(".left_key"));
            let r = right.key_by(move |r: &Rec| rk.keyed(r)).uid(&uid(".right_key"));
            let side = |x: Option<&Rec>| x.map_or(Value::Null, |x| x.value.clone());
            let ts = |a: Option<&Rec>, b: Option<&Rec>| {
                a.map_or(i64::MIN, |a| a.timestamp).max(b.map_or(i64::MIN, |b| b.timestamp))
            };
            if s.kind == "interval_join" {
                let lower = need(cx, &at, &s.lower_ms, "lower_ms", "interval_join")?;
                let upper = need(cx, &at, &s.upper_ms, "upper_ms", "interval_join")?;
                if lower > upper {
                    return cx.err(at, "an interval join needs lower_ms <= upper_ms");
                }
                Handle::Stream(
                    l.interval_join_ms(&r, kind, lower, upper, move |k, a, b| {
                        Rec::derived(Some(k.clone()), ts(a, b), serde_json::json!({"left": side(a), "right": side(b)}))
                    })
                    .uid(&s.name),
                )
            } else {
                let Some(w) = &s.window else {
                    return cx.err(at, "a window_join step needs a window");
                };
                let shape = window_shape(cx, &at, w)?;
                if !matches!(shape, Window::Tumbling { .. } | Window::Hopping { .. }) {
                    return cx.err(at, "a window join takes tumbling or hopping windows");
                }
                Handle::Stream(
                    l.window_join(&r, kind, shape, move |k, a, b, start, end| {
                        Rec::derived(
                            Some(k.clone()),
                            end - 1,
                            serde_json::json!({"left": side(a), "right": side(b), "window_start": start, "window_end": end}),
                        )
                    })
                    .uid(&s.name),
                )
            }
        }
        "window" => {
            let k = key_fn(cx, at.clone(), &need(cx, &at, &s.key, "a key", "window")?)?;
            let Some(w) = &s.window else {
                return cx.err(at, "a window step needs a window = { type = ... }");
            };
            let shape = window_shape(cx, &at, w)?;
            let (ops, names) = aggregates(cx, &at, s, "window")?;
            let key_as = s.key_as.clone().or_else(|| match &k {
                KeyFn::Field(f, _) => Some(f.clone()),
                KeyFn::RecordKey => None,
            });
            let Some(late) = &s.late else {
                return cx.err(at, "a window step needs late = { topic = \"...\" }: late records are written there, never dropped");
            };
            let late_parts = check_partitions(cx, &late.partitions)?;
            let st = input(&s.input, "an input")?;
            let lateness = Duration::from_millis(w.allowed_lateness_ms as u64);
            Handle::Stream(
                st.key_by(move |r: &Rec| k.keyed(r))
                    .uid(&uid(".key"))
                    .window(shape)
                    .allowed_lateness(lateness)
                    .late_to(late.topic.clone(), late_parts, |_, r: &Rec, _| r.clone().into())
                    .aggregate(JsonAggs { aggs: ops })
                    .uid(&s.name)
                    .map(move |w: WindowResult<Bytes, Vec<Value>>| {
                        let mut out = serde_json::Map::new();
                        if let Some(k) = &key_as {
                            out.insert(k.clone(), Value::from(String::from_utf8_lossy(&w.key).to_string()));
                        }
                        out.insert("window_start".into(), Value::from(w.window_start));
                        out.insert("window_end".into(), Value::from(w.window_end));
                        for (n, v) in names.iter().zip(w.value) {
                            out.insert(n.clone(), v);
                        }
                        Rec::derived(Some(w.key), w.window_end.saturating_sub(1), Value::Object(out))
                    })
                    .uid(&uid(".result")),
            )
        }
        "aggregate" => {
            let k = key_fn(cx, at.clone(), &need(cx, &at, &s.key, "a key", "aggregate")?)?;
            let (ops, names) = aggregates(cx, &at, s, "aggregate")?;
            let key_as = s.key_as.clone().or_else(|| match &k {
                KeyFn::Field(f, _) => Some(f.clone()),
                KeyFn::RecordKey => None,
            });
            let st = input(&s.input, "an input")?;
            Handle::Stream(
                st.key_by(move |r: &Rec| k.keyed(r))
                    .uid(&uid(".key"))
                    .aggregate(JsonAggs { aggs: ops })
                    .uid(&s.name)
                    .to_stream()
                    .process(move || RunningResult {
                        key_as: key_as.clone(),
                        names: names.clone(),
                    })
                    .uid(&uid(".result")),
            )
        }
        other => {
            return cx.err(
                at,
                format!(
                    "unknown step type {other:?} (filter, project, select, key_by, union, join, interval_join, \
                     window_join, window, aggregate)"
                ),
            )
        }
    })
}

/// Aggregate operations with the field each reads.
type AggList = Vec<(AggOp, Option<String>)>;

/// The `aggregates = [...]` of a window or aggregate step: the operations and the names of their results.
fn aggregates(
    cx: &Ctx,
    at: &std::ops::Range<usize>,
    s: &StepDef,
    kind: &str,
) -> Result<(AggList, Vec<String>)> {
    let at = at.clone();
    let Some(aggs) = s.aggregates.as_ref().filter(|a| !a.is_empty()) else {
        return cx.err(
            at,
            format!("a {kind} step needs aggregates = [{{ op = ..., field = ..., as = ... }}]"),
        );
    };
    let mut ops = Vec::new();
    let mut names = Vec::new();
    for a in aggs {
        let Some(op) = AggOp::parse(&a.op) else {
            return cx.err(
                at,
                format!(
                    "unknown aggregate op {:?} (count, sum, min, max, avg, count_distinct)",
                    a.op
                ),
            );
        };
        if op.needs_field() != a.field.is_some() {
            return cx.err(
                at,
                if op.needs_field() {
                    format!("{} needs the field it aggregates", a.op)
                } else {
                    "count takes no field".to_string()
                },
            );
        }
        names.push(a.name.clone().unwrap_or_else(|| match &a.field {
            Some(f) => format!("{}_{f}", a.op),
            None => a.op.clone(),
        }));
        ops.push((op, a.field.clone()));
    }
    Ok((ops, names))
}

/// Turns a running aggregate's change (key, results) into a record: `{key_as: key, name: result, ...}`
/// keyed by the key, at the event time of the element that changed it.
struct RunningResult {
    key_as: Option<String>,
    names: Vec<String>,
}

impl crate::operator::Operator<(Bytes, Option<Vec<Value>>)> for RunningResult {
    type Out = Rec;
    fn process(
        &mut self,
        timestamp: i64,
        (key, values): (Bytes, Option<Vec<Value>>),
        out: &mut dyn crate::operator::Collector<Rec>,
    ) {
        let mut obj = serde_json::Map::new();
        if let Some(k) = &self.key_as {
            obj.insert(
                k.clone(),
                Value::from(String::from_utf8_lossy(&key).to_string()),
            );
        }
        for (n, v) in self.names.iter().zip(values.unwrap_or_default()) {
            obj.insert(n.clone(), v);
        }
        out.emit(
            timestamp,
            Rec::derived(Some(key), timestamp, Value::Object(obj)),
        );
    }
}

/// Adds a table row's fields to a stream element (`fields`: those named, null when there is no row; else
/// every field of the row the element lacks).
fn merge_row(r: &mut Rec, row: Option<&Rec>, fields: Option<&[String]>) {
    if !r.value.is_object() {
        r.value = Value::Object(serde_json::Map::new());
    }
    let Value::Object(obj) = &mut r.value else {
        return;
    };
    match fields {
        Some(fields) => {
            for f in fields {
                let v = row
                    .and_then(|row| row.get(f))
                    .cloned()
                    .unwrap_or(Value::Null);
                obj.insert(f.clone(), v);
            }
        }
        None => {
            if let Some(Value::Object(row)) = row.map(|r| &r.value) {
                for (k, v) in row {
                    obj.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
    }
    r.raw = None;
}

impl From<&Rec> for OutRecord {
    fn from(r: &Rec) -> OutRecord {
        r.clone().into()
    }
}
