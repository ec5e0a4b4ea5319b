//! The logical dataflow graph of a pipeline: sources, nodes (operators, joins, unions, sinks) and the edges
//! between them, as the builders ([`crate::pipeline`], [`crate::file`]) make it and every task runs it.
//!
//! An edge is *forward* (the consumer runs in the same task as the producer) or *keyed* (an exchange sends
//! each element to the task that owns its key group). Keyed edges cut the graph into *stages*: a node's stage
//! is the largest of its inputs' stages, plus one across a keyed edge. Stage 0 holds the sources and the steps
//! before the first key_by. Tasks run the stages in order and publish a watermark per stage, so an element
//! that crossed several exchanges is never overtaken by the watermark that covers it (see
//! [`crate::runtime`]).
//!
//! Invariants (checked by [`GraphSpec::new`]):
//! - nodes are in topological order: every input of node `n` is a node before `n`;
//! - a keyed node's inputs are all keyed edges, a forward node's all forward edges;
//! - `stage[n]` is as above and `stages` is one more than the largest stage;
//! - `upstream[n]` lists the sources whose watermarks node `n` combines (every source it is reachable from);
//!   for a node with several inputs, `port_upstream[n][p]` lists those of input `p` alone (empty otherwise).

pub mod node;

use std::fmt::Write as _;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::task::EventTimeFn;
pub use node::{Batch, Exchange, NodeCore, NodeFactory, NodeInit};

/// A topic a pipeline reads or writes, the partition count to create it with if it is missing (None: the
/// broker's default), and the cluster it is on (None: this broker; Some: a remote cluster's
/// `bootstrap.servers`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: Option<i32>,
    pub cluster: Option<String>,
}

impl TopicSpec {
    /// Whether the name is a pattern (`*` any run of characters, `?` one character) rather than a topic.
    pub fn is_pattern(&self) -> bool {
        self.name.contains(['*', '?'])
    }

    /// Whether `topic` matches this spec's pattern (or is its topic).
    pub fn matches(&self, topic: &str) -> bool {
        glob(self.name.as_bytes(), topic.as_bytes())
    }
}

/// Glob matching with `*` and `?`, iterative with one backtrack point (linear in practice, never
/// exponential).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

/// One input of a node.
#[derive(Clone)]
pub struct Edge {
    pub from: usize,
    /// Present on a keyed edge: how elements are split by key group.
    pub exchange: Option<Arc<dyn Exchange>>,
}

/// One node of the graph.
#[derive(Clone)]
pub struct NodeSpec {
    /// The stable id its state is found by.
    pub id: String,
    /// What `pipeline check` prints: "map", "window TUMBLING 60000 ms", ...
    pub detail: String,
    pub inputs: Vec<Edge>,
    pub factory: NodeFactory,
    /// Whether the node keeps one operator instance per key group (its inputs are keyed edges).
    pub keyed: bool,
    /// The output index of its late-record topic.
    pub late: Option<usize>,
    /// The output index a sink node writes.
    pub sink: Option<usize>,
    /// The source this node is the entry of.
    pub source: Option<usize>,
}

/// Where a source starts reading when the pipeline has no checkpoint yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// The log start (Kafka's auto.offset.reset=earliest).
    #[default]
    Earliest,
    /// The log end when the pipeline starts (auto.offset.reset=latest).
    Latest,
    /// This offset (clamped into the log).
    Offset(i64),
    /// The first record with a timestamp at or after this (epoch ms), as ListOffsets finds it.
    Time(i64),
}

/// Where a source stops: never (a stream), or at a bound, which makes it finite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EndAt {
    #[default]
    Unbounded,
    /// The log end when the pipeline starts.
    End,
    /// Before this offset.
    Offset(i64),
    /// Before the first record with a timestamp after this (epoch ms).
    Time(i64),
}

/// A source: a topic read from `start` (or from the checkpoint) to `end`, entering the graph at `node`.
#[derive(Clone)]
pub struct SourceSpec {
    pub topic: TopicSpec,
    pub event_time: Option<EventTimeFn>,
    pub node: usize,
    /// Read as a table (a changelog: latest value per key).
    pub table: bool,
    pub start: StartAt,
    pub end: EndAt,
}

/// A topic the pipeline writes.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub topic: TopicSpec,
    /// A late-record topic (its records count as late, not as written).
    pub late: bool,
}

/// The whole graph, checked and planned.
#[derive(Clone)]
pub struct GraphSpec {
    pub nodes: Vec<NodeSpec>,
    pub sources: Vec<SourceSpec>,
    pub outputs: Vec<OutputSpec>,
    /// For every node, its consumers: (node, input port).
    pub consumers: Vec<Vec<(usize, usize)>>,
    pub stage: Vec<usize>,
    pub stages: usize,
    pub upstream: Vec<Vec<usize>>,
    pub port_upstream: Vec<Vec<Vec<usize>>>,
}

impl GraphSpec {
    pub fn new(
        nodes: Vec<NodeSpec>,
        sources: Vec<SourceSpec>,
        outputs: Vec<OutputSpec>,
    ) -> Result<GraphSpec> {
        let n = nodes.len();
        let mut consumers = vec![Vec::new(); n];
        let mut stage = vec![0usize; n];
        let mut upstream: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, node) in nodes.iter().enumerate() {
            if let Some(s) = node.source {
                upstream[i].push(s);
            }
            for (port, e) in node.inputs.iter().enumerate() {
                if e.from >= i {
                    return Err(Error::Invalid(format!(
                        "node {} reads a node defined after it",
                        node.id
                    )));
                }
                if e.exchange.is_some() != node.keyed {
                    return Err(Error::Invalid(format!(
                        "node {}: {} input {port}",
                        node.id,
                        if node.keyed {
                            "a keyed step needs a keyed (key_by) input"
                        } else {
                            "a keyed input reaches a step that is not keyed"
                        }
                    )));
                }
                consumers[e.from].push((i, port));
                let s = stage[e.from] + usize::from(e.exchange.is_some());
                stage[i] = stage[i].max(s);
                let up = upstream[e.from].clone();
                for s in up {
                    if !upstream[i].contains(&s) {
                        upstream[i].push(s);
                    }
                }
            }
        }
        for (s, src) in sources.iter().enumerate() {
            if nodes.get(src.node).and_then(|n| n.source) != Some(s) {
                return Err(Error::Invalid(format!(
                    "source {} has no entry node",
                    src.topic.name
                )));
            }
        }
        let port_upstream = nodes
            .iter()
            .map(|node| match node.inputs.len() {
                0 | 1 => Vec::new(),
                _ => node
                    .inputs
                    .iter()
                    .map(|e| upstream[e.from].clone())
                    .collect(),
            })
            .collect();
        let stages = stage.iter().max().map_or(1, |m| m + 1);
        Ok(GraphSpec {
            port_upstream,
            nodes,
            sources,
            outputs,
            consumers,
            stage,
            stages,
            upstream,
        })
    }

    /// Whether every source is bounded: the pipeline is a batch job that ends.
    pub fn is_bounded(&self) -> bool {
        self.sources.iter().all(|s| s.end != EndAt::Unbounded)
    }

    /// Whether `topic` is one the pipeline reads (a source's topic, or a match of its pattern).
    pub fn reads(&self, topic: &str) -> bool {
        self.sources.iter().any(|s| s.topic.matches(topic))
    }

    /// The graph as `millrace pipeline check` prints it: one line per node with its inputs.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let inputs: Vec<String> = node
                .inputs
                .iter()
                .map(|e| {
                    let from = &self.nodes[e.from].id;
                    if e.exchange.is_some() {
                        format!("{from} (by key)")
                    } else {
                        from.clone()
                    }
                })
                .collect();
            let _ = write!(out, "  [{}] {}: {}", self.stage[i], node.id, node.detail);
            if !inputs.is_empty() {
                let _ = write!(out, " <- {}", inputs.join(", "));
            }
            if let Some(l) = node.late {
                let _ = write!(out, "; late records to {}", self.outputs[l].topic.name);
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let t = |p: &str| TopicSpec {
            name: p.into(),
            ..Default::default()
        };
        assert!(t("orders-*").matches("orders-eu"));
        assert!(t("orders-*").matches("orders-"));
        assert!(!t("orders-*").matches("order-eu"));
        assert!(t("a?c").matches("abc"));
        assert!(!t("a?c").matches("ac"));
        assert!(t("*x*y").matches("0x1x2y"));
        assert!(t("plain").matches("plain") && !t("plain").matches("plainer"));
        assert!(t("*").is_pattern() && !t("plain").is_pattern());
    }
}
