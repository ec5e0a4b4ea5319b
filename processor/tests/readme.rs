//! The README's Rust example ("Pipeline files", "In Rust"), kept compiling and running.
#![allow(clippy::unwrap_used)]

#[test]
fn the_readme_example_builds_and_runs() -> Result<(), Box<dyn std::error::Error>> {
    use millrace_processor::{JoinKind, Message, OutRecord, Pipeline, Sum, TestDriver, Window};
    use std::time::Duration;

    let p = Pipeline::new("revenue").out_of_orderness(Duration::from_secs(5));
    let users = p.table("users"); // latest value per key, null deletes
    let orders = p.source_with_partitions("orders", Some(3));
    orders
        .clone()
        .filter(|m: &Message| m.value.as_deref().is_some_and(|v| v.len() > 100))
        .to("big_orders", |m: Message| m.into()); // a branch: one more sink
    let job = orders
        .key_by(|m: &Message| m.key.clone().unwrap_or_default()) // the user id
        .join_table(
            &users,
            JoinKind::Left,
            |_, order: Message, user: Option<&Message>| (order, user.is_some()),
        )
        .key_by(|(_, known): &(Message, bool)| known.to_string()) // "true" when the user is known
        .window(Window::tumbling(Duration::from_secs(60)))
        .late_to("revenue.late", None, |_, (m, _): &(Message, bool), _| {
            m.clone().into()
        })
        .aggregate(Sum(|(m, _): &(Message, bool)| {
            m.value.as_ref().map_or(0, |v| v.len()) as f64
        }))
        .sink("revenue", |r| {
            OutRecord::new(None, Some(r.value.to_string().into()), r.window_end - 1)
        })?;
    let mut driver = TestDriver::with_partitions(&job, &[3, 3]); // virtual time, no broker
    driver.send_to(1, 0, Message::new(Some(b"alice"), Some(b"{}"), 1_000));
    // in the broker: millrace_processor::start(&job, host, runtime_handle)
    assert_eq!(job.sinks().len(), 2);
    Ok(())
}
