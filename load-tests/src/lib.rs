//! The load generators and benchmarks behind `src/bin/*`: each binary parses its command
//! line and hands over to its module here.

pub mod bench_ingest;
pub mod flood;
pub mod loadgen;
