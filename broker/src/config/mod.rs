//! Broker and topic configuration, by Kafka's names.
//!
//! Precedence, lowest first: the defaults in [`defs`], the TOML file, `MILLRACE_*` environment variables, command
//! line flags, then dynamic values set with AlterConfigs (persisted with the topic metadata). Topic settings
//! resolve: the topic's own override, else the broker setting named in [`defs::TopicDef::broker_key`], else the
//! default.

pub mod defs;

use std::collections::BTreeMap;
use std::path::Path;

use parking_lot::RwLock;

use crate::error::{Error, Result};
use defs::{broker_def, topic_def, Kind};

/// Where a value came from, numbered as Kafka's DescribeConfigs ConfigSource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i8)]
pub enum Source {
    TopicConfig = 1,
    DynamicBroker = 2,
    StaticBroker = 4,
    Default = 5,
}

/// The broker's settings.
///
/// Invariant: every value in `fixed` and `dynamic` has passed its [`Kind::validate`]; unknown names are kept
/// (Kafka ignores unknown settings with a warning) but never read.
#[derive(Debug, Default)]
pub struct BrokerConfig {
    fixed: BTreeMap<String, String>,
    dynamic: RwLock<BTreeMap<String, String>>,
}

/// Flattens nested TOML tables into Kafka's dotted names, so that both `log.retention.ms = 1` (a nested table to
/// TOML) and `"log.retention.ms" = 1` mean the same setting.
fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, String)>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, v, out);
            }
        }
        toml::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        toml::Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|i| match i {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            out.push((prefix.to_string(), parts.join(",")));
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

impl BrokerConfig {
    /// Loads settings: the TOML file if given, then the environment (`MILLRACE_LOG_RETENTION_MS` is
    /// `log.retention.ms`), then `overrides` (command line flags).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: impl IntoIterator<Item = (String, String)>,
    ) -> Result<BrokerConfig> {
        let mut pairs = Vec::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
            let value: toml::Value = toml::from_str(&text)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            flatten("", &value, &mut pairs);
        }
        for (k, v) in env {
            // MILLRACE_LOG is the log filter and MILLRACE_BIN the tests' binary, not settings.
            if k == "MILLRACE_LOG" || k == "MILLRACE_BIN" {
                continue;
            }
            if let Some(rest) = k.strip_prefix("MILLRACE_") {
                pairs.push((rest.to_ascii_lowercase().replace('_', "."), v));
            }
        }
        pairs.extend(overrides);
        let mut fixed = BTreeMap::new();
        for (name, value) in pairs {
            match broker_def(&name) {
                Some(def) => {
                    def.kind
                        .validate(&value)
                        .map_err(|reason| Error::InvalidConfigValue {
                            name: name.clone(),
                            reason,
                        })?;
                }
                None => tracing::warn!(setting = %name, "unknown setting, ignored"),
            }
            fixed.insert(name, value);
        }
        Ok(BrokerConfig {
            fixed,
            dynamic: RwLock::new(BTreeMap::new()),
        })
    }

    /// A setting's value and where it came from. Panics only on a name missing from [`defs::BROKER`], which is
    /// a bug in this crate, not input.
    pub fn get_with_source(&self, name: &str) -> (String, Source) {
        if let Some(v) = self.dynamic.read().get(name) {
            return (v.clone(), Source::DynamicBroker);
        }
        if let Some(v) = self.fixed.get(name) {
            return (v.clone(), Source::StaticBroker);
        }
        let def = broker_def(name).map(|d| d.default).unwrap_or_default();
        (def.to_string(), Source::Default)
    }

    pub fn get(&self, name: &str) -> String {
        self.get_with_source(name).0
    }

    /// A value set explicitly (file, env, flag or dynamic), if any.
    pub fn explicit(&self, name: &str) -> Option<String> {
        match self.get_with_source(name) {
            (_, Source::Default) => None,
            (v, _) => Some(v),
        }
    }

    pub fn get_i64(&self, name: &str) -> i64 {
        self.get(name).parse().unwrap_or_else(|_| {
            broker_def(name)
                .and_then(|d| d.default.parse().ok())
                .unwrap_or_default()
        })
    }

    pub fn get_bool(&self, name: &str) -> bool {
        self.get(name) == "true"
    }

    /// Sets (or with `None` removes) a dynamic value after validating it.
    pub fn set_dynamic(&self, name: &str, value: Option<&str>) -> Result<()> {
        let def = broker_def(name).ok_or_else(|| Error::InvalidConfigValue {
            name: name.into(),
            reason: "unknown broker setting".into(),
        })?;
        if !def.dynamic {
            return Err(Error::InvalidConfigValue {
                name: name.into(),
                reason: "cannot be updated dynamically".into(),
            });
        }
        match value {
            Some(v) => {
                def.kind
                    .validate(v)
                    .map_err(|reason| Error::InvalidConfigValue {
                        name: name.into(),
                        reason,
                    })?;
                self.dynamic.write().insert(name.into(), v.into());
            }
            None => {
                self.dynamic.write().remove(name);
            }
        }
        Ok(())
    }

    pub fn dynamic_values(&self) -> BTreeMap<String, String> {
        self.dynamic.read().clone()
    }

    pub fn restore_dynamic(&self, values: BTreeMap<String, String>) {
        *self.dynamic.write() = values;
    }

    /// The resolved value of a topic setting given the topic's overrides.
    pub fn topic_value(
        &self,
        overrides: &BTreeMap<String, String>,
        name: &str,
    ) -> Option<(String, Source)> {
        let def = topic_def(name)?;
        if let Some(v) = overrides.get(name) {
            return Some((v.clone(), Source::TopicConfig));
        }
        if let Some(key) = def.broker_key {
            match self.get_with_source(key) {
                (_, Source::Default) => {}
                other => return Some(other),
            }
        }
        Some((def.default.to_string(), Source::Default))
    }

    pub fn topic_i64(&self, overrides: &BTreeMap<String, String>, name: &str) -> i64 {
        self.topic_value(overrides, name)
            .and_then(|(v, _)| v.parse().ok())
            .unwrap_or_else(|| {
                topic_def(name)
                    .and_then(|d| d.default.parse().ok())
                    .unwrap_or_default()
            })
    }
}

/// Validates one topic override.
pub fn validate_topic_setting(name: &str, value: &str) -> Result<()> {
    let def = topic_def(name).ok_or_else(|| Error::InvalidConfigValue {
        name: name.into(),
        reason: "unknown topic setting".into(),
    })?;
    def.kind
        .validate(value)
        .map_err(|reason| Error::InvalidConfigValue {
            name: name.into(),
            reason,
        })?;
    if matches!(def.kind, Kind::Int | Kind::Long)
        && name.ends_with(".bytes")
        && name != "retention.bytes"
    {
        let v: i64 = value.parse().unwrap_or(0);
        if v <= 0 {
            return Err(Error::InvalidConfigValue {
                name: name.into(),
                reason: "must be positive".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_and_flattening() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.toml");
        std::fs::write(
            &file,
            "num.partitions = 3\n\"log.retention.ms\" = 1000\nlisten = \"0.0.0.0:1\"\n",
        )
        .unwrap();
        let c = BrokerConfig::load(
            Some(&file),
            vec![("MILLRACE_NUM_PARTITIONS".to_string(), "4".to_string())],
            vec![("listen".to_string(), "127.0.0.1:2".to_string())],
        )
        .unwrap();
        assert_eq!(c.get("num.partitions"), "4");
        assert_eq!(c.get("log.retention.ms"), "1000");
        assert_eq!(c.get("listen"), "127.0.0.1:2");
        assert_eq!(c.get("message.max.bytes"), "1048588");
        let none = BTreeMap::new();
        assert_eq!(
            c.topic_value(&none, "retention.ms"),
            Some(("1000".into(), Source::StaticBroker))
        );
        let mut o = BTreeMap::new();
        o.insert("retention.ms".to_string(), "5".to_string());
        assert_eq!(c.topic_i64(&o, "retention.ms"), 5);
    }

    #[test]
    fn invalid_values_are_rejected() {
        let r = BrokerConfig::load(
            None,
            vec![],
            vec![("num.partitions".to_string(), "x".to_string())],
        );
        assert!(r.is_err());
        assert!(validate_topic_setting("cleanup.policy", "compact,delete").is_ok());
        assert!(validate_topic_setting("cleanup.policy", "nope").is_err());
        assert!(validate_topic_setting("segment.bytes", "0").is_err());
        assert!(validate_topic_setting("no.such", "1").is_err());
    }
}
