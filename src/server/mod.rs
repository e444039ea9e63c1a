//! The escrow server. For now the off-line authority (its keys, issuing recovery packets) and
//! the checks behind DRSK custody.

pub mod authority;
pub mod config;
pub mod ekcert;
pub mod http;
pub mod limits;
pub mod shares;
pub mod store;
