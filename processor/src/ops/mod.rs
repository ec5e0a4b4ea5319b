//! The built-in operators, one per file.

mod filter;
mod flat_map;
mod map;
pub mod window;

pub use filter::Filter;
pub use flat_map::FlatMap;
pub use map::Map;
pub use window::WindowAggregate;
pub mod global_window;
pub mod sliding_window;
