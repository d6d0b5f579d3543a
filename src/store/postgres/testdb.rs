//! Tests only: a database of its own on the PostgreSQL at 127.0.0.1:5432, named
//! `imd_t_<pid>_<counter>_<random>`, dropped (with its connections) when the value is.

use std::sync::atomic::{AtomicU64, Ordering};

use deadpool_postgres::Pool;

/// Where the tests' PostgreSQL runs (trust auth).
const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// A fresh, empty database; None (with a loud message) when PostgreSQL cannot be reached.
    pub async fn create() -> Option<TestDb> {
        let name = format!(
            "imd_t_{}_{}_{:08x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let client = match admin().await {
            Ok(client) => client,
            Err(e) => {
                eprintln!("SKIPPED: PostgreSQL at {SERVER} cannot be reached ({e}); run .ci/run to start it");
                return None;
            }
        };
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create the test database");
        Some(TestDb { url: format!("{SERVER}/{name}"), name })
    }

    /// A pool of its own on the database, as a node has.
    pub fn pool(&self) -> Pool {
        super::make_pool(&self.url).expect("pool")
    }
}

async fn admin() -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(&format!("{SERVER}/postgres"), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Its own runtime on its own thread: this may run inside a test's runtime.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                match admin().await {
                    Ok(client) => client.batch_execute(&sql).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("cannot drop the test database {}: {e}", self.name);
        }
    }
}
