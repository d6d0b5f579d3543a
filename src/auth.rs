//! Access tokens (HS256 JWT with an absolute expiry and a revocation generation), password
//! hashing (bcrypt, on a small pool of its own: `bcrypt_pool`) and the admin secret.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::bcrypt_pool::{BcryptPool, Busy};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub uid: u64,
    pub name: String,
    /// The user's token generation when issued; logout moves the user's on.
    pub tgen: u64,
    pub iat: u64,
    pub exp: u64,
}

pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub ttl: u64,
    bcrypt_cost: u32,
    /// Checked against when the user does not exist, so that a miss takes as long as a
    /// wrong password.
    dummy_hash: String,
    admin_token: Option<String>,
    /// Where bcrypt runs: a few threads and a bounded queue.
    pool: BcryptPool,
}

impl Auth {
    pub fn new(
        secret: &[u8],
        ttl: u64,
        bcrypt_cost: u32,
        admin_token: Option<String>,
    ) -> Result<Auth, bcrypt::BcryptError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        Ok(Auth {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
            bcrypt_cost,
            dummy_hash: bcrypt::hash("imd-no-such-user", bcrypt_cost)?,
            admin_token: admin_token.filter(|t| !t.is_empty()),
            pool: BcryptPool::new(0, 64),
        })
    }

    /// Runs bcrypt on `threads` threads (0: half the cores) with at most `queue` waiting.
    pub fn with_bcrypt_pool(mut self, threads: usize, queue: usize) -> Auth {
        self.pool = BcryptPool::new(threads, queue);
        self
    }

    /// A new token for `uid`; returns it with its lifetime in seconds.
    pub fn issue(&self, uid: u64, name: &str, tgen: u64) -> (String, u64) {
        let now = now_secs();
        let claims = Claims { uid, name: name.to_string(), tgen, iat: now, exp: now + self.ttl };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).unwrap_or_default();
        (token, self.ttl)
    }

    /// The claims of a well-signed, unexpired token (revocation is checked by the caller).
    pub fn decode(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok().map(|data| data.claims)
    }

    pub fn is_admin_token(&self, token: &str) -> bool {
        self.admin_token.as_ref().is_some_and(|secret| bool::from(secret.as_bytes().ct_eq(token.as_bytes())))
    }

    /// The bcrypt hash (None if hashing failed), or Busy when the pool's queue is full.
    pub async fn hash_password(&self, password: String) -> Result<Option<String>, Busy> {
        let cost = self.bcrypt_cost;
        self.pool.run(move || bcrypt::hash(password, cost).ok()).await
    }

    /// Checks a password against a stored hash, or against a dummy one when there is none.
    /// Busy when the pool's queue is full.
    pub async fn check_password(&self, password: String, hash: Option<String>) -> Result<bool, Busy> {
        let exists = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.clone());
        let matches = self.pool.run(move || bcrypt::verify(password, &hash).unwrap_or(false)).await?;
        Ok(exists && matches)
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(ttl: u64) -> Auth {
        Auth::new(b"test-secret", ttl, 4, Some("admin-secret".into())).unwrap()
    }

    #[test]
    fn issued_tokens_decode_and_others_do_not() {
        let auth = auth(60);
        let (token, ttl) = auth.issue(7, "alice", 3);
        assert_eq!(ttl, 60);
        let claims = auth.decode(&token).expect("valid token");
        assert_eq!((claims.uid, claims.name.as_str(), claims.tgen), (7, "alice", 3));
        let other = Auth::new(b"other-secret", 60, 4, None).unwrap();
        assert!(other.decode(&token).is_none(), "a token signed with another secret is refused");
        assert!(auth.decode("garbage").is_none());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let auth = auth(0);
        let (token, _) = auth.issue(1, "a", 0);
        // exp == now and leeway 0: expired (jsonwebtoken requires exp > now).
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(auth.decode(&token).is_none());
    }

    #[tokio::test]
    async fn an_unknown_user_costs_one_bcrypt_check_like_a_wrong_password() {
        let auth = auth(60);
        // Same cost as real hashes, so a miss does the same work as a wrong password.
        let real = auth.hash_password("right password".into()).await.unwrap().unwrap();
        assert_eq!(&auth.dummy_hash[..7], &real[..7], "same algorithm and cost: {real}");
        assert_eq!(auth.check_password("right password".into(), Some(real.clone())).await, Ok(true));
        assert_eq!(auth.check_password("wrong password".into(), Some(real)).await, Ok(false));
        assert_eq!(auth.check_password("imd-no-such-user".into(), None).await, Ok(false), "no user never logs in");
    }

    #[test]
    fn admin_token_matches_exactly() {
        let auth = auth(60);
        assert!(auth.is_admin_token("admin-secret"));
        assert!(!auth.is_admin_token("admin-secre"));
        assert!(!Auth::new(b"s", 60, 4, Some(String::new())).unwrap().is_admin_token(""));
    }
}
