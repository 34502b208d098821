//! wharf's integration tests: one binary, one module per feature, all against real
//! components (SQLite, Postgres, the real `wharf` binary and real clients).

mod accounts;
mod admin;
mod assurance;
mod bounds;
mod chaos;
mod checksums;
mod cli;
mod clients;
mod cluster;
mod crash;
mod events;
mod exactly_once;
mod folders;
mod ftps;
mod hardening;
mod harness;
mod observability;
mod pgp;
mod scan;
mod sftp;
mod storage;
