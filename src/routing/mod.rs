//! Leaves of the realtime routing: path patterns (and the query string) and subject
//! templates. Nothing here imports the rest of fanfare.

pub mod path;
pub mod subject;
