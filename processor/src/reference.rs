//! The reference pipelines' workloads (`examples/pipelines/{orders_enriched,revenue_by_country,
//! ad_attribution}.toml`) and the outputs they must give, computed the slow, obvious way (nested loops over
//! all the records), for tests and benchmarks to compare against.
//!
//! Workloads are deterministic for a seed. Per user, version timestamps are distinct, so "the row current at
//! an order's time" has one answer whatever the arrival order.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// splitmix64: small, deterministic, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub order_id: String,
    pub user_id: String,
    pub amount: i64,
    pub ts: i64,
}

impl Order {
    pub fn json(&self) -> String {
        json!({"order_id": self.order_id, "user_id": self.user_id, "amount": self.amount, "ts": self.ts})
            .to_string()
    }
}

/// A version of a user: `None` is a tombstone.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    pub user_id: String,
    pub row: Option<(String, String)>,
    pub ts: i64,
}

impl UserRow {
    /// The record value: JSON, or None for a tombstone.
    pub fn json(&self) -> Option<String> {
        self.row.as_ref().map(|(name, country)| {
            json!({"user_id": self.user_id, "name": name, "country": country, "ts": self.ts})
                .to_string()
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Impression {
    pub impression_id: String,
    pub ad_id: String,
    pub ts: i64,
}

impl Impression {
    pub fn json(&self) -> String {
        json!({"impression_id": self.impression_id, "ad_id": self.ad_id, "ts": self.ts}).to_string()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Click {
    pub click_id: String,
    pub ad_id: String,
    pub ts: i64,
}

impl Click {
    pub fn json(&self) -> String {
        json!({"click_id": self.click_id, "ad_id": self.ad_id, "ts": self.ts}).to_string()
    }
}

/// The first event time of every workload (2026-01-01T00:00:00Z).
pub const T0: i64 = 1_767_225_600_000;

const COUNTRIES: [&str; 5] = ["DE", "FR", "JP", "US", "BR"];

/// `orders` orders of `users` users over `span_ms`, and 1 to 3 versions per user (the first at or before
/// T0 for most users, later ones spread over the span; one user in ten is deleted at some point, one in
/// twenty never has a row). Amounts are 1..2000.
pub fn orders_workload(
    seed: u64,
    orders: usize,
    users: usize,
    span_ms: i64,
) -> (Vec<Order>, Vec<UserRow>) {
    let mut rng = Rng::new(seed);
    let users = users.max(1);
    let mut rows = Vec::new();
    for u in 0..users {
        let user_id = format!("u{u}");
        if u % 20 == 19 {
            continue;
        }
        let versions = 1 + rng.below(3) as usize;
        let mut ts = T0 - 1 - rng.below(60_000) as i64;
        for v in 0..versions {
            let deleted = u % 10 == 3 && v == versions - 1 && versions > 1;
            let row = (!deleted).then(|| {
                (
                    format!("name-{u}-{v}"),
                    COUNTRIES[rng.below(COUNTRIES.len() as u64) as usize].to_string(),
                )
            });
            rows.push(UserRow {
                user_id: user_id.clone(),
                row,
                ts,
            });
            ts += 1 + rng.below((span_ms / 2).max(1) as u64) as i64;
        }
    }
    let orders = (0..orders)
        .map(|i| Order {
            order_id: format!("o{i}"),
            user_id: format!("u{}", rng.below(users as u64)),
            amount: 1 + rng.below(1999) as i64,
            ts: T0 + rng.below(span_ms.max(1) as u64) as i64,
        })
        .collect();
    (orders, rows)
}

/// `impressions` impressions and `clicks` clicks over `ads` ads within `span_ms`.
pub fn ads_workload(
    seed: u64,
    impressions: usize,
    clicks: usize,
    ads: usize,
    span_ms: i64,
) -> (Vec<Impression>, Vec<Click>) {
    let mut rng = Rng::new(seed);
    let ads = ads.max(1) as u64;
    let imps = (0..impressions)
        .map(|i| Impression {
            impression_id: format!("i{i}"),
            ad_id: format!("ad{}", rng.below(ads)),
            ts: T0 + rng.below(span_ms.max(1) as u64) as i64,
        })
        .collect();
    let clicks = (0..clicks)
        .map(|i| Click {
            click_id: format!("c{i}"),
            ad_id: format!("ad{}", rng.below(ads)),
            ts: T0 + rng.below(span_ms.max(1) as u64) as i64,
        })
        .collect();
    (imps, clicks)
}

/// The user row current at `ts`: the version with the largest time at or before it.
fn row_at<'a>(users: &'a [UserRow], user: &str, ts: i64) -> Option<&'a (String, String)> {
    users
        .iter()
        .filter(|r| r.user_id == user && r.ts <= ts)
        .max_by_key(|r| r.ts)
        .and_then(|r| r.row.as_ref())
}

/// orders_enriched: order id -> the output value.
pub fn expected_orders_enriched(orders: &[Order], users: &[UserRow]) -> BTreeMap<String, Value> {
    orders
        .iter()
        .map(|o| {
            let row = row_at(users, &o.user_id, o.ts);
            let v = json!({
                "order_id": o.order_id, "user_id": o.user_id, "amount": o.amount, "ts": o.ts,
                "name": row.map(|r| r.0.clone()), "country": row.map(|r| r.1.clone()),
            });
            (o.order_id.clone(), v)
        })
        .collect()
}

/// revenue_by_country: (country, window start) -> (revenue, orders), over tumbling 60 s windows.
pub fn expected_revenue(
    orders: &[Order],
    users: &[UserRow],
) -> BTreeMap<(String, i64), (i64, u64)> {
    let mut m: BTreeMap<(String, i64), (i64, u64)> = BTreeMap::new();
    for o in orders {
        let country =
            row_at(users, &o.user_id, o.ts).map_or("unknown".to_string(), |r| r.1.clone());
        let e = m
            .entry((country, o.ts.div_euclid(60_000) * 60_000))
            .or_default();
        e.0 += o.amount;
        e.1 += 1;
    }
    m
}

/// large_orders: the ids of orders of 1000 or more.
pub fn expected_large(orders: &[Order]) -> Vec<String> {
    let mut v: Vec<String> = orders
        .iter()
        .filter(|o| o.amount >= 1000)
        .map(|o| o.order_id.clone())
        .collect();
    v.sort();
    v
}

/// attributed_clicks: (click id, impression id) -> delay_ms.
pub fn expected_attribution(
    imps: &[Impression],
    clicks: &[Click],
) -> BTreeMap<(String, String), i64> {
    let mut m = BTreeMap::new();
    for c in clicks {
        for i in imps {
            if i.ad_id == c.ad_id && i.ts <= c.ts && c.ts <= i.ts + 600_000 {
                m.insert((c.click_id.clone(), i.impression_id.clone()), c.ts - i.ts);
            }
        }
    }
    m
}

/// An arrival order for `items` (by event time) whose disorder stays within `bound_ms`: each item is
/// delayed by a random amount below the bound, then all are sorted by time plus delay. So when an item
/// arrives, no item seen so far is more than `bound_ms` newer: it is never behind a watermark of
/// max seen - `bound_ms`.
pub fn arrival_order<T>(items: Vec<(i64, T)>, bound_ms: i64, seed: u64) -> Vec<T> {
    let mut rng = Rng::new(seed);
    let mut keyed: Vec<(i64, u64, T)> = items
        .into_iter()
        .map(|(ts, t)| {
            (
                ts + rng.below(bound_ms.max(1) as u64) as i64,
                rng.next_u64(),
                t,
            )
        })
        .collect();
    keyed.sort_by_key(|(at, tie, _)| (*at, *tie));
    keyed.into_iter().map(|(_, _, t)| t).collect()
}
