//! (owner C: see /work/notes/s4/MARKET.md)
