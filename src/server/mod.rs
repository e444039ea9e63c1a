//! The escrow server. For now the off-line authority: its keys, and issuing recovery packets.

pub mod authority;
