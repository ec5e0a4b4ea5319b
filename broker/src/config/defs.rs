//! The one table of every setting the broker knows: its Kafka name, default, type, and for topic-level settings
//! the broker setting that supplies the default. DescribeConfigs, validation, the TOML file and the
//! `MILLRACE_*` environment all read this table, so a setting is added in exactly one place.

/// How a value is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int,  // i32
    Long, // i64
    Double,
    String,
    /// One of a fixed list (comma-separated lists allowed when `list`).
    Choice(&'static [&'static str], bool),
}

impl Kind {
    /// Kafka's ConfigType numbering for DescribeConfigs v3+ (BOOLEAN=1, STRING=2, INT=3, SHORT=4, LONG=5,
    /// DOUBLE=6, LIST=7, CLASS=8, PASSWORD=9).
    pub fn type_code(self) -> i8 {
        match self {
            Kind::Bool => 1,
            Kind::String => 2,
            Kind::Int => 3,
            Kind::Long => 5,
            Kind::Double => 6,
            Kind::Choice(_, true) => 7,
            Kind::Choice(_, false) => 2,
        }
    }

    pub fn validate(self, value: &str) -> Result<(), String> {
        let bad = |what: &str| Err(format!("{value:?} is not {what}"));
        match self {
            Kind::Bool => match value {
                "true" | "false" => Ok(()),
                _ => bad("true or false"),
            },
            Kind::Int => value.parse::<i32>().map(|_| ()).or_else(|_| bad("an int")),
            Kind::Long => value.parse::<i64>().map(|_| ()).or_else(|_| bad("a long")),
            Kind::Double => value
                .parse::<f64>()
                .map(|_| ())
                .or_else(|_| bad("a number")),
            Kind::String => Ok(()),
            Kind::Choice(options, list) => {
                let mut parts = if list {
                    value.split(',').collect::<Vec<_>>()
                } else {
                    vec![value]
                };
                parts.retain(|p| !p.trim().is_empty());
                if parts.is_empty() || parts.iter().any(|p| !options.contains(&p.trim())) {
                    bad(&format!("one of {}", options.join(", ")))
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// A broker-level setting.
#[derive(Debug, Clone, Copy)]
pub struct BrokerDef {
    pub name: &'static str,
    pub default: &'static str,
    pub kind: Kind,
    /// Whether AlterConfigs may change it at run time (Kafka's "cluster-wide dynamic" settings).
    pub dynamic: bool,
}

/// A topic-level setting and the broker setting that provides its default.
#[derive(Debug, Clone, Copy)]
pub struct TopicDef {
    pub name: &'static str,
    pub broker_key: Option<&'static str>,
    pub default: &'static str,
    pub kind: Kind,
}

const CLEANUP: Kind = Kind::Choice(&["delete", "compact"], true);
const TS_TYPE: Kind = Kind::Choice(&["CreateTime", "LogAppendTime"], false);
const COMPRESSION: Kind = Kind::Choice(
    &["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"],
    false,
);

pub const BROKER: &[BrokerDef] = &[
    BrokerDef {
        name: "listen",
        default: "127.0.0.1:9092",
        kind: Kind::String,
        dynamic: false,
    },
    BrokerDef {
        name: "advertised.listener",
        default: "",
        kind: Kind::String,
        dynamic: false,
    },
    BrokerDef {
        name: "data.dir",
        default: "./millrace-data",
        kind: Kind::String,
        dynamic: false,
    },
    BrokerDef {
        name: "node.id",
        default: "1",
        kind: Kind::Int,
        dynamic: false,
    },
    BrokerDef {
        name: "cluster.id",
        default: "",
        kind: Kind::String,
        dynamic: false,
    },
    BrokerDef {
        name: "auto.create.topics.enable",
        default: "true",
        kind: Kind::Bool,
        dynamic: false,
    },
    BrokerDef {
        name: "delete.topic.enable",
        default: "true",
        kind: Kind::Bool,
        dynamic: false,
    },
    BrokerDef {
        name: "num.partitions",
        default: "1",
        kind: Kind::Int,
        dynamic: false,
    },
    BrokerDef {
        name: "default.replication.factor",
        default: "1",
        kind: Kind::Int,
        dynamic: false,
    },
    BrokerDef {
        name: "message.max.bytes",
        default: "1048588",
        kind: Kind::Int,
        dynamic: true,
    },
    BrokerDef {
        name: "socket.request.max.bytes",
        default: "104857600",
        kind: Kind::Int,
        dynamic: false,
    },
    BrokerDef {
        name: "max.connections",
        default: "10000",
        kind: Kind::Int,
        dynamic: false,
    },
    // Kafka's: per client address, over which a new connection is closed at once.
    BrokerDef {
        name: "max.connections.per.ip",
        default: "2147483647",
        kind: Kind::Int,
        dynamic: false,
    },
    // Kafka's: a connection with no request for this long (and none in flight) is closed.
    BrokerDef {
        name: "connections.max.idle.ms",
        default: "600000",
        kind: Kind::Long,
        dynamic: false,
    },
    // Ours: a connection that has sent part of a request and not the rest within this long is closed (a
    // stalled or slow-loris client cannot hold a connection slot for the idle timeout).
    BrokerDef {
        name: "socket.request.read.timeout.ms",
        default: "30000",
        kind: Kind::Long,
        dynamic: false,
    },
    BrokerDef {
        name: "log.segment.bytes",
        default: "1073741824",
        kind: Kind::Int,
        dynamic: true,
    },
    BrokerDef {
        name: "log.roll.ms",
        default: "604800000",
        kind: Kind::Long,
        dynamic: true,
    },
    BrokerDef {
        name: "log.retention.ms",
        default: "604800000",
        kind: Kind::Long,
        dynamic: true,
    },
    BrokerDef {
        name: "log.retention.bytes",
        default: "-1",
        kind: Kind::Long,
        dynamic: true,
    },
    BrokerDef {
        name: "log.retention.check.interval.ms",
        default: "300000",
        kind: Kind::Long,
        dynamic: false,
    },
    BrokerDef {
        name: "log.index.interval.bytes",
        default: "4096",
        kind: Kind::Int,
        dynamic: true,
    },
    BrokerDef {
        name: "log.index.size.max.bytes",
        default: "10485760",
        kind: Kind::Int,
        dynamic: true,
    },
    BrokerDef {
        name: "log.cleanup.policy",
        default: "delete",
        kind: CLEANUP,
        dynamic: true,
    },
    BrokerDef {
        name: "log.cleaner.delete.retention.ms",
        default: "86400000",
        kind: Kind::Long,
        dynamic: true,
    },
    BrokerDef {
        name: "log.cleaner.min.compaction.lag.ms",
        default: "0",
        kind: Kind::Long,
        dynamic: true,
    },
    BrokerDef {
        name: "log.cleaner.min.cleanable.ratio",
        default: "0.5",
        kind: Kind::Double,
        dynamic: true,
    },
    BrokerDef {
        name: "log.message.timestamp.type",
        default: "CreateTime",
        kind: TS_TYPE,
        dynamic: true,
    },
    BrokerDef {
        name: "log.flush.interval.messages",
        default: "9223372036854775807",
        kind: Kind::Long,
        dynamic: true,
    },
    BrokerDef {
        name: "log.flush.interval.ms",
        default: "9223372036854775807",
        kind: Kind::Long,
        dynamic: true,
    },
    BrokerDef {
        name: "compression.type",
        default: "producer",
        kind: COMPRESSION,
        dynamic: true,
    },
    BrokerDef {
        name: "min.insync.replicas",
        default: "1",
        kind: Kind::Int,
        dynamic: true,
    },
    // millrace's own: whether acks=all waits for an fsync (group commit). Kafka relies on replication instead;
    // a single node has only the disk.
    BrokerDef {
        name: "millrace.acks.all.fsync",
        default: "true",
        kind: Kind::Bool,
        dynamic: true,
    },
    BrokerDef {
        name: "transactional.id.expiration.ms",
        default: "604800000",
        kind: Kind::Int,
        dynamic: false,
    },
    BrokerDef {
        name: "producer.id.expiration.ms",
        default: "86400000",
        kind: Kind::Int,
        dynamic: true,
    },
    BrokerDef {
        name: "group.min.session.timeout.ms",
        default: "6000",
        kind: Kind::Int,
        dynamic: false,
    },
    BrokerDef {
        name: "group.max.session.timeout.ms",
        default: "1800000",
        kind: Kind::Int,
        dynamic: false,
    },
    BrokerDef {
        name: "group.initial.rebalance.delay.ms",
        default: "3000",
        kind: Kind::Int,
        dynamic: false,
    },
    BrokerDef {
        name: "offsets.topic.num.partitions",
        default: "50",
        kind: Kind::Int,
        dynamic: false,
    },
    BrokerDef {
        name: "log.cleaner.backoff.ms",
        default: "15000",
        kind: Kind::Long,
        dynamic: false,
    },
    BrokerDef {
        name: "offsets.retention.minutes",
        default: "10080",
        kind: Kind::Int,
        dynamic: false,
    },
    BrokerDef {
        name: "offsets.retention.check.interval.ms",
        default: "600000",
        kind: Kind::Long,
        dynamic: false,
    },
];

pub const TOPIC: &[TopicDef] = &[
    TopicDef {
        name: "cleanup.policy",
        broker_key: Some("log.cleanup.policy"),
        default: "delete",
        kind: CLEANUP,
    },
    TopicDef {
        name: "compression.type",
        broker_key: Some("compression.type"),
        default: "producer",
        kind: COMPRESSION,
    },
    TopicDef {
        name: "delete.retention.ms",
        broker_key: Some("log.cleaner.delete.retention.ms"),
        default: "86400000",
        kind: Kind::Long,
    },
    TopicDef {
        name: "file.delete.delay.ms",
        broker_key: None,
        default: "60000",
        kind: Kind::Long,
    },
    TopicDef {
        name: "flush.messages",
        broker_key: Some("log.flush.interval.messages"),
        default: "9223372036854775807",
        kind: Kind::Long,
    },
    TopicDef {
        name: "flush.ms",
        broker_key: Some("log.flush.interval.ms"),
        default: "9223372036854775807",
        kind: Kind::Long,
    },
    TopicDef {
        name: "index.interval.bytes",
        broker_key: Some("log.index.interval.bytes"),
        default: "4096",
        kind: Kind::Int,
    },
    TopicDef {
        name: "max.message.bytes",
        broker_key: Some("message.max.bytes"),
        default: "1048588",
        kind: Kind::Int,
    },
    TopicDef {
        name: "message.timestamp.type",
        broker_key: Some("log.message.timestamp.type"),
        default: "CreateTime",
        kind: TS_TYPE,
    },
    TopicDef {
        name: "min.cleanable.dirty.ratio",
        broker_key: Some("log.cleaner.min.cleanable.ratio"),
        default: "0.5",
        kind: Kind::Double,
    },
    TopicDef {
        name: "min.compaction.lag.ms",
        broker_key: Some("log.cleaner.min.compaction.lag.ms"),
        default: "0",
        kind: Kind::Long,
    },
    TopicDef {
        name: "min.insync.replicas",
        broker_key: Some("min.insync.replicas"),
        default: "1",
        kind: Kind::Int,
    },
    TopicDef {
        name: "retention.bytes",
        broker_key: Some("log.retention.bytes"),
        default: "-1",
        kind: Kind::Long,
    },
    TopicDef {
        name: "retention.ms",
        broker_key: Some("log.retention.ms"),
        default: "604800000",
        kind: Kind::Long,
    },
    TopicDef {
        name: "segment.bytes",
        broker_key: Some("log.segment.bytes"),
        default: "1073741824",
        kind: Kind::Int,
    },
    TopicDef {
        name: "segment.index.bytes",
        broker_key: Some("log.index.size.max.bytes"),
        default: "10485760",
        kind: Kind::Int,
    },
    TopicDef {
        name: "segment.ms",
        broker_key: Some("log.roll.ms"),
        default: "604800000",
        kind: Kind::Long,
    },
    TopicDef {
        name: "unclean.leader.election.enable",
        broker_key: None,
        default: "false",
        kind: Kind::Bool,
    },
];

pub fn broker_def(name: &str) -> Option<&'static BrokerDef> {
    BROKER.iter().find(|d| d.name == name)
}

pub fn topic_def(name: &str) -> Option<&'static TopicDef> {
    TOPIC.iter().find(|d| d.name == name)
}
