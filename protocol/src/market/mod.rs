//! The farmer market on the chain (issue 17): fidelity-bond announcements, lease records,
//! signed adverts, fraud evidence and the score a renter ranks farmers by. Pure formats and
//! arithmetic; the plugin's scanner feeds it blocks.

pub mod advert;
pub mod announce;
pub mod bond;
pub mod evidence;
pub mod lease;
pub mod outcome;
pub mod score;
