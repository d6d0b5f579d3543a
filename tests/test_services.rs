//! The service helpers of `tests/common` proven on real processes: an own PostgreSQL that stops,
//! crashes and starts again with its data, an own nats-server that crashes and comes back, and
//! a database on the shared PostgreSQL that is gone after its drop.
mod common;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use common::nats::NatsServer;
use common::pg_instance::PgInstance;
use common::process::port_accepts;
use common::shared_pg::{SharedPgDatabase, psql};

#[tokio::test]
async fn own_postgres_stops_crashes_and_restarts_with_its_data() {
    let Some(mut pg) = PgInstance::start().await else { return };
    let port = pg.port();
    assert!(port_accepts(port).await, "listening on its port");
    assert_eq!(pg.url("kept"), format!("postgres://postgres@127.0.0.1:{port}/kept"));
    pg.create_database("kept").await;
    pg.query("kept", "CREATE TABLE t (n int); INSERT INTO t VALUES (1)").await;
    assert_eq!(pg.query("kept", "SELECT sum(n) FROM t").await, "1");

    pg.stop().await;
    assert!(!port_accepts(port).await, "a stopped server refuses connections");
    pg.start_again().await;
    assert_eq!(pg.query("kept", "SELECT sum(n) FROM t").await, "1", "the data outlives a stop");

    // A committed row survives SIGKILL of every server process (crash recovery on start).
    pg.query("kept", "INSERT INTO t VALUES (2)").await;
    pg.kill9().await;
    assert!(!port_accepts(port).await, "a killed server refuses connections");
    pg.start_again().await;
    assert_eq!(pg.query("kept", "SELECT sum(n) FROM t").await, "3", "committed rows outlive a crash");
    assert_eq!(pg.query("postgres", "SHOW fsync").await, "on");
    assert_eq!(pg.query("postgres", "SHOW listen_addresses").await, "127.0.0.1");
}

/// The INFO line a NATS server greets every client with (bounded wait).
fn nats_info(port: u16) -> String {
    let stream = std::net::TcpStream::connect(common::process::loopback(port)).expect("connect to nats-server");
    stream.set_read_timeout(Some(common::WAIT)).expect("read timeout");
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).expect("the INFO line");
    line
}

#[tokio::test]
async fn own_nats_server_crashes_stops_and_restarts_on_its_port() {
    let Some(mut nats) = NatsServer::start().await else { return };
    let port = nats.port();
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{port}"));
    let info = nats_info(port);
    assert!(info.starts_with("INFO {"), "greeting: {info}");
    assert!(info.contains("\"jetstream\":true"), "JetStream is on: {info}");

    nats.kill9().await;
    assert!(!port_accepts(port).await, "a killed nats-server refuses connections");
    nats.start_again().await;
    assert!(nats_info(port).starts_with("INFO {"), "back on the same port");

    nats.stop().await;
    assert!(!port_accepts(port).await, "a stopped nats-server refuses connections");
    nats.start_again().await;
    assert!(nats_info(port).starts_with("INFO {"), "back after a clean stop");
}

#[tokio::test]
async fn shared_postgres_database_is_made_and_dropped() {
    let Some(db) = SharedPgDatabase::create().await else { return };
    let name = db.name().to_string();
    assert!(name.starts_with(&format!("imd_t_{}_", std::process::id())), "{name}");
    assert_eq!(db.url(), format!("postgres://postgres@127.0.0.1:5432/{name}"));
    assert_eq!(db.query("SELECT current_database()").await, name);
    let other = SharedPgDatabase::create().await.expect("a second database");
    assert_ne!(other.name(), name, "every database has its own name");

    let exists = format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'");
    assert_eq!(psql("postgres", &exists).await, "1");
    drop(db);
    assert_eq!(psql("postgres", &exists).await, "0", "dropped with its value");
    // The drop is synchronous; this bounds the test should psql hang instead.
    tokio::time::timeout(Duration::from_secs(30), async { drop(other) }).await.expect("drop in time");
}
