//! The group coordinator (Kafka's classic consumer-group protocol) and committed offsets.
//!
//! - [`group`]: one group's state machine and its join/sync waiters.
//! - [`offsets`]: committed offsets, durable in the internal topic `__consumer_offsets`.
//!
//! This node coordinates every group. All group state sits behind one mutex: group operations are short and
//! never wait while holding it (waiting JoinGroup and SyncGroup calls hold a oneshot receiver instead). A tick
//! every 50 ms expires silent members and ends join phases whose deadline passed.

pub mod group;
pub mod offsets;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use millrace_protocol::error_code as code;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use group::{Group, GroupState, JoinOutcome, Member, SyncOutcome};
pub use offsets::{Committed, OffsetStore, OFFSETS_TOPIC};

/// Settings of the coordinator, from the broker's `group.*` settings.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub min_session: Duration,
    pub max_session: Duration,
    pub initial_rebalance_delay: Duration,
}

/// A JoinGroup as the coordinator sees it.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group_id: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub client_id: String,
    pub client_host: String,
    /// JoinGroup v4+ clients get MEMBER_ID_REQUIRED on a first join without a member id.
    pub require_known_member_id: bool,
}

pub struct Coordinator {
    pub config: GroupConfig,
    groups: Mutex<HashMap<String, Group>>,
    pub offsets: OffsetStore,
}

fn error_join(error_code: i16, member_id: &str) -> JoinOutcome {
    JoinOutcome {
        error_code,
        generation: -1,
        protocol_type: None,
        protocol_name: None,
        leader: String::new(),
        member_id: member_id.to_string(),
        members: vec![],
    }
}

fn error_sync(error_code: i16) -> SyncOutcome {
    SyncOutcome {
        error_code,
        protocol_type: None,
        protocol_name: None,
        assignment: Bytes::new(),
    }
}

/// A summary of a group for DescribeGroups / ListGroups.
#[derive(Debug, Clone)]
pub struct GroupSummary {
    pub id: String,
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    /// (member id, instance id, client id, client host, metadata of the chosen protocol, assignment)
    pub members: Vec<(String, Option<String>, String, String, Bytes, Bytes)>,
}

impl Coordinator {
    pub fn new(config: GroupConfig, offsets: OffsetStore) -> Coordinator {
        Coordinator {
            config,
            groups: Mutex::new(HashMap::new()),
            offsets,
        }
    }

    pub async fn join(&self, req: JoinRequest) -> JoinOutcome {
        let (tx, rx) = oneshot::channel();
        {
            let mut groups = self.groups.lock();
            let now = Instant::now();
            let session = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
            if session < self.config.min_session || session > self.config.max_session {
                return error_join(code::INVALID_SESSION_TIMEOUT, &req.member_id);
            }
            if req.group_id.is_empty() {
                return error_join(code::INVALID_GROUP_ID, &req.member_id);
            }
            let g = groups
                .entry(req.group_id.clone())
                .or_insert_with(|| Group::new(&req.group_id));
            if g.state == GroupState::Dead {
                *g = Group::new(&req.group_id);
            }
            if req.protocols.is_empty()
                || req.protocol_type.is_empty()
                || !g.supports(&req.protocol_type, &req.protocols)
            {
                return error_join(code::INCONSISTENT_GROUP_PROTOCOL, &req.member_id);
            }
            let mut member_id = req.member_id.clone();
            if member_id.is_empty() {
                let fresh = format!("{}-{}", req.client_id, hex_id());
                if let Some(inst) = &req.instance_id {
                    // A static member restarting: it takes a new member id and replaces (fences) the old one,
                    // keeping its assignment, without a rebalance when the group is stable.
                    if let Some(old) = g.instances.get(inst).cloned() {
                        if let Some(mut m) = g.members.remove(&old) {
                            m.id = fresh.clone();
                            m.last_heartbeat = now;
                            m.session_timeout = session;
                            if g.leader.as_deref() == Some(old.as_str()) {
                                g.leader = Some(fresh.clone());
                            }
                            let same = m.protocols == req.protocols;
                            g.members.insert(fresh.clone(), m);
                            g.instances.insert(inst.clone(), fresh.clone());
                            if g.state == GroupState::Stable && same {
                                return JoinOutcome {
                                    error_code: code::NONE,
                                    generation: g.generation,
                                    protocol_type: g.protocol_type.clone(),
                                    protocol_name: g.protocol_name.clone(),
                                    leader: g.leader.clone().unwrap_or_default(),
                                    member_id: fresh,
                                    members: vec![],
                                };
                            }
                            member_id = fresh;
                        }
                    } else {
                        member_id = fresh;
                    }
                } else if req.require_known_member_id {
                    g.pending
                        .insert(fresh.clone(), now + session.max(Duration::from_secs(30)));
                    return error_join(code::MEMBER_ID_REQUIRED, &fresh);
                } else {
                    member_id = fresh;
                }
            } else if !g.members.contains_key(&member_id) && g.pending.remove(&member_id).is_none()
            {
                return error_join(code::UNKNOWN_MEMBER_ID, &member_id);
            }
            if let Some(inst) = &req.instance_id {
                if g.instances.get(inst).is_some_and(|id| *id != member_id) {
                    return error_join(code::FENCED_INSTANCE_ID, &member_id);
                }
                g.instances.insert(inst.clone(), member_id.clone());
            }
            let rebalance = Duration::from_millis(req.rebalance_timeout_ms.max(0) as u64);
            let existing = g
                .members
                .get(&member_id)
                .map(|m| m.protocols == req.protocols);
            // A known follower rejoining a stable group with unchanged metadata gets the current generation.
            if existing == Some(true)
                && g.state == GroupState::Stable
                && g.leader.as_deref() != Some(member_id.as_str())
            {
                if let Some(m) = g.members.get_mut(&member_id) {
                    m.last_heartbeat = now;
                }
                return JoinOutcome {
                    error_code: code::NONE,
                    generation: g.generation,
                    protocol_type: g.protocol_type.clone(),
                    protocol_name: g.protocol_name.clone(),
                    leader: g.leader.clone().unwrap_or_default(),
                    member_id,
                    members: vec![],
                };
            }
            let m = g
                .members
                .entry(member_id.clone())
                .or_insert_with(|| Member {
                    id: member_id.clone(),
                    instance_id: req.instance_id.clone(),
                    client_id: req.client_id.clone(),
                    client_host: req.client_host.clone(),
                    session_timeout: session,
                    rebalance_timeout: rebalance,
                    protocols: vec![],
                    assignment: Bytes::new(),
                    last_heartbeat: now,
                    join_waiter: None,
                    sync_waiter: None,
                });
            m.protocols = req.protocols.clone();
            m.session_timeout = session;
            m.rebalance_timeout = rebalance;
            m.last_heartbeat = now;
            m.join_waiter = Some(tx);
            if g.protocol_type.is_none() {
                g.protocol_type = Some(req.protocol_type.clone());
            }
            g.prepare_rebalance(now, self.config.initial_rebalance_delay);
            if g.join_complete(now) {
                g.complete_join();
            }
        }
        rx.await
            .unwrap_or_else(|_| error_join(code::REBALANCE_IN_PROGRESS, ""))
    }

    pub async fn sync(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncOutcome {
        let (tx, rx) = oneshot::channel();
        {
            let mut groups = self.groups.lock();
            let Some(g) = groups.get_mut(group_id) else {
                return error_sync(code::UNKNOWN_MEMBER_ID);
            };
            if let Err(e) = check_member(g, member_id, instance_id, generation) {
                return error_sync(e);
            }
            match g.state {
                GroupState::PreparingRebalance => return error_sync(code::REBALANCE_IN_PROGRESS),
                GroupState::Stable => {
                    let m = &g.members[member_id];
                    return SyncOutcome {
                        error_code: code::NONE,
                        protocol_type: g.protocol_type.clone(),
                        protocol_name: g.protocol_name.clone(),
                        assignment: m.assignment.clone(),
                    };
                }
                GroupState::CompletingRebalance => {
                    if let Some(m) = g.members.get_mut(member_id) {
                        m.sync_waiter = Some(tx);
                        m.last_heartbeat = Instant::now();
                    }
                    if g.leader.as_deref() == Some(member_id) {
                        g.complete_sync(assignments.into_iter().collect());
                    }
                }
                GroupState::Empty | GroupState::Dead => return error_sync(code::UNKNOWN_MEMBER_ID),
            }
        }
        rx.await
            .unwrap_or_else(|_| error_sync(code::REBALANCE_IN_PROGRESS))
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> i16 {
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(group_id) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        if let Err(e) = check_member(g, member_id, instance_id, generation) {
            return e;
        }
        if let Some(m) = g.members.get_mut(member_id) {
            m.last_heartbeat = Instant::now();
        }
        match g.state {
            GroupState::PreparingRebalance => code::REBALANCE_IN_PROGRESS,
            _ => code::NONE,
        }
    }

    /// Removes members (by member id, or by instance id for static members); returns a code per member.
    pub fn leave(&self, group_id: &str, members: &[(String, Option<String>)]) -> (i16, Vec<i16>) {
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(group_id) else {
            return (
                code::UNKNOWN_MEMBER_ID,
                vec![code::UNKNOWN_MEMBER_ID; members.len()],
            );
        };
        let mut codes = Vec::with_capacity(members.len());
        let mut removed = false;
        for (member_id, instance) in members {
            let id = match instance {
                Some(inst) => match g.instances.get(inst) {
                    Some(id) if member_id.is_empty() || id == member_id => Some(id.clone()),
                    Some(_) => {
                        codes.push(code::FENCED_INSTANCE_ID);
                        continue;
                    }
                    None => None,
                },
                None => g.members.contains_key(member_id).then(|| member_id.clone()),
            };
            match id {
                Some(id) => {
                    g.remove_member(&id);
                    removed = true;
                    codes.push(code::NONE);
                }
                None => codes.push(code::UNKNOWN_MEMBER_ID),
            }
        }
        if removed && !g.members.is_empty() {
            g.prepare_rebalance(Instant::now(), self.config.initial_rebalance_delay);
            if g.join_complete(Instant::now()) {
                g.complete_join();
            }
        } else if removed {
            g.generation += 1;
        }
        let top = if members.len() == 1 {
            codes[0]
        } else {
            code::NONE
        };
        (top, codes)
    }

    /// Expires silent members and ends overdue join phases.
    pub fn tick(&self) {
        let now = Instant::now();
        let mut groups = self.groups.lock();
        for g in groups.values_mut() {
            g.pending.retain(|_, expiry| *expiry > now);
            if matches!(
                g.state,
                GroupState::Stable
                    | GroupState::CompletingRebalance
                    | GroupState::PreparingRebalance
            ) {
                let expired: Vec<String> = g
                    .members
                    .values()
                    .filter(|m| {
                        m.join_waiter.is_none()
                            && now.duration_since(m.last_heartbeat) > m.session_timeout
                    })
                    .map(|m| m.id.clone())
                    .collect();
                if !expired.is_empty() {
                    tracing::info!(group = %g.id, members = ?expired, "session timeout: removing members");
                    for id in &expired {
                        g.remove_member(id);
                    }
                    if g.members.is_empty() && g.state != GroupState::PreparingRebalance {
                        g.generation += 1;
                    } else {
                        g.prepare_rebalance(now, self.config.initial_rebalance_delay);
                    }
                }
            }
            if g.join_complete(now) {
                g.complete_join();
            }
        }
    }

    /// Validates a commit's member and generation. Commits with generation -1 and no member id are "simple"
    /// (group-less) commits, accepted only while the group has no active members, as in Kafka.
    pub fn check_commit(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> i16 {
        let groups = self.groups.lock();
        let g = groups.get(group_id);
        if generation < 0 && member_id.is_empty() {
            return match g {
                Some(g) if !g.members.is_empty() => code::UNKNOWN_MEMBER_ID,
                _ => code::NONE,
            };
        }
        let Some(g) = g else {
            return code::ILLEGAL_GENERATION;
        };
        if let Err(e) = check_member(g, member_id, instance_id, generation) {
            return e;
        }
        // As in Kafka: members of the current generation may still commit while a rebalance is being prepared
        // (so that they can commit before rejoining), but not between the join and the new assignment.
        if g.state == GroupState::CompletingRebalance {
            return code::REBALANCE_IN_PROGRESS;
        }
        code::NONE
    }

    pub fn describe(&self, group_id: &str) -> GroupSummary {
        let groups = self.groups.lock();
        match groups.get(group_id) {
            None => GroupSummary {
                id: group_id.to_string(),
                state: if self.offsets.all(group_id).is_empty() {
                    "Dead"
                } else {
                    "Empty"
                },
                protocol_type: if self.offsets.all(group_id).is_empty() {
                    String::new()
                } else {
                    "consumer".into()
                },
                protocol: String::new(),
                members: vec![],
            },
            Some(g) => {
                let protocol = g.protocol_name.clone().unwrap_or_default();
                GroupSummary {
                    id: g.id.clone(),
                    state: g.state.name(),
                    protocol_type: g.protocol_type.clone().unwrap_or_else(|| "consumer".into()),
                    protocol: protocol.clone(),
                    members: g
                        .members
                        .values()
                        .map(|m| {
                            let meta = m
                                .protocols
                                .iter()
                                .find(|(n, _)| *n == protocol)
                                .map(|(_, b)| b.clone())
                                .unwrap_or_default();
                            (
                                m.id.clone(),
                                m.instance_id.clone(),
                                m.client_id.clone(),
                                m.client_host.clone(),
                                meta,
                                m.assignment.clone(),
                            )
                        })
                        .collect(),
                }
            }
        }
    }

    /// Every group that has members or committed offsets.
    pub fn list(&self) -> Vec<GroupSummary> {
        let mut ids: Vec<String> = self.groups.lock().keys().cloned().collect();
        ids.extend(self.offsets.groups());
        ids.sort();
        ids.dedup();
        ids.iter()
            .map(|id| self.describe(id))
            .filter(|s| s.state != "Dead")
            .collect()
    }

    /// Deletes an empty group and its offsets (NON_EMPTY_GROUP while it has members).
    pub async fn delete(&self, group_id: &str, now_ms: i64) -> i16 {
        match self.delete_now(group_id, now_ms) {
            (code, Some(d)) if code == code::NONE => match d.wait().await {
                Ok(()) => code::NONE,
                Err(e) => e.code(),
            },
            (code, _) => code,
        }
    }

    /// Deletes an empty group and its offsets at once (in request order); the [`offsets::Durable`] resolves
    /// when the deletion is on disk.
    pub fn delete_now(&self, group_id: &str, now_ms: i64) -> (i16, Option<offsets::Durable>) {
        {
            let mut groups = self.groups.lock();
            match groups.get(group_id) {
                Some(g) if !g.members.is_empty() => return (code::NON_EMPTY_GROUP, None),
                Some(_) => {
                    groups.remove(group_id);
                }
                None if self.offsets.all(group_id).is_empty() => {
                    return (code::GROUP_ID_NOT_FOUND, None)
                }
                None => {}
            }
        }
        let deletions = self
            .offsets
            .all(group_id)
            .into_iter()
            .map(|(k, _)| (k, None))
            .collect();
        match self.offsets.apply(group_id, deletions, now_ms) {
            Ok(d) => (code::NONE, d),
            Err(e) => (e.code(), None),
        }
    }

    /// Deletes the committed offsets of groups without members whose commit is older than `retention_ms`
    /// (`offsets.retention.minutes`). Kafka counts from when the group became empty; we count from the commit,
    /// which is never earlier, so offsets live at least as long as Kafka keeps them.
    pub async fn expire_offsets(&self, now_ms: i64, retention_ms: i64) -> usize {
        let mut removed = 0;
        for group in self.offsets.groups() {
            if self.is_active(&group) {
                continue;
            }
            let expired: Vec<_> = self
                .offsets
                .all(&group)
                .into_iter()
                .filter(|(_, c)| c.commit_ms.saturating_add(retention_ms) < now_ms)
                .map(|(k, _)| (k, None))
                .collect();
            let n = expired.len();
            match self.offsets.write(&group, expired, now_ms).await {
                Ok(()) => removed += n,
                Err(e) => tracing::warn!(%group, error = %e, "offset expiry failed"),
            }
        }
        removed
    }

    /// Whether any current member of the group is subscribed to (assigned) a topic; used by OffsetDelete.
    pub fn is_active(&self, group_id: &str) -> bool {
        self.groups
            .lock()
            .get(group_id)
            .is_some_and(|g| !g.members.is_empty())
    }
}

/// The topics in a consumer-protocol subscription (version i16, then an array of strings); empty when the
/// metadata is not in that format.
pub fn subscribed_topics(metadata: &[u8]) -> Vec<String> {
    let mut r = millrace_protocol::codec::Reader::new(Bytes::copy_from_slice(metadata));
    let mut out = Vec::new();
    if r.i16().is_err() {
        return out;
    }
    let Ok(Some(n)) = r.array_len(false) else {
        return out;
    };
    for _ in 0..n {
        match r.string(false, "topic") {
            Ok(t) => out.push(t),
            Err(_) => break,
        }
    }
    out
}

fn check_member(
    g: &Group,
    member_id: &str,
    instance_id: Option<&str>,
    generation: i32,
) -> Result<(), i16> {
    if let Some(inst) = instance_id {
        if g.instances.get(inst).is_some_and(|id| id != member_id) {
            return Err(code::FENCED_INSTANCE_ID);
        }
    }
    if !g.members.contains_key(member_id) {
        return Err(code::UNKNOWN_MEMBER_ID);
    }
    if generation != g.generation {
        return Err(code::ILLEGAL_GENERATION);
    }
    Ok(())
}

/// A random 16-byte id in hex, for member ids.
fn hex_id() -> String {
    crate::topics::random_uuid()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coordinator(dir: &std::path::Path) -> Coordinator {
        let log = std::sync::Arc::new(
            millrace_storage::Log::open(
                dir,
                OFFSETS_TOPIC,
                0,
                millrace_storage::LogConfig::default(),
            )
            .unwrap(),
        );
        Coordinator::new(
            GroupConfig {
                min_session: Duration::from_millis(10),
                max_session: Duration::from_secs(60),
                initial_rebalance_delay: Duration::from_millis(0),
            },
            OffsetStore::load(vec![log]).unwrap(),
        )
    }

    fn join_req(member: &str) -> JoinRequest {
        JoinRequest {
            group_id: "g".into(),
            session_timeout_ms: 100,
            rebalance_timeout_ms: 100,
            member_id: member.into(),
            instance_id: None,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"m"))],
            client_id: "c".into(),
            client_host: "h".into(),
            require_known_member_id: true,
        }
    }

    #[tokio::test]
    async fn two_step_join_sync_and_session_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let c = coordinator(dir.path());
        let first = c.join(join_req("")).await;
        assert_eq!(first.error_code, code::MEMBER_ID_REQUIRED);
        let joined = c.join(join_req(&first.member_id)).await;
        assert_eq!((joined.error_code, joined.generation), (0, 1));
        assert_eq!(joined.leader, first.member_id);
        assert_eq!(joined.members.len(), 1);
        let synced = c
            .sync(
                "g",
                1,
                &first.member_id,
                None,
                vec![(first.member_id.clone(), Bytes::from_static(b"a"))],
            )
            .await;
        assert_eq!((synced.error_code, &synced.assignment[..]), (0, &b"a"[..]));
        assert_eq!(c.heartbeat("g", 1, &first.member_id, None), 0);
        assert_eq!(
            c.heartbeat("g", 0, &first.member_id, None),
            code::ILLEGAL_GENERATION
        );
        assert_eq!(c.describe("g").state, "Stable");
        // Silent past the session timeout: expired by the tick, the group is empty.
        tokio::time::sleep(Duration::from_millis(150)).await;
        c.tick();
        assert_eq!(c.describe("g").state, "Empty");
        assert_eq!(
            c.heartbeat("g", 1, &first.member_id, None),
            code::UNKNOWN_MEMBER_ID
        );
    }

    #[tokio::test]
    async fn offsets_of_empty_groups_expire() {
        let dir = tempfile::tempdir().unwrap();
        let c = coordinator(dir.path());
        let commit = |offset| {
            Some(Committed {
                offset,
                leader_epoch: -1,
                metadata: None,
                commit_ms: 1_000,
            })
        };
        c.offsets
            .write("idle", vec![(("t".into(), 0), commit(5))], 1_000)
            .await
            .unwrap();
        assert_eq!(c.expire_offsets(1_500, 1_000).await, 0, "not old enough");
        assert_eq!(c.offsets.get("idle", "t", 0).map(|x| x.offset), Some(5));
        assert_eq!(c.expire_offsets(5_000, 1_000).await, 1);
        assert_eq!(c.offsets.get("idle", "t", 0), None);
        // The deletion is durable: a reload of the same log sees no offsets.
        drop(c);
        let c = coordinator(dir.path());
        assert!(c.offsets.groups().is_empty());
    }
}
