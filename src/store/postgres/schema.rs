//! Schema migrations from `sql/pg/`, applied at start in one transaction that holds an
//! advisory lock, so that nodes starting together migrate once; `schema_migrations` records
//! which have run.

use deadpool_postgres::Pool;

use crate::store::StoreResult;

const MIGRATIONS: &[&str] = &[include_str!("../../../sql/pg/001_init.sql")];

/// The key of the transaction-level advisory lock every migrating node takes first (any fixed
/// number; "imd" and the schema in ASCII).
const MIGRATION_LOCK: i64 = 0x696d_645f_7363_6865;

/// Applies the migrations not applied yet, all in one transaction.
pub(super) async fn migrate(pool: &Pool) -> StoreResult<()> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Held until the commit: a second node waits here, then finds everything applied.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .await?;
    let applied: Vec<i64> =
        tx.query("SELECT version FROM schema_migrations", &[]).await?.iter().map(|row| row.get(0)).collect();
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let version = index as i64 + 1;
        if applied.contains(&version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[&version, &crate::now_ms()],
        )
        .await?;
        tracing::info!("PostgreSQL schema migrated to version {version}");
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::testdb::TestDb;

    async fn versions(pool: &Pool) -> Vec<i64> {
        let client = pool.get().await.unwrap();
        client
            .query("SELECT version FROM schema_migrations ORDER BY version", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    #[tokio::test]
    async fn migrating_twice_is_a_no_op() {
        let Some(db) = TestDb::create().await else { return };
        let pool = db.pool();
        migrate(&pool).await.unwrap();
        migrate(&pool).await.unwrap();
        assert_eq!(versions(&pool).await, (1..=MIGRATIONS.len() as i64).collect::<Vec<_>>());
        let client = pool.get().await.unwrap();
        let system: i64 = client
            .query_one("SELECT COUNT(*) FROM conversations WHERE chat_id = '0_system'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(system, 1);
    }

    /// Two nodes starting together: without the lock, the second CREATE TABLE fails (or the
    /// migration runs twice); with it, both succeed and each version is recorded once.
    #[tokio::test]
    async fn two_nodes_migrating_at_once_migrate_once() {
        let Some(db) = TestDb::create().await else { return };
        let (one, two) = (db.pool(), db.pool());
        let (a, b) = tokio::join!(migrate(&one), migrate(&two));
        a.unwrap();
        b.unwrap();
        assert_eq!(versions(&one).await, (1..=MIGRATIONS.len() as i64).collect::<Vec<_>>());
    }
}
