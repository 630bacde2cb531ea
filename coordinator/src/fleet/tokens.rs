//! Join tokens and the hosts enrolled with them, in two tables of the coordinator's store.
//!
//! Only the SHA-256 of a token's secret is kept. Redeeming a token (checks, one use taken,
//! the host recorded as enrolled, its certificate signed) is one write transaction: two agents
//! racing for a single-use token cannot both get a certificate.

use std::sync::Arc;

use ouroboros_shared::join::JoinToken;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::store::{RedbStore, StoreError, db_err};

/// Join tokens by id, JSON values.
const JOIN_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("join_tokens_v1");
/// Hosts enrolled by token, by host name, JSON values.
const ENROLLED: TableDefinition<&str, &[u8]> = TableDefinition::new("enrolled_hosts_v1");

/// A stored join token: never its secret, only the secret's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub uses_left: u32,
    pub revoked: bool,
    /// Hosts enrolled with it.
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct EnrolledHost {
    token: String,
    issued_ms: i64,
}

/// Why a token enrols nobody; the messages are what the agent prints.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    #[error("join token not valid for this coordinator")]
    Unknown,
    #[error("join token revoked")]
    Revoked,
    #[error("join token expired")]
    Expired,
    #[error("join token already used")]
    Used,
    #[error("host {0} is already enrolled; forget it first")]
    HostEnrolled(String),
    #[error("cannot sign the certificate: {0}")]
    Sign(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The join tokens of a coordinator.
pub struct TokenBook {
    store: Arc<RedbStore>,
}

fn corrupt(key: &str) -> impl FnOnce(serde_json::Error) -> StoreError + '_ {
    move |source| StoreError::CorruptRecord {
        what: "join token",
        key: key.to_owned(),
        source,
    }
}

/// Compares two byte strings in time independent of where they differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl TokenBook {
    /// Opens the tables (creating them).
    pub fn open(store: Arc<RedbStore>) -> Result<Self, StoreError> {
        let txn = store
            .db
            .begin_write()
            .map_err(db_err("begin a transaction"))?;
        txn.open_table(JOIN_TOKENS)
            .map_err(db_err("create the join tokens table"))?;
        txn.open_table(ENROLLED)
            .map_err(db_err("create the enrolled hosts table"))?;
        txn.commit().map_err(db_err("commit"))?;
        Ok(Self { store })
    }

    /// Stores a new token.
    pub fn add(&self, record: &TokenRecord) -> Result<(), StoreError> {
        let value = serde_json::to_vec(record).map_err(corrupt(&record.id))?;
        let txn = self
            .store
            .db
            .begin_write()
            .map_err(db_err("begin a transaction"))?;
        {
            let mut table = txn
                .open_table(JOIN_TOKENS)
                .map_err(db_err("open the join tokens table"))?;
            table
                .insert(record.id.as_str(), value.as_slice())
                .map_err(db_err("store a join token"))?;
        }
        txn.commit().map_err(db_err("commit a join token"))
    }

    /// Every token, oldest first.
    pub fn list(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let txn = self.store.db.begin_read().map_err(db_err("begin a read"))?;
        let table = txn
            .open_table(JOIN_TOKENS)
            .map_err(db_err("open the join tokens table"))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err("read the join tokens"))? {
            let (key, value) = row.map_err(db_err("read a join token"))?;
            let record: TokenRecord =
                serde_json::from_slice(value.value()).map_err(corrupt(key.value()))?;
            out.push(record);
        }
        out.sort_by_key(|r| r.created_ms);
        Ok(out)
    }

    /// Marks a token revoked; `None` when there is no such token.
    pub fn revoke(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let txn = self
            .store
            .db
            .begin_write()
            .map_err(db_err("begin a transaction"))?;
        let record = {
            let mut table = txn
                .open_table(JOIN_TOKENS)
                .map_err(db_err("open the join tokens table"))?;
            let Some(value) = table.get(id).map_err(db_err("read a join token"))? else {
                return Ok(None);
            };
            let mut record: TokenRecord =
                serde_json::from_slice(value.value()).map_err(corrupt(id))?;
            drop(value);
            record.revoked = true;
            let bytes = serde_json::to_vec(&record).map_err(corrupt(id))?;
            table
                .insert(id, bytes.as_slice())
                .map_err(db_err("revoke a join token"))?;
            record
        };
        txn.commit().map_err(db_err("commit a revocation"))?;
        Ok(Some(record))
    }

    /// Whether `host` was enrolled by token.
    pub fn is_enrolled(&self, host: &str) -> Result<bool, StoreError> {
        let txn = self.store.db.begin_read().map_err(db_err("begin a read"))?;
        let table = txn
            .open_table(ENROLLED)
            .map_err(db_err("open the enrolled hosts table"))?;
        Ok(table
            .get(host)
            .map_err(db_err("read an enrolled host"))?
            .is_some())
    }

    /// Forgets that `host` was enrolled (`hosts forget`): its name can enrol again. Returns
    /// whether it was enrolled.
    pub fn forget(&self, host: &str) -> Result<bool, StoreError> {
        let txn = self
            .store
            .db
            .begin_write()
            .map_err(db_err("begin a transaction"))?;
        let was = {
            let mut enrolled = txn
                .open_table(ENROLLED)
                .map_err(db_err("open the enrolled hosts table"))?;
            enrolled
                .remove(host)
                .map_err(db_err("forget an enrolled host"))?
                .is_some()
        };
        txn.commit().map_err(db_err("commit"))?;
        Ok(was)
    }

    /// Checks `token` at `now_ms` for `host` and, in the same transaction, takes one use,
    /// records the host as enrolled and returns what `sign` made. Nothing changes on any
    /// refusal. `known` says whether the fleet view knows the host already.
    pub fn redeem(
        &self,
        token: &JoinToken,
        host: &str,
        known: bool,
        now_ms: i64,
        sign: impl FnOnce() -> Result<String, String>,
    ) -> Result<String, RedeemError> {
        let txn = self
            .store
            .db
            .begin_write()
            .map_err(db_err("begin a transaction"))?;
        let signed = {
            let mut tokens = txn
                .open_table(JOIN_TOKENS)
                .map_err(db_err("open the join tokens table"))?;
            let mut enrolled = txn
                .open_table(ENROLLED)
                .map_err(db_err("open the enrolled hosts table"))?;
            let Some(value) = tokens
                .get(token.id())
                .map_err(db_err("read a join token"))?
            else {
                return Err(RedeemError::Unknown);
            };
            let mut record: TokenRecord =
                serde_json::from_slice(value.value()).map_err(corrupt(token.id()))?;
            drop(value);
            let hash = ouroboros_shared::join::hex(&token.secret_hash());
            if !same_bytes(hash.as_bytes(), record.secret_sha256.as_bytes()) {
                return Err(RedeemError::Unknown);
            }
            if record.revoked {
                return Err(RedeemError::Revoked);
            }
            if now_ms >= record.expires_ms {
                return Err(RedeemError::Expired);
            }
            if record.uses_left == 0 {
                return Err(RedeemError::Used);
            }
            let already = enrolled
                .get(host)
                .map_err(db_err("read an enrolled host"))?
                .is_some();
            if known || already {
                return Err(RedeemError::HostEnrolled(host.to_owned()));
            }
            let signed = sign().map_err(RedeemError::Sign)?;
            record.uses_left -= 1;
            record.hosts.push(host.to_owned());
            let bytes = serde_json::to_vec(&record).map_err(corrupt(token.id()))?;
            tokens
                .insert(token.id(), bytes.as_slice())
                .map_err(db_err("take a join token's use"))?;
            let entry = serde_json::to_vec(&EnrolledHost {
                token: record.id.clone(),
                issued_ms: now_ms,
            })
            .map_err(corrupt(host))?;
            enrolled
                .insert(host, entry.as_slice())
                .map_err(db_err("record an enrolled host"))?;
            signed
        };
        txn.commit().map_err(db_err("commit an enrolment"))?;
        Ok(signed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> (tempfile::TempDir, TokenBook) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(dir.path()).unwrap());
        (dir, TokenBook::open(store).unwrap())
    }

    fn add(book: &TokenBook, token: &JoinToken, expires_ms: i64, uses: u32) {
        book.add(&TokenRecord {
            id: token.id().to_owned(),
            secret_sha256: ouroboros_shared::join::hex(&token.secret_hash()),
            created_ms: 0,
            expires_ms,
            uses_left: uses,
            revoked: false,
            hosts: vec![],
        })
        .unwrap();
    }

    fn sign() -> Result<String, String> {
        Ok("cert".into())
    }

    #[test]
    fn a_token_enrols_as_many_hosts_as_it_has_uses_until_it_expires() {
        let (_dir, book) = book();
        let token = JoinToken::new(&[1; 8], &[2; 32], [3; 32]);
        add(&book, &token, 1000, 2);
        assert_eq!(book.redeem(&token, "a", false, 10, sign).unwrap(), "cert");
        let again = book.redeem(&token, "a", false, 10, sign).unwrap_err();
        assert_eq!(
            again.to_string(),
            "host a is already enrolled; forget it first"
        );
        let known = book.redeem(&token, "k", true, 10, sign).unwrap_err();
        assert!(matches!(known, RedeemError::HostEnrolled(_)), "{known}");
        let late = book.redeem(&token, "b", false, 1000, sign).unwrap_err();
        assert_eq!(late.to_string(), "join token expired");
        book.redeem(&token, "b", false, 999, sign).unwrap();
        let used = book.redeem(&token, "c", false, 10, sign).unwrap_err();
        assert_eq!(used.to_string(), "join token already used");
        let listed = book.list().unwrap();
        assert_eq!(listed[0].hosts, ["a", "b"]);
        assert_eq!(listed[0].uses_left, 0);
        assert!(book.is_enrolled("a").unwrap());
        assert!(book.forget("a").unwrap());
        assert!(!book.is_enrolled("a").unwrap());
        assert!(!book.forget("a").unwrap());
    }

    #[test]
    fn wrong_secret_revoked_and_failed_signing_change_nothing() {
        let (_dir, book) = book();
        let token = JoinToken::new(&[1; 8], &[2; 32], [3; 32]);
        add(&book, &token, 1000, 1);
        let forged = JoinToken::new(&[1; 8], &[9; 32], [3; 32]);
        let err = book.redeem(&forged, "a", false, 10, sign).unwrap_err();
        assert!(matches!(err, RedeemError::Unknown), "{err}");
        let err = book
            .redeem(&token, "a", false, 10, || Err("no".into()))
            .unwrap_err();
        assert!(matches!(err, RedeemError::Sign(_)), "{err}");
        assert_eq!(book.list().unwrap()[0].uses_left, 1);
        assert!(!book.is_enrolled("a").unwrap());
        book.revoke(token.id()).unwrap().unwrap();
        let err = book.redeem(&token, "a", false, 10, sign).unwrap_err();
        assert_eq!(err.to_string(), "join token revoked");
        assert!(book.revoke("nope").unwrap().is_none());
    }
}
