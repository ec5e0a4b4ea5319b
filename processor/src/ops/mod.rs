//! The built-in operators, one per file.

mod filter;
mod flat_map;
mod map;
mod table_aggregate;
pub mod window;

pub use filter::Filter;
pub use flat_map::FlatMap;
pub use map::Map;
pub use table_aggregate::TableAggregate;
pub use window::WindowAggregate;
