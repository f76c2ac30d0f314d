//! (owner A: see /work/notes/s4/MARKET.md)
