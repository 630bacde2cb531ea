//! The agents' certificates by serial: which serials each host has presented or was issued
//! (`host_certs_v1`), and the revoked ones (`revoked_serials_v1`), also kept in memory as the
//! [`DenyList`] that the TLS handshake checks.
//!
//! Serials are recorded for certificates the coordinator signs (enrolment, renewal) and for
//! every agent certificate seen at connection, so that one made offline by `pki issue` is
//! known too by the time its host is forgotten.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::store::{RedbStore, StoreError, db_err};

/// Serials (lower-case hex) of each host's certificates, by host name, JSON lists.
const HOST_CERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("host_certs_v1");
/// Revoked serials (lower-case hex), JSON values.
const REVOKED: TableDefinition<&str, &[u8]> = TableDefinition::new("revoked_serials_v1");

/// Why and when a serial was revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub host: String,
    pub revoked_ms: i64,
}

/// Revoked serials, shared with the TLS verifier: a revocation applies to the next handshake.
#[derive(Debug, Clone, Default)]
pub struct DenyList(Arc<RwLock<HashSet<String>>>);

impl DenyList {
    /// Whether the certificate with this serial (lower-case hex) is revoked.
    pub fn contains(&self, serial: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(serial)
    }

    fn extend(&self, serials: impl IntoIterator<Item = String>) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(serials);
    }
}

/// The certificate serials of the fleet's agents.
pub struct CertBook {
    store: Arc<RedbStore>,
    denied: DenyList,
    /// Serial to host, of every recorded certificate (so that a connection writes only once).
    known: Mutex<BTreeMap<String, String>>,
}

fn corrupt(key: &str) -> impl FnOnce(serde_json::Error) -> StoreError + '_ {
    move |source| StoreError::CorruptRecord {
        what: "certificate serial",
        key: key.to_owned(),
        source,
    }
}

impl CertBook {
    /// Opens the tables (creating them) and loads the revoked serials into `denied` (which the
    /// TLS configuration may already hold).
    pub fn open(store: Arc<RedbStore>, denied: DenyList) -> Result<Self, StoreError> {
        let txn = store
            .db
            .begin_write()
            .map_err(db_err("begin a transaction"))?;
        txn.open_table(HOST_CERTS)
            .map_err(db_err("create the host certificates table"))?;
        txn.open_table(REVOKED)
            .map_err(db_err("create the revoked serials table"))?;
        txn.commit().map_err(db_err("commit"))?;
        let mut known = BTreeMap::new();
        {
            let txn = store.db.begin_read().map_err(db_err("begin a read"))?;
            let revoked = txn
                .open_table(REVOKED)
                .map_err(db_err("open the revoked serials table"))?;
            let mut serials = Vec::new();
            for row in revoked.iter().map_err(db_err("read revoked serials"))? {
                let (key, _) = row.map_err(db_err("read a revoked serial"))?;
                serials.push(key.value().to_owned());
            }
            denied.extend(serials);
            let hosts = txn
                .open_table(HOST_CERTS)
                .map_err(db_err("open the host certificates table"))?;
            for row in hosts.iter().map_err(db_err("read host certificates"))? {
                let (key, value) = row.map_err(db_err("read a host's certificates"))?;
                let serials: BTreeSet<String> =
                    serde_json::from_slice(value.value()).map_err(corrupt(key.value()))?;
                for serial in serials {
                    known.insert(serial, key.value().to_owned());
                }
            }
        }
        Ok(Self {
            store,
            denied,
            known: Mutex::new(known),
        })
    }

    /// The deny-list the TLS verifier checks.
    pub fn deny_list(&self) -> DenyList {
        self.denied.clone()
    }

    /// Whether `serial` is revoked.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.denied.contains(serial)
    }

    /// The recorded serials of `host`.
    pub fn serials(&self, host: &str) -> Vec<String> {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, h)| *h == host)
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Records that `host` holds the certificate `serial` (written once per serial).
    pub fn record(&self, host: &str, serial: &str) -> Result<(), StoreError> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.get(serial).is_some_and(|h| h == host) {
            return Ok(());
        }
        let mut serials: BTreeSet<String> = known
            .iter()
            .filter(|(_, h)| *h == host)
            .map(|(s, _)| s.clone())
            .collect();
        serials.insert(serial.to_owned());
        let bytes = serde_json::to_vec(&serials).map_err(corrupt(host))?;
        let txn = self
            .store
            .db
            .begin_write()
            .map_err(db_err("begin a transaction"))?;
        {
            let mut table = txn
                .open_table(HOST_CERTS)
                .map_err(db_err("open the host certificates table"))?;
            table
                .insert(host, bytes.as_slice())
                .map_err(db_err("record a certificate serial"))?;
        }
        txn.commit()
            .map_err(db_err("commit a certificate serial"))?;
        known.insert(serial.to_owned(), host.to_owned());
        Ok(())
    }

    /// Revokes every recorded serial of `host` and `also` (e.g. the serial of a `pki issue`
    /// certificate never presented), forgets the host's record, and returns the serials
    /// revoked. The deny-list holds them once this returns.
    pub fn revoke_host(
        &self,
        host: &str,
        also: &[String],
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let mut serials: BTreeSet<String> = known
            .iter()
            .filter(|(_, h)| *h == host)
            .map(|(s, _)| s.clone())
            .collect();
        serials.extend(also.iter().cloned());
        let revocation = serde_json::to_vec(&Revocation {
            host: host.to_owned(),
            revoked_ms: now_ms,
        })
        .map_err(corrupt(host))?;
        let txn = self
            .store
            .db
            .begin_write()
            .map_err(db_err("begin a transaction"))?;
        {
            let mut revoked = txn
                .open_table(REVOKED)
                .map_err(db_err("open the revoked serials table"))?;
            for serial in &serials {
                revoked
                    .insert(serial.as_str(), revocation.as_slice())
                    .map_err(db_err("revoke a serial"))?;
            }
            let mut hosts = txn
                .open_table(HOST_CERTS)
                .map_err(db_err("open the host certificates table"))?;
            hosts
                .remove(host)
                .map_err(db_err("forget a host's certificates"))?;
        }
        txn.commit().map_err(db_err("commit a revocation"))?;
        known.retain(|_, h| h != host);
        self.denied.extend(serials.iter().cloned());
        Ok(serials.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_serials_are_denied_at_once_and_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let book = CertBook::open(
                Arc::new(RedbStore::open(dir.path()).unwrap()),
                DenyList::default(),
            )
            .unwrap();
            let denied = book.deny_list();
            book.record("a", "01").unwrap();
            book.record("a", "02").unwrap();
            book.record("b", "03").unwrap();
            assert_eq!(book.serials("a"), ["01", "02"]);
            let revoked = book.revoke_host("a", &["0f".to_owned()], 7).unwrap();
            assert_eq!(revoked, ["01", "02", "0f"]);
            assert!(
                denied.contains("02") && denied.contains("0f"),
                "shared list updated"
            );
            assert!(!denied.contains("03"));
            assert!(book.serials("a").is_empty());
        }
        let book = CertBook::open(
            Arc::new(RedbStore::open(dir.path()).unwrap()),
            DenyList::default(),
        )
        .unwrap();
        assert!(book.is_revoked("01") && book.is_revoked("0f"));
        assert!(!book.is_revoked("03"));
        assert_eq!(book.serials("b"), ["03"]);
    }
}
