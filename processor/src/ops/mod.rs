//! The built-in operators, one per file.

mod filter;
mod flat_map;
pub mod keyed_process;
mod map;
pub mod window;

pub use filter::Filter;
pub use flat_map::FlatMap;
pub use keyed_process::{KeyedContext, KeyedProcess, KeyedProcessFunction};
pub use map::Map;
pub use window::WindowAggregate;
