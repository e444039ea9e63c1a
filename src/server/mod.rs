//! The escrow server: the recovery authority (its keys, issuing recovery packets), DRSK
//! custody in the server's TPM, storage, and the HTTPS API.

pub mod authority;
pub mod backup;
pub mod config;
pub mod custody;
pub mod ekcert;
pub mod http;
pub mod limits;
pub mod shares;
pub mod store;
