//! AceStream orchestrator: keeps a pool of AceStream engines healthy, tracks
//! their usage, records streams and their statistics, and hands stream proxies
//! the engine that has been idle longest.

pub mod api;
pub mod app;
pub mod autoscale;
pub mod collector;
pub mod config;
pub mod domain;
pub mod engine_client;
pub mod health;
pub mod metrics;
pub mod persist;
pub mod playlist;
pub mod pool;
pub mod ports;
pub mod proxy;
pub mod registry;
pub mod retention;
pub mod runtime;
pub mod select;
pub mod serve;
pub mod service;
pub mod store;
pub mod time;
pub mod vpn;
