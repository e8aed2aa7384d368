//! Helpers for the tests under `tests/tests/`, which run against the live local stack
//! (`scripts/stack-up`). Addresses come from the same `AIFAB_*` variables the services
//! read, with the same loopback defaults.
//!
//! Everything is re-exported here, so tests (and load-tests' `loadgen` and `chaos`) use
//! `aifab_tests::*` whatever module an item lives in:
//! - `stack`: where the broker, NATS and Redis are; private stacks and servers that fault
//!   tests stop and restart.
//! - `fixtures`: unique names, inference requests, tiny models, the SMS data split.
//! - `kafka`: topics, producing, dead letters; `readers`: read_committed topic readers.
//! - `http`: requests to the services' HTTP APIs and their metrics.
//! - `cluster`: a three-broker stack of the test's own (`scripts/stack-up --brokers 3`)
//!   whose nodes a test kills; `timeline`: rates and stalls from when predictions arrived.
//! - `secure`: a stack of the test's own from `scripts/stack-up --secure`, and each
//!   service's credentials on it.
//! - `process`: service binaries: start, stop, wait ready, logs.
//! - `worker`: inference-worker deployments ([`WorkerRun`]).
//! - `chaos`: worker-kill scenarios and delivery counting.
//! - `wait`: polling for a condition with a deadline.

mod chaos;
mod cluster;
mod fixtures;
mod http;
mod kafka;
mod process;
mod readers;
mod secure;
mod stack;
mod timeline;
mod wait;
mod worker;

pub use chaos::*;
pub use cluster::*;
pub use fixtures::*;
pub use http::*;
pub use kafka::*;
pub use process::*;
pub use readers::*;
pub use secure::*;
pub use stack::*;
pub use timeline::*;
pub use wait::*;
pub use worker::*;
