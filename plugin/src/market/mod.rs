//! The renter's view of the farmer market (issue 17): a chain scanner, the farmer table in
//! RocksDB, announcements and bonds, adverts, the evidence board, and choosing a farmer.

pub mod advert;
pub mod announce;
pub mod evidence;
pub mod methods;
pub mod scanner;
pub mod store;
pub mod table;
