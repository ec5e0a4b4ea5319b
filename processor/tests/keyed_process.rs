//! Keyed process functions (per-key state, timers and state TTL) run through the public pipeline API with the
//! test driver: Pipeline::new(..).source(..).key_by(..).process(|| KeyedProcess::new(..)).map(..).sink(..).
//!
//! The driver tells operators the processing time only from `advance_time`, so tests that need it known before
//! the first element call `advance_time(0)` first.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use millrace_processor::{
    Job, KeyedContext, KeyedProcess, KeyedProcessFunction, Message, OutRecord, Pipeline,
    TestDriver, TimeDomain, TtlTime, UpdateType,
};
use proptest::prelude::*;

fn msg(key: &str, value: &str, ts: i64) -> Message {
    Message::new(Some(key.as_bytes()), Some(value.as_bytes()), ts)
}

fn key_of(m: &Message) -> Bytes {
    m.key.clone().unwrap_or_default()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn values(out: &[OutRecord]) -> Vec<String> {
    out.iter()
        .map(|r| text(r.value.as_deref().unwrap_or_default()))
        .collect()
}

/// A pipeline running `make()` keyed by the record key; its outputs are strings, written as record values.
fn job<F>(make: impl Fn() -> KeyedProcess<Bytes, Message, F> + Send + Sync + 'static) -> Job
where
    F: KeyedProcessFunction<Bytes, Message, Out = String> + 'static,
{
    // One key group: every key shares one operator instance, so timers of different keys fire in (time,
    // key) order and cleanup batches span keys. With many key groups each group's instance keeps that order
    // only among its own keys.
    Pipeline::new("t")
        .max_parallelism(1)
        .source("in")
        .key_by(key_of)
        .process(make)
        .uid("kp")
        .map(|s: String| OutRecord::new(None, Some(s.into()), 0))
        .sink("out", |r| r)
        .expect("valid pipeline")
}

type Ctx<'a, S> = KeyedContext<'a, Bytes, S, String>;

/// Counts each key's records and emits "key:count" 10 s (event time) after the key's first record, then
/// starts over.
struct CountLater;

impl KeyedProcessFunction<Bytes, Message> for CountLater {
    type State = u64;
    type Out = String;

    fn process_element(&mut self, _key: &Bytes, ts: i64, _m: Message, ctx: &mut Ctx<'_, u64>) {
        let n = ctx.get().unwrap_or(0);
        if n == 0 {
            ctx.register_event_time_timer(ts + 10_000);
        }
        ctx.set(n + 1);
    }

    fn on_timer(&mut self, key: &Bytes, time: i64, domain: TimeDomain, ctx: &mut Ctx<'_, u64>) {
        assert_eq!(domain, TimeDomain::EventTime);
        let n = ctx.get().unwrap_or(0);
        ctx.clear();
        ctx.emit(time, format!("{}:{n}@{time}", text(key)));
    }
}

#[test]
fn an_event_time_timer_per_key_emits_its_count() {
    let job = job(|| KeyedProcess::new(CountLater));
    let mut d = TestDriver::new(&job, 2);
    d.send(0, msg("a", "", 1_000));
    d.send(1, msg("b", "", 3_000));
    d.send(1, msg("a", "", 4_000));
    d.send(0, msg("a", "", 10_999));
    d.send(1, msg("b", "", 10_999));
    assert!(d.outputs().is_empty(), "a's timer is at 11 000");
    d.send(0, msg("c", "", 11_000));
    assert!(
        d.outputs().is_empty(),
        "partition 1 holds the watermark at 10 999"
    );
    d.send(1, msg("c", "", 13_000));
    assert_eq!(
        values(&d.outputs()),
        ["a:3@11000"],
        "the watermark is 11 000"
    );
    // a starts over: its next record sets a new timer.
    d.send(0, msg("a", "", 14_000));
    assert_eq!(values(&d.outputs()), ["b:2@13000"]);
    d.send(0, msg("z", "", 30_000));
    d.send(1, msg("z", "", 30_000));
    assert_eq!(values(&d.outputs()), ["c:2@21000", "a:1@24000"]);
}

/// Emits "key idle" once a key has had no record for 5 s of processing time: each record moves the key's one
/// processing-time timer (delete the old, register the new).
struct Inactivity;

impl KeyedProcessFunction<Bytes, Message> for Inactivity {
    /// The time of the key's pending timer.
    type State = i64;
    type Out = String;

    fn process_element(&mut self, _key: &Bytes, _ts: i64, _m: Message, ctx: &mut Ctx<'_, i64>) {
        if let Some(old) = ctx.get() {
            ctx.delete_processing_time_timer(old);
        }
        let at = ctx.current_processing_time() + 5_000;
        ctx.register_processing_time_timer(at);
        ctx.set(at);
    }

    fn on_timer(&mut self, key: &Bytes, time: i64, domain: TimeDomain, ctx: &mut Ctx<'_, i64>) {
        assert_eq!(domain, TimeDomain::ProcessingTime);
        assert!(ctx.current_processing_time() >= time);
        ctx.clear();
        ctx.emit(time, format!("{} idle@{time}", text(key)));
    }
}

#[test]
fn processing_time_timers_follow_advance_time() {
    let job = job(|| KeyedProcess::new(Inactivity));
    let mut d = TestDriver::new(&job, 1);
    d.advance_time(0);
    d.send(0, msg("a", "", 1));
    d.advance_time(1_000);
    d.send(0, msg("b", "", 2));
    d.advance_time(3_000);
    d.send(0, msg("a", "", 3)); // a's timer moves from 5 000 to 9 000
    d.advance_time(1_000);
    assert!(
        d.outputs().is_empty(),
        "now 5 000: a's first timer was deleted"
    );
    d.advance_time(999);
    assert!(d.outputs().is_empty());
    d.advance_time(1);
    assert_eq!(values(&d.outputs()), ["b idle@6000"]);
    d.advance_time(10_000);
    assert_eq!(values(&d.outputs()), ["a idle@9000"]);
    d.advance_time(10_000);
    assert!(d.outputs().is_empty(), "each timer fired once");
}

/// Values are commands: "e<t>"/"p<t>" register an event-/processing-time timer at t, "-e<t>"/"-p<t>" delete
/// one, "set<v>" writes the key's state, "get" emits "key=<state>". A timer emits "key@<t><e|p>=<state>".
struct Commands;

impl KeyedProcessFunction<Bytes, Message> for Commands {
    type State = String;
    type Out = String;

    fn process_element(&mut self, key: &Bytes, ts: i64, m: Message, ctx: &mut Ctx<'_, String>) {
        let cmd = text(m.value.as_deref().unwrap_or_default());
        let num = |s: &str| s.parse::<i64>().unwrap_or(0);
        if let Some(t) = cmd.strip_prefix("-e") {
            ctx.delete_event_time_timer(num(t));
        } else if let Some(t) = cmd.strip_prefix("-p") {
            ctx.delete_processing_time_timer(num(t));
        } else if let Some(t) = cmd.strip_prefix('e') {
            ctx.register_event_time_timer(num(t));
        } else if let Some(t) = cmd.strip_prefix('p') {
            ctx.register_processing_time_timer(num(t));
        } else if let Some(v) = cmd.strip_prefix("set") {
            ctx.set(v.to_string());
        } else if cmd == "get" {
            let v = ctx.get().unwrap_or_else(|| "none".into());
            ctx.emit(ts, format!("{}={v}", text(key)));
        }
    }

    fn on_timer(&mut self, key: &Bytes, time: i64, domain: TimeDomain, ctx: &mut Ctx<'_, String>) {
        let d = match domain {
            TimeDomain::EventTime => 'e',
            TimeDomain::ProcessingTime => 'p',
        };
        let v = ctx.get().unwrap_or_else(|| "none".into());
        ctx.emit(time, format!("{}@{time}{d}={v}", text(key)));
    }
}

fn commands() -> Job {
    job(|| KeyedProcess::new(Commands))
}

#[test]
fn timers_are_deduplicated_and_deletable() {
    let mut d = TestDriver::new(&commands(), 1);
    d.advance_time(0);
    for cmd in [
        "e100", "e100", "e200", "e300", "-e200", "-e999", "p50", "p50", "p60", "-p60",
    ] {
        d.send(0, msg("a", cmd, 0));
    }
    d.send(0, msg("b", "e100", 0));
    d.send(0, msg("b", "p50", 0));
    d.send(0, msg("z", "", 1_000));
    assert_eq!(
        values(&d.outputs()),
        ["a@100e=none", "b@100e=none", "a@300e=none"]
    );
    d.advance_time(100);
    assert_eq!(values(&d.outputs()), ["a@50p=none", "b@50p=none"]);
    d.send(0, msg("z", "", 100_000));
    d.advance_time(100_000);
    assert!(d.outputs().is_empty());
}

#[test]
fn pending_timers_and_state_survive_a_checkpoint_and_restore() {
    let job = commands();
    let mut d = TestDriver::new(&job, 2);
    d.advance_time(0);
    d.send(0, msg("a", "setA", 1_000));
    d.send(0, msg("a", "e5000", 1_000));
    d.send(1, msg("b", "setB", 1_000));
    d.send(1, msg("b", "p2000", 1_000));
    d.send(1, msg("b", "p3000", 1_000));
    d.send(1, msg("b", "-p3000", 1_000));
    d.advance_time(1_000);
    assert!(d.outputs().is_empty());
    let snap = d.checkpoint();
    drop(d);

    let mut d = TestDriver::restore(&job, 2, &snap).expect("restore");
    d.send(0, msg("a", "get", 2_000));
    d.send(1, msg("b", "get", 2_000));
    assert_eq!(values(&d.outputs()), ["a=A", "b=B"]);
    // The restored driver's processing time starts again at 0.
    d.advance_time(1_999);
    assert!(d.outputs().is_empty());
    d.advance_time(1);
    assert_eq!(values(&d.outputs()), ["b@2000p=B"]);
    d.send(0, msg("x", "", 5_000));
    d.send(1, msg("x", "", 5_000));
    assert_eq!(values(&d.outputs()), ["a@5000e=A"]);
    d.advance_time(100_000);
    d.send(0, msg("x", "", 100_000));
    assert!(d.outputs().is_empty(), "the deleted timer stayed deleted");
}

fn ttl_commands(time: TtlTime, update: UpdateType) -> Job {
    job(move || KeyedProcess::new(Commands).with_ttl(Duration::from_secs(1), time, update))
}

#[test]
fn processing_time_ttl_on_create_and_write() {
    let mut d = TestDriver::new(
        &ttl_commands(TtlTime::ProcessingTime, UpdateType::OnCreateAndWrite),
        1,
    );
    d.advance_time(0);
    d.send(0, msg("a", "setx", 0));
    d.advance_time(600);
    d.send(0, msg("a", "get", 0)); // a read does not renew
    d.advance_time(399);
    d.send(0, msg("a", "get", 0));
    d.advance_time(1);
    d.send(0, msg("a", "get", 0));
    d.send(0, msg("a", "sety", 0)); // a write creates it again
    d.advance_time(999);
    d.send(0, msg("a", "get", 0));
    assert_eq!(values(&d.outputs()), ["a=x", "a=x", "a=none", "a=y"]);
}

#[test]
fn processing_time_ttl_on_read_and_write() {
    let mut d = TestDriver::new(
        &ttl_commands(TtlTime::ProcessingTime, UpdateType::OnReadAndWrite),
        1,
    );
    d.advance_time(0);
    d.send(0, msg("a", "setx", 0));
    d.advance_time(600);
    d.send(0, msg("a", "get", 0)); // renews until 1 600
    d.advance_time(999);
    d.send(0, msg("a", "get", 0)); // renews until 2 599
    d.advance_time(1_000);
    d.send(0, msg("a", "get", 0));
    assert_eq!(values(&d.outputs()), ["a=x", "a=x", "a=none"]);
}

#[test]
fn event_time_ttl_on_create_and_write() {
    let mut d = TestDriver::new(
        &ttl_commands(TtlTime::EventTime, UpdateType::OnCreateAndWrite),
        1,
    );
    d.send(0, msg("a", "setx", 1_000));
    d.send(0, msg("a", "get", 1_600));
    d.send(0, msg("a", "get", 1_999));
    d.send(0, msg("a", "get", 2_000));
    assert_eq!(values(&d.outputs()), ["a=x", "a=x", "a=none"]);
}

#[test]
fn event_time_ttl_on_read_and_write() {
    let mut d = TestDriver::new(
        &ttl_commands(TtlTime::EventTime, UpdateType::OnReadAndWrite),
        1,
    );
    d.send(0, msg("a", "setx", 1_000));
    d.send(0, msg("a", "get", 1_600));
    d.send(0, msg("a", "get", 2_599));
    d.send(0, msg("a", "get", 3_599));
    assert_eq!(values(&d.outputs()), ["a=x", "a=x", "a=none"]);
}

#[test]
fn expired_state_is_cleaned_up_and_ttl_stamps_survive_a_restore() {
    let job = ttl_commands(TtlTime::EventTime, UpdateType::OnCreateAndWrite);
    let mut d = TestDriver::new(&job, 1);
    for i in 0..500 {
        d.send(0, msg(&format!("k{i}"), "setx", 1_000));
    }
    d.send(0, msg("late", "setx", 1_500));
    let entries = |d: &TestDriver| d.metrics().operator("kp").map(|m| m.state_entries);
    assert_eq!(entries(&d), Some(501));
    // The watermark passes 2 000: the 500 expire. A few are cleaned up per call, and every one at the checkpoint.
    d.send(0, msg("late", "get", 2_000));
    let left = entries(&d).unwrap_or(0);
    assert!(left < 501 && left > 1, "incremental: {left}");
    let snap = d.checkpoint();
    assert_eq!(entries(&d), Some(1), "only the live entry is left");

    let mut d = TestDriver::restore(&job, 1, &snap).expect("restore");
    d.send(0, msg("late", "get", 2_499));
    d.send(0, msg("late", "get", 2_500));
    d.send(0, msg("k1", "get", 2_500));
    assert_eq!(values(&d.outputs()), ["late=x", "late=none", "k1=none"]);
}

/// One step of the proptest: a record of `key`, `dt` ms (event time) after the previous one, that registers
/// (or deletes) a timer of the key in `domain` at the record's time (event time) or the processing time (for
/// processing-time timers) plus `offset`, which may be in the past; then processing time moves on by `tick`.
#[derive(Debug, Clone)]
struct Step {
    key: u8,
    domain: TimeDomain,
    dt: i64,
    offset: i64,
    delete: bool,
    tick: i64,
}

fn step() -> impl Strategy<Value = Step> {
    let domain = prop_oneof![
        Just(TimeDomain::EventTime),
        Just(TimeDomain::ProcessingTime)
    ];
    (
        0..3u8,
        domain,
        0..2_000i64,
        -3_000..8_000i64,
        prop::bool::weighted(0.2),
        0..2_000i64,
    )
        .prop_map(|(key, domain, dt, offset, delete, tick)| Step {
            key,
            domain,
            dt,
            offset,
            delete,
            tick,
        })
}

type Pending = BTreeSet<(i64, String)>;

/// Takes the timers of `pending` due at `upto`, as the outputs they fire, in (time, key) order.
fn due(
    pending: &mut Pending,
    upto: i64,
    d: char,
    fired: &mut Vec<(char, i64, String)>,
) -> Vec<String> {
    let rest = pending.split_off(&(upto.saturating_add(1), String::new()));
    let due = std::mem::replace(pending, rest);
    due.into_iter()
        .map(|(t, k)| {
            let s = format!("{k}@{t}{d}=none");
            fired.push((d, t, k));
            s
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Against a model of the timer service: after each record the watermark is its time and every pending
    /// event-time timer it reaches fires; after each tick every processing-time timer now reaches fires; due
    /// timers fire in (time, key) order. In the end every registered, undeleted timer has fired exactly once.
    #[test]
    fn random_timers_fire_once_each_in_time_order(steps in proptest::collection::vec(step(), 1..40)) {
        let mut d = TestDriver::new(&commands(), 1);
        d.advance_time(0);
        let (mut event, mut processing) = (Pending::new(), Pending::new());
        let mut fired = Vec::new();
        let (mut ts, mut now) = (0i64, 0i64);
        for s in &steps {
            ts += s.dt;
            let key = format!("k{}", s.key);
            let (pending, base, c) = match s.domain {
                TimeDomain::EventTime => (&mut event, ts, 'e'),
                TimeDomain::ProcessingTime => (&mut processing, now, 'p'),
            };
            let at = base + s.offset;
            if !s.delete && fired.contains(&(c, at, key.clone())) {
                // Registering a timer that already fired registers it anew (it fires again): a step that would
                // do so sends nothing the function acts on, so that each timer is registered once.
                d.send(0, msg(&key, "noop", ts));
            } else if s.delete {
                pending.remove(&(at, key.clone()));
                d.send(0, msg(&key, &format!("-{c}{at}"), ts));
            } else {
                pending.insert((at, key.clone()));
                d.send(0, msg(&key, &format!("{c}{at}"), ts));
            }
            // Event-time timers the record's watermark reaches fire, and processing-time timers already due
            // (a timer registered at or before the current time fires at once): each domain in time order.
            let want_e = due(&mut event, ts, 'e', &mut fired);
            let want_p = due(&mut processing, now, 'p', &mut fired);
            let got = values(&d.outputs());
            let (got_e, got_p): (Vec<String>, Vec<String>) = got.into_iter().partition(|v| v.ends_with("e=none"));
            prop_assert_eq!(got_e, want_e);
            prop_assert_eq!(got_p, want_p);
            now += s.tick;
            d.advance_time(s.tick);
            prop_assert_eq!(values(&d.outputs()), due(&mut processing, now, 'p', &mut fired));
        }
        d.send(0, msg("end", "", i64::MAX / 2));
        prop_assert_eq!(values(&d.outputs()), due(&mut event, i64::MAX, 'e', &mut fired));
        d.advance_time(i64::MAX / 2);
        prop_assert_eq!(values(&d.outputs()), due(&mut processing, i64::MAX, 'p', &mut fired));
        let unique: BTreeSet<_> = fired.iter().cloned().collect();
        prop_assert_eq!(unique.len(), fired.len(), "a timer fired twice");
    }
}
