//! Fetch: read whole batches from the mapped segments (zero-copy `Bytes` slices that the connection writes with
//! vectored I/O), and long-poll: when fewer than `min_bytes` are available, wait until an append to one of the
//! requested partitions or `max_wait_ms`, then read again.
//!
//! Limits (KIP-74): `partition_max_bytes` per partition and `max_bytes` for the whole response, except that the
//! first batch of the first partition with data is returned whole even when larger, so a consumer always
//! progresses. Fetch sessions (KIP-227): we never create one (session id 0 in every answer), which tells clients
//! to send full fetches; a request naming a session we do not have gets FETCH_SESSION_ID_NOT_FOUND.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use millrace_protocol::error_code::{self, ErrorCode};
use millrace_protocol::header::RequestHeader;
use millrace_protocol::messages::fetch_request::FetchRequest;
use millrace_protocol::messages::fetch_response::{
    FetchResponse, FetchableTopicResponse, PartitionData,
};
use millrace_storage::Log;

use super::{respond, respond_later, Reply};
use crate::state::Broker;

/// One requested partition, resolved once.
struct Want {
    partition: i32,
    log: Result<Arc<Log>, ErrorCode>,
    offset: i64,
    max_bytes: usize,
}

struct TopicWant {
    name: String,
    id: [u8; 16],
    partitions: Vec<Want>,
}

/// Reads every partition once. Returns the response topics, the bytes gathered, and whether any partition
/// answered with an error (which ends a long-poll at once, as in Kafka).
fn read_all(wants: &[TopicWant], max_bytes: usize) -> (Vec<FetchableTopicResponse>, usize, bool) {
    let mut total = 0usize;
    let mut any_error = false;
    let topics = wants
        .iter()
        .map(|t| FetchableTopicResponse {
            topic: t.name.clone(),
            topic_id: t.id,
            partitions: t
                .partitions
                .iter()
                .map(|w| {
                    let mut pd = PartitionData {
                        partition_index: w.partition,
                        high_watermark: -1,
                        last_stable_offset: -1,
                        log_start_offset: -1,
                        preferred_read_replica: -1,
                        records: Some(Bytes::new()),
                        aborted_transactions: Some(vec![]),
                        ..Default::default()
                    };
                    let log = match &w.log {
                        Ok(log) => log,
                        Err(code) => {
                            pd.error_code = *code;
                            any_error = true;
                            return pd;
                        }
                    };
                    let budget = w.max_bytes.min(max_bytes.saturating_sub(total));
                    match log.read(w.offset, budget, total == 0) {
                        Ok(slice) => {
                            pd.high_watermark = slice.high_watermark;
                            pd.last_stable_offset = slice.high_watermark;
                            pd.log_start_offset = slice.log_start_offset;
                            total += slice.records.len();
                            pd.records = Some(slice.records);
                        }
                        Err(e) => {
                            pd.error_code = crate::storage_code(&e);
                            pd.high_watermark = log.log_end_offset();
                            pd.last_stable_offset = pd.high_watermark;
                            pd.log_start_offset = log.log_start_offset();
                            any_error = true;
                        }
                    }
                    pd
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    (topics, total, any_error)
}

pub fn handle(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    req: FetchRequest,
) -> Result<Reply, String> {
    let version = header.api_version;
    if req.session_id != 0 || req.session_epoch > 0 {
        let resp = FetchResponse {
            error_code: error_code::FETCH_SESSION_ID_NOT_FOUND,
            session_id: 0,
            ..Default::default()
        };
        return Ok(Reply::Ready(respond(header, |w, v| resp.encode(w, v))?));
    }
    let mut wants = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let (topic, missing) = if version >= 13 {
            (
                broker.topics.get_by_id(&t.topic_id),
                error_code::UNKNOWN_TOPIC_ID,
            )
        } else {
            (
                broker.topics.get(&t.topic),
                error_code::UNKNOWN_TOPIC_OR_PARTITION,
            )
        };
        let partitions = t
            .partitions
            .into_iter()
            .map(|p| Want {
                partition: p.partition,
                log: match &topic {
                    None => Err(missing),
                    Some(topic) => topic
                        .partition(p.partition)
                        .cloned()
                        .ok_or(error_code::UNKNOWN_TOPIC_OR_PARTITION),
                },
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
            })
            .collect();
        wants.push(TopicWant {
            name: t.topic,
            id: t.topic_id,
            partitions,
        });
    }
    let max_bytes = if req.max_bytes <= 0 {
        i32::MAX as usize
    } else {
        req.max_bytes as usize
    };
    let min_bytes = req.min_bytes.max(0) as usize;
    let (topics, total, any_error) = read_all(&wants, max_bytes);
    let finish = |topics: Vec<FetchableTopicResponse>, header: &RequestHeader| {
        let resp = FetchResponse {
            responses: topics,
            session_id: 0,
            ..Default::default()
        };
        respond(header, |w, v| resp.encode(w, v))
    };
    let finish_later = |topics: Vec<FetchableTopicResponse>, header: &RequestHeader| {
        let resp = FetchResponse {
            responses: topics,
            session_id: 0,
            ..Default::default()
        };
        respond_later(header, |w, v| resp.encode(w, v))
    };
    if total >= min_bytes || any_error || req.max_wait_ms <= 0 || wants.is_empty() {
        return Ok(Reply::Ready(finish(topics, header)?));
    }
    let header = header.clone();
    let wait = Duration::from_millis(req.max_wait_ms.clamp(0, 300_000) as u64);
    Ok(Reply::Later(Box::pin(async move {
        let deadline = tokio::time::Instant::now() + wait;
        let logs: Vec<Arc<Log>> = wants
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .filter_map(|p| p.log.as_ref().ok().cloned())
            })
            .collect();
        loop {
            // Register interest before reading, so an append between the read and the wait is not missed.
            let notified: Vec<_> = logs
                .iter()
                .map(|l| Box::pin(l.appended().notified()))
                .collect();
            let mut notified = notified;
            for n in notified.iter_mut() {
                n.as_mut().enable();
            }
            let (topics, total, any_error) = read_all(&wants, max_bytes);
            if total >= min_bytes || any_error || tokio::time::Instant::now() >= deadline {
                return finish_later(topics, &header);
            }
            let any = futures_select_all(notified);
            if tokio::time::timeout_at(deadline, any).await.is_err() {
                let (topics, _, _) = read_all(&wants, max_bytes);
                return finish_later(topics, &header);
            }
        }
    })))
}

/// Resolves when any of the futures does (a tiny select_all, to avoid a dependency for one call).
async fn futures_select_all<F: std::future::Future + Unpin>(mut futs: Vec<F>) {
    std::future::poll_fn(move |cx| {
        for f in futs.iter_mut() {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}
