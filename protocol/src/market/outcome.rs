//! (owner B: see /work/notes/s4/MARKET.md)
