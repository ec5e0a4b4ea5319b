//! Metrics per operator and per pipeline. Operators count into plain fields of their own task (no atomics on
//! the hot path); the runtime sums them over tasks at every checkpoint and publishes the result.

/// One operator's figures, summed over the pipeline's tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperatorMetrics {
    /// The operator's stable id.
    pub id: String,
    pub records_in: u64,
    pub records_out: u64,
    /// Elements that arrived after every window they belong to had closed (sent to the late topic).
    pub late_records: u64,
    /// Elements late for some, not all, of their (hopping) windows.
    pub partially_late: u64,
    /// Keyed state entries held: (key, window) pairs or sessions.
    pub state_entries: u64,
}

/// A pipeline's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PipelineMetrics {
    pub name: String,
    pub operators: Vec<OperatorMetrics>,
    /// Input records read from the source partitions.
    pub records_read: u64,
    /// Records appended to the sink topic and to the late topic.
    pub records_written: u64,
    pub late_written: u64,
    /// The pipeline's watermark (minimum over active input partitions), epoch ms; i64::MIN before any input.
    pub watermark: i64,
    /// Wall clock minus watermark at the last checkpoint, in ms (0 before any input).
    pub watermark_lag_ms: i64,
    pub checkpoints: u64,
    /// Checkpoint rounds the committer finished, including those with nothing to commit (skipped).
    pub checkpoint_rounds: u64,
    /// How long the last checkpoint took, from stopping the tasks to its outputs being appended.
    pub last_checkpoint_micros: u64,
    /// Bytes of the last checkpoint record (state, offsets and the outputs it commits).
    pub last_checkpoint_bytes: u64,
    /// Bytes of operator state in the last checkpoint.
    pub state_bytes: u64,
    /// Bytes of keyed-state changes the last checkpoint carried to the state store, and all checkpoints
    /// since the pipeline started.
    pub last_checkpoint_change_bytes: u64,
    pub state_change_bytes: u64,
    /// Bytes of the state store's files, and the estimated bytes of keyed state resident in memory.
    pub state_store_bytes: u64,
    pub state_resident_bytes: u64,
}

impl PipelineMetrics {
    /// Adds one task's operator figures, matching operators by id.
    pub fn merge_operators(&mut self, task: Vec<OperatorMetrics>) {
        for m in task {
            match self.operators.iter_mut().find(|o| o.id == m.id) {
                Some(o) => {
                    o.records_in += m.records_in;
                    o.records_out += m.records_out;
                    o.late_records += m.late_records;
                    o.partially_late += m.partially_late;
                    o.state_entries += m.state_entries;
                }
                None => self.operators.push(m),
            }
        }
    }

    pub fn operator(&self, id: &str) -> Option<&OperatorMetrics> {
        self.operators.iter().find(|o| o.id == id)
    }
}
