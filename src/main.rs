//! The millrace binary: `millrace serve` runs the broker (and the pipelines given with `--pipeline`),
//! `millrace pipeline check` validates a pipeline file, `millrace bench` load-tests any Kafka-compatible broker.
//! The command line lives in the library (`src/lib.rs`), so that programs can embed the broker with pipelines
//! of their own (`examples/*.rs`).

fn main() -> anyhow::Result<()> {
    millrace::main_with(Vec::new())
}
