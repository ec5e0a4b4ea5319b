//! One consumer group under Kafka's classic group protocol.
//!
//! States: Empty (no members), PreparingRebalance (collecting JoinGroups), CompletingRebalance (joined, waiting for
//! the leader's SyncGroup), Stable, Dead (deleted). Invariants: in Stable and CompletingRebalance every member has
//! joined the current generation and `leader` is one of them; `generation` only grows; join and sync waiters belong
//! to current members. Not thread-safe: the coordinator serializes access with its lock.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The names Kafka reports in DescribeGroups and ListGroups.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// What a JoinGroup waiter receives when the join phase completes.
#[derive(Debug, Clone)]
pub struct JoinOutcome {
    pub error_code: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Only for the leader: every member's id, instance id and metadata for the chosen protocol.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

/// What a SyncGroup waiter receives.
#[derive(Debug, Clone)]
pub struct SyncOutcome {
    pub error_code: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

#[derive(Debug)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    /// (protocol name, metadata), in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    pub last_heartbeat: Instant,
    pub join_waiter: Option<oneshot::Sender<JoinOutcome>>,
    pub sync_waiter: Option<oneshot::Sender<SyncOutcome>>,
}

#[derive(Debug)]
pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED and not yet used, with when they expire.
    pub pending: HashMap<String, Instant>,
    /// Static members: instance id -> member id.
    pub instances: HashMap<String, String>,
    /// When the current join phase must end even if some members have not rejoined.
    pub join_deadline: Option<Instant>,
    /// The join phase started from an empty group: wait out the initial delay for more members to arrive.
    pub initial: bool,
}

impl Group {
    pub fn new(id: &str) -> Group {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            instances: HashMap::new(),
            join_deadline: None,
            initial: false,
        }
    }

    /// Whether every protocol name in `protocols` can coexist with the current members (at least one common).
    pub fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return !protocols.is_empty();
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        protocols.iter().any(|(name, _)| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    /// Starts (or extends) a join phase.
    pub fn prepare_rebalance(&mut self, now: Instant, initial_delay: Duration) {
        if self.state == GroupState::PreparingRebalance {
            return;
        }
        // Members waiting for their assignment must rejoin: tell them so.
        for m in self.members.values_mut() {
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(SyncOutcome {
                    error_code: millrace_protocol::error_code::REBALANCE_IN_PROGRESS,
                    protocol_type: None,
                    protocol_name: None,
                    assignment: Bytes::new(),
                });
            }
        }
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(initial_delay);
        self.initial = self.state == GroupState::Empty;
        let wait = if self.initial {
            initial_delay.min(timeout)
        } else {
            timeout
        };
        self.join_deadline = Some(now + wait);
        self.state = GroupState::PreparingRebalance;
    }

    /// True when the join phase can end now: every member has rejoined (and, for a group that was empty, the
    /// initial delay has passed), or the deadline passed.
    pub fn join_complete(&self, now: Instant) -> bool {
        if self.state != GroupState::PreparingRebalance {
            return false;
        }
        let deadline_passed = self.join_deadline.is_some_and(|d| now >= d);
        let all_joined =
            !self.members.is_empty() && self.members.values().all(|m| m.join_waiter.is_some());
        deadline_passed || (all_joined && !self.initial)
    }

    /// Ends the join phase: drops members that did not rejoin, picks the protocol, bumps the generation and
    /// answers every waiting JoinGroup (the leader with the members' metadata).
    pub fn complete_join(&mut self) {
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            self.remove_member(&id);
        }
        self.join_deadline = None;
        self.generation += 1;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol_name = None;
            self.leader = None;
            return;
        }
        // The protocol every member supports that gets the most first-choice votes, ties by the leader's order.
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| {
                self.members
                    .values()
                    .all(|o| o.protocols.iter().any(|(x, _)| x == n))
            }) {
                *votes.entry(name.as_str()).or_default() += 1;
            }
        }
        let chosen = votes
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
            .map(|(n, _)| n.to_string());
        self.protocol_name = chosen;
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = GroupState::CompletingRebalance;
        let leader = self.leader.clone().unwrap_or_default();
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let all: Vec<(String, Option<String>, Bytes)> = self
            .members
            .values()
            .map(|m| {
                let meta = m
                    .protocols
                    .iter()
                    .find(|(n, _)| *n == protocol)
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default();
                (m.id.clone(), m.instance_id.clone(), meta)
            })
            .collect();
        for m in self.members.values_mut() {
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(JoinOutcome {
                    error_code: 0,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol_name: self.protocol_name.clone(),
                    leader: leader.clone(),
                    member_id: m.id.clone(),
                    members: if m.id == leader {
                        all.clone()
                    } else {
                        Vec::new()
                    },
                });
            }
            m.last_heartbeat = Instant::now();
        }
    }

    /// Installs the leader's assignment and answers every waiting SyncGroup.
    pub fn complete_sync(&mut self, assignments: HashMap<String, Bytes>) {
        for m in self.members.values_mut() {
            m.assignment = assignments.get(&m.id).cloned().unwrap_or_default();
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(SyncOutcome {
                    error_code: 0,
                    protocol_type: self.protocol_type.clone(),
                    protocol_name: self.protocol_name.clone(),
                    assignment: m.assignment.clone(),
                });
            }
        }
        self.state = GroupState::Stable;
    }

    pub fn remove_member(&mut self, id: &str) {
        if let Some(m) = self.members.remove(id) {
            if let Some(inst) = &m.instance_id {
                if self.instances.get(inst).is_some_and(|x| x == id) {
                    self.instances.remove(inst);
                }
            }
            if let Some(w) = m.join_waiter {
                let _ = w.send(JoinOutcome {
                    error_code: millrace_protocol::error_code::UNKNOWN_MEMBER_ID,
                    generation: -1,
                    protocol_type: None,
                    protocol_name: None,
                    leader: String::new(),
                    member_id: id.to_string(),
                    members: vec![],
                });
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
        if self.members.is_empty() && self.state != GroupState::PreparingRebalance {
            self.state = GroupState::Empty;
            self.protocol_type = None;
            self.protocol_name = None;
        }
    }
}
