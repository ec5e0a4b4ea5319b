//! The built-in operators, one per file.

mod filter;
mod flat_map;
pub mod interval_join;
pub mod keyed_process;
mod map;
mod table_aggregate;
pub mod table_join;
pub mod temporal_join;
pub mod window;
pub mod window_join;

pub use filter::Filter;
pub use flat_map::FlatMap;
pub use interval_join::IntervalJoin;
pub use keyed_process::{KeyedContext, KeyedProcess, KeyedProcessFunction};
pub use map::Map;
pub use table_aggregate::TableAggregate;
pub use table_join::TableJoin;
pub use temporal_join::TemporalJoin;
pub use window::WindowAggregate;
pub use window_join::WindowJoin;
pub mod global_window;
pub mod sliding_window;
