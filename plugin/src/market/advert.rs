//! (owner D: see /work/notes/s4/MARKET.md)
