//! Generated code for the `ouroboros.v1` protocol. Nothing but the generated modules lives here;
//! conversions to domain types are in `ouroboros-shared`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod v1 {
    tonic::include_proto!("ouroboros.v1");
}

impl std::fmt::Debug for v1::RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |s: &String| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &set(&self.password))
            .field("identity_token", &set(&self.identity_token))
            .field("registry_token", &set(&self.registry_token))
            .finish()
    }
}

impl std::fmt::Debug for v1::EnrolRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrolRequest")
            .field("token", &"<redacted>")
            .field("host", &self.host)
            .field("csr_der", &self.csr_der.len())
            .finish()
    }
}

impl std::fmt::Debug for v1::CreateJoinTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateJoinTokenResponse")
            .field("token", &"<redacted>")
            .field("info", &self.info)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn registry_auth_debug_shows_no_secret() {
        let auth = super::v1::RegistryAuth {
            username: "alice".into(),
            password: "pw-sentinel".into(),
            identity_token: "id-sentinel".into(),
            registry_token: "rt-sentinel".into(),
        };
        let shown = format!("{auth:?}");
        assert!(shown.contains("alice"), "{shown}");
        assert!(!shown.contains("sentinel"), "{shown}");
    }

    #[test]
    fn join_token_messages_debug_shows_no_token() {
        let request = super::v1::EnrolRequest {
            token: "ouro1.token-sentinel".into(),
            host: "web-01".into(),
            csr_der: vec![1, 2, 3],
        };
        let shown = format!("{request:?}");
        assert!(shown.contains("web-01"), "{shown}");
        assert!(!shown.contains("sentinel"), "{shown}");
        let created = super::v1::CreateJoinTokenResponse {
            token: "ouro1.token-sentinel".into(),
            info: None,
        };
        assert!(!format!("{created:?}").contains("sentinel"));
    }
}
