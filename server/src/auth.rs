//! Users, passwords and tokens: the users file (TOML: name, argon2 password hash, role,
//! namespace), the first-start admin, and the signed, expiring bearer tokens.
//!
//! A token is `tera1.<payload>.<signature>`: the payload is the claims as JSON
//! (`{"sub","ns","role","iat","exp"}`), base64url without padding, and the signature is
//! HMAC-SHA256 over `tera1.<payload>` with the install's secret (32 random bytes in
//! `token.key` in the data directory, mode 0600), base64url. Verification checks the signature
//! in constant time, then the expiry. Tokens cannot be revoked one by one: replacing
//! `token.key` (and restarting) revokes them all.
//!
//! Each user owns one namespace, its number kept in the users file (the first admin gets 1,
//! each added user the next free one). A user reaches only its own namespace; an admin any.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

const TOKEN_PREFIX: &str = "tera1";
/// The namespace of the first admin.
pub const FIRST_NAMESPACE: u64 = 1;

/// What the auth layer can fail at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("users file {path} does not parse: {reason}")]
    UsersFile { path: PathBuf, reason: String },
    #[error("user {0:?} exists already")]
    UserExists(String),
    #[error("bad user name {0:?}: use 1 to 64 letters, digits, '.', '_' or '-'")]
    BadName(String),
    #[error("the system's random source failed: {0}")]
    Random(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Why a token was refused. Each maps to UNAUTHENTICATED; the text says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token: send `authorization: Bearer <token>` metadata (get a token from tera.auth.v1.Auth/Token, or run `teractl login`)")]
    Missing,
    #[error("malformed token: {0} (get a new one from tera.auth.v1.Auth/Token)")]
    Malformed(&'static str),
    #[error("token signature does not verify: the token was altered or signed by another server (get a new one from tera.auth.v1.Auth/Token)")]
    BadSignature,
    #[error("token expired at {0} (seconds since the epoch): get a new one from tera.auth.v1.Auth/Token, or run `teractl login` again")]
    Expired(i64),
    #[error("the token's user was removed, or its password, role or namespace changed, since the token was issued: log in again")]
    Revoked,
}

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reaches its own namespace only.
    User,
    /// Reaches every namespace.
    Admin,
}

/// One user of the users file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// Argon2 PHC string (`$argon2id$v=19$...`).
    pub password_hash: String,
    pub role: Role,
    pub namespace: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    /// The namespace the next user added gets at least: namespaces are never handed out
    /// twice, so a removed user's files do not go to the next user added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_namespace: Option<u64>,
    #[serde(default, rename = "user")]
    users: Vec<User>,
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user name.
    pub sub: String,
    /// The user's namespace.
    pub ns: u64,
    pub role: Role,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
    /// The fingerprint of the user's password hash when the token was issued
    /// ([`fingerprint`]): a new password revokes the tokens issued before it.
    #[serde(default)]
    pub pwd: String,
}

/// A short fingerprint of a password hash (the first 8 bytes of its SHA-256, in hex). It is
/// carried in tokens so that changing a user's password revokes them; it tells nothing of the
/// password itself.
pub fn fingerprint(password_hash: &str) -> String {
    use sha2::Digest;
    hex_encode(&Sha256::digest(password_hash.as_bytes())[..8])
}

impl Claims {
    /// The namespace a request reaches: `requested`, or the caller's own for 0. `None` when the
    /// caller may not reach it.
    pub fn namespace(&self, requested: u64) -> Option<u64> {
        match requested {
            0 => Some(self.ns),
            n if n == self.ns || self.role == Role::Admin => Some(n),
            _ => None,
        }
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(b)
}

/// Signs and verifies tokens with one secret.
#[derive(Clone)]
pub struct TokenKey {
    key: [u8; 32],
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    pub fn new(key: [u8; 32]) -> TokenKey {
        TokenKey { key }
    }

    /// Load the key from `path` (hex), or create it there (mode 0600) if missing.
    pub fn load_or_create(path: &Path) -> Result<TokenKey, AuthError> {
        let io = |source| AuthError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(s) => {
                let bytes = hex_decode(s.trim()).filter(|b| b.len() == 32).ok_or_else(|| {
                    io(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "not 64 hex digits (delete it to have a new key made: every token is then revoked)",
                    ))
                })?;
                let mut key = [0u8; 32];
                key.copy_from_slice(&bytes);
                Ok(TokenKey { key })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = random_bytes::<32>()?;
                write_private(path, format!("{}\n", hex_encode(&key)).as_bytes())?;
                Ok(TokenKey { key })
            }
            Err(e) => Err(io(e)),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes a key of any length: this cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!())
    }

    /// A signed token carrying `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        // Serializing a struct of strings and integers cannot fail.
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let signed = format!("{TOKEN_PREFIX}.{}", B64.encode(json));
        let mut mac = self.mac();
        mac.update(signed.as_bytes());
        let sig = mac.finalize().into_bytes();
        format!("{signed}.{}", B64.encode(sig))
    }

    /// The claims of a token this key signed, if it has not expired at `now`.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let (signed, sig) = token
            .rsplit_once('.')
            .ok_or(TokenError::Malformed("no signature"))?;
        let (prefix, payload) = signed
            .split_once('.')
            .ok_or(TokenError::Malformed("no payload"))?;
        if prefix != TOKEN_PREFIX {
            return Err(TokenError::Malformed("not a tera1 token"));
        }
        let sig = B64
            .decode(sig)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        let mut mac = self.mac();
        mac.update(signed.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        let json = B64
            .decode(payload)
            .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
        let claims: Claims = serde_json::from_slice(&json)
            .map_err(|_| TokenError::Malformed("payload is not the claims"))?;
        if claims.exp <= now {
            return Err(TokenError::Expired(claims.exp));
        }
        Ok(claims)
    }
}

/// Tokens already verified, with their claims. A client sends the same token on every call,
/// and checking its signature and parsing its claims each time cost about a tenth of a stat's
/// server time. Only tokens whose signature checked are remembered, and expiry is checked on
/// every call; the cache is emptied when it reaches [`VerifiedTokens::CAP`] tokens.
#[derive(Debug, Default)]
pub struct VerifiedTokens {
    by_token: RwLock<HashMap<Box<str>, Arc<Claims>>>,
}

impl VerifiedTokens {
    /// Tokens remembered at most.
    pub const CAP: usize = 4096;

    /// `key.verify(token, now)`, remembering the claims of a token that verifies.
    pub fn verify(&self, key: &TokenKey, token: &str, now: i64) -> Result<Claims, TokenError> {
        let hit = self
            .by_token
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned();
        if let Some(c) = hit {
            if c.exp <= now {
                return Err(TokenError::Expired(c.exp));
            }
            return Ok((*c).clone());
        }
        let claims = key.verify(token, now)?;
        let mut cache = self
            .by_token
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= Self::CAP {
            cache.clear();
        }
        cache.insert(token.into(), Arc::new(claims.clone()));
        Ok(claims)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_token
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The users, loaded from the users file and loaded again when it changes (so that
/// `terad user add` takes effect without a restart).
#[derive(Debug)]
pub struct Users {
    path: PathBuf,
    state: RwLock<Loaded>,
    /// When the file was last checked for changes by [`Users::check_current`], in seconds
    /// since the epoch: at most once a second.
    checked: std::sync::atomic::AtomicI64,
}

#[derive(Debug, Default)]
struct Loaded {
    /// Each user, with its password [`fingerprint`] (computed once per load: every call
    /// checks it).
    by_name: HashMap<String, (Arc<User>, String)>,
    /// The SHA-256 of the file's text: the file is parsed again only when it changed (its
    /// modification time can stay the same over two quick edits).
    digest: Option<[u8; 32]>,
}

/// What [`Users::open`] did on a first start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    /// Where the first admin's password was written.
    pub password_file: PathBuf,
}

impl Users {
    /// Load the users file. If it is missing or names no user, create the admin user with a
    /// random password, written to `admin-password` (mode 0600) in `data_dir`.
    pub fn open(path: &Path, data_dir: &Path) -> Result<(Users, Option<Bootstrap>), AuthError> {
        let mut boot = None;
        if read_file(path)?.users.is_empty() {
            let password = random_password()?;
            // The password first: a crash between the two writes leaves no users, and the
            // next start makes the admin again, instead of an admin whose password no one has.
            let password_file = data_dir.join("admin-password");
            write_private(&password_file, format!("{password}\n").as_bytes())?;
            add_user(path, "admin", Role::Admin, &password)?;
            boot = Some(Bootstrap { password_file });
        }
        let users = Users {
            path: path.to_path_buf(),
            state: RwLock::new(Loaded::default()),
            checked: std::sync::atomic::AtomicI64::new(0),
        };
        users.reload()?;
        Ok((users, boot))
    }

    /// Load the file again if its text changed.
    pub fn reload(&self) -> Result<(), AuthError> {
        use sha2::Digest;
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(AuthError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        {
            let s = self.state.read().unwrap_or_else(|p| p.into_inner());
            if s.digest == Some(digest) {
                return Ok(());
            }
        }
        let file = parse_file(&self.path, &text)?;
        let by_name = file
            .users
            .into_iter()
            .map(|u| {
                let f = fingerprint(&u.password_hash);
                (u.name.clone(), (Arc::new(u), f))
            })
            .collect();
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        *s = Loaded {
            by_name,
            digest: Some(digest),
        };
        Ok(())
    }

    /// The user with this name and password, if both match. Slow on purpose (argon2): call it
    /// off the async runtime. Unknown users cost a hash too, so that timing tells nothing.
    pub fn check_password(&self, name: &str, password: &str) -> Option<Arc<User>> {
        if let Err(e) = self.reload() {
            tracing::warn!(error = %e, "users file not reloaded; using the users loaded before");
        }
        let user = self
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_name
            .get(name)
            .map(|(u, _)| u.clone());
        let hash = user
            .as_ref()
            .map(|u| u.password_hash.clone())
            .unwrap_or_else(|| DUMMY_HASH.to_string());
        let ok = PasswordHash::new(&hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        user.filter(|_| ok)
    }

    /// Whether the token's claims still describe its user: the user is in the users file,
    /// with the namespace, role and password the token was issued for. The file is checked
    /// for changes at most once a second.
    pub fn check_current(&self, claims: &Claims) -> Result<(), TokenError> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = now_secs();
        if self.checked.swap(now, Relaxed) != now {
            if let Err(e) = self.reload() {
                tracing::warn!(error = %e, "users file not reloaded; using the users loaded before");
            }
        }
        let s = self.state.read().unwrap_or_else(|p| p.into_inner());
        match s.by_name.get(&claims.sub) {
            Some((u, f))
                if u.namespace == claims.ns && u.role == claims.role && *f == claims.pwd =>
            {
                Ok(())
            }
            _ => Err(TokenError::Revoked),
        }
    }

    /// Whether a user of this name is in the users file (as last loaded).
    pub fn knows(&self, name: &str) -> bool {
        let s = self.state.read().unwrap_or_else(|p| p.into_inner());
        s.by_name.contains_key(name)
    }

    /// Every user (for namespaces to create at start).
    pub fn all(&self) -> Vec<Arc<User>> {
        let s = self.state.read().unwrap_or_else(|p| p.into_inner());
        s.by_name.values().map(|(u, _)| u.clone()).collect()
    }
}

/// An argon2 hash of a password no one has, checked for unknown users.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$9m2TmLcBQUv8gIWbWDZ5lXsDxL4zO0o1c3GfnGxbNbE";

fn read_file(path: &Path) -> Result<UsersFile, AuthError> {
    match std::fs::read_to_string(path) {
        Ok(s) => parse_file(path, &s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UsersFile::default()),
        Err(source) => Err(AuthError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Parse and check the users file's text.
fn parse_file(path: &Path, s: &str) -> Result<UsersFile, AuthError> {
    let bad = |reason: String| AuthError::UsersFile {
        path: path.to_path_buf(),
        reason,
    };
    // Where it failed, not what: the parser's message can quote the line or the value, which
    // may be a password hash, and this error is logged.
    let file: UsersFile = toml::from_str(s).map_err(|e| {
        let line = e.span().map(|r| {
            let end = r.start.min(s.len());
            s.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
        });
        let what = "not a valid users entry (each [[user]] has name, password_hash, role = user \
                    or admin, and namespace, a number)";
        bad(match line {
            Some(l) => format!("line {l}: {what}"),
            None => what.to_string(),
        })
    })?;
    let mut names = std::collections::HashSet::new();
    let mut namespaces = std::collections::HashSet::new();
    for u in &file.users {
        if !names.insert(&u.name) {
            return Err(bad(format!("user {:?} is there twice", u.name)));
        }
        if u.namespace < FIRST_NAMESPACE || !namespaces.insert(u.namespace) {
            return Err(bad(format!(
                "user {:?} has namespace {}, which is 0 or another user's",
                u.name, u.namespace
            )));
        }
    }
    Ok(file)
}

/// An argon2id hash of `password`, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()?)
        .map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// A random password: 24 characters of base64url (144 bits).
pub fn random_password() -> Result<String, AuthError> {
    Ok(B64.encode(random_bytes::<18>()?))
}

/// Add a user to the users file (created if missing, mode 0600), with the next free
/// namespace. Returns the user.
pub fn add_user(path: &Path, name: &str, role: Role, password: &str) -> Result<User, AuthError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return Err(AuthError::BadName(name.into()));
    }
    let mut file = read_file(path)?;
    if file.users.iter().any(|u| u.name == name) {
        return Err(AuthError::UserExists(name.into()));
    }
    let namespace = file
        .users
        .iter()
        .map(|u| u.namespace + 1)
        .chain(file.next_namespace)
        .max()
        .unwrap_or(FIRST_NAMESPACE)
        .max(FIRST_NAMESPACE);
    let user = User {
        name: name.into(),
        password_hash: hash_password(password)?,
        role,
        namespace,
    };
    file.users.push(user.clone());
    file.next_namespace = Some(namespace + 1);
    let body = toml::to_string(&file).map_err(|e| AuthError::Hash(e.to_string()))?;
    let text = format!(
        "# terad users: name, argon2 password hash, role (user or admin) and namespace.\n\
         # Add users with `terad user add NAME`; terad reloads this file when it changes.\n\n{body}"
    );
    write_private(path, text.as_bytes())?;
    Ok(user)
}

/// Write a file readable by its owner only (0600), atomically (a temporary file renamed).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    // A temporary file left by a crash may have other permissions (or be a link): start anew.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "alice".into(),
            ns: 7,
            role: Role::User,
            iat: 100,
            exp,
            pwd: String::new(),
        }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let k = TokenKey::new([7; 32]);
        let t = k.sign(&claims(1000));
        assert!(t.starts_with("tera1."));
        assert_eq!(k.verify(&t, 999), Ok(claims(1000)));
        assert_eq!(k.verify(&t, 1000), Err(TokenError::Expired(1000)));
    }

    #[test]
    fn remembered_tokens_still_expire_and_bad_ones_are_not_remembered() {
        let k = TokenKey::new([7; 32]);
        let cache = VerifiedTokens::default();
        let t = k.sign(&claims(1000));
        assert_eq!(cache.verify(&k, &t, 10), Ok(claims(1000)));
        assert_eq!(cache.len(), 1);
        assert_eq!(
            cache.verify(&k, &t, 999),
            Ok(claims(1000)),
            "from the cache"
        );
        assert_eq!(cache.verify(&k, &t, 1000), Err(TokenError::Expired(1000)));
        // A character in the middle of the signature changed.
        let mut bad = t.clone().into_bytes();
        let i = bad.len() - 10;
        bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        assert_eq!(cache.verify(&k, &bad, 10), Err(TokenError::BadSignature));
        assert_eq!(cache.len(), 1, "a token that failed is not remembered");
        // Filling it past its cap empties it instead of growing.
        for i in 0..VerifiedTokens::CAP as i64 + 1 {
            cache.verify(&k, &k.sign(&claims(2000 + i)), 10).unwrap();
        }
        assert!(cache.len() <= VerifiedTokens::CAP);
    }

    #[test]
    fn a_tampered_or_foreign_token_is_refused() {
        let k = TokenKey::new([7; 32]);
        let t = k.sign(&claims(1000));
        // Another key.
        assert_eq!(
            TokenKey::new([8; 32]).verify(&t, 0),
            Err(TokenError::BadSignature)
        );
        // Claims swapped for an admin's, signature kept.
        let mut forged = claims(1000);
        forged.role = Role::Admin;
        let forged_payload = B64.encode(serde_json::to_vec(&forged).unwrap_or_default());
        let sig = t.rsplit_once('.').map(|x| x.1).unwrap_or_default();
        let bad = format!("tera1.{forged_payload}.{sig}");
        assert_eq!(k.verify(&bad, 0), Err(TokenError::BadSignature));
        // One signature byte changed.
        let mut chars: Vec<char> = t.chars().collect();
        let last = chars.len() - 2;
        chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
        let flipped: String = chars.into_iter().collect();
        assert_eq!(k.verify(&flipped, 0), Err(TokenError::BadSignature));
        // Not a token at all.
        assert!(matches!(
            k.verify("hello", 0),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            k.verify("jwt.abc.def", 0),
            Err(TokenError::Malformed(_))
        ));
    }

    /// A token stops working when its user is removed from the users file, or its password,
    /// role or namespace changes, and works again with a fresh login.
    #[test]
    fn tokens_are_revoked_when_their_user_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.toml");
        let (users, _) = Users::open(&path, dir.path()).expect("open");
        let bob = add_user(&path, "bob", Role::User, "pw-1").expect("add");
        users.reload().expect("reload");
        let issued = |u: &User| Claims {
            sub: u.name.clone(),
            ns: u.namespace,
            role: u.role,
            iat: 0,
            exp: i64::MAX,
            pwd: fingerprint(&u.password_hash),
        };
        let token = issued(&bob);
        assert_eq!(users.check_current(&token), Ok(()));
        let edit = |f: &dyn Fn(&mut UsersFile)| {
            let mut file = read_file(&path).expect("read");
            f(&mut file);
            std::fs::write(&path, toml::to_string(&file).expect("toml")).expect("write");
            users.reload().expect("reload");
        };
        // A new password.
        edit(&|f| f.users[1].password_hash = hash_password("pw-2").expect("hash"));
        assert_eq!(users.check_current(&token), Err(TokenError::Revoked));
        let bob = users
            .check_password("bob", "pw-2")
            .expect("the new password");
        let token = issued(&bob);
        assert_eq!(users.check_current(&token), Ok(()));
        // Promoted: the old token does not carry the admin role, and is refused.
        edit(&|f| f.users[1].role = Role::Admin);
        assert_eq!(users.check_current(&token), Err(TokenError::Revoked));
        edit(&|f| f.users[1].role = Role::User);
        assert_eq!(users.check_current(&token), Ok(()));
        // Removed.
        edit(&|f| {
            f.users.remove(1);
        });
        assert_eq!(users.check_current(&token), Err(TokenError::Revoked));
        // A token from before fingerprints (none in it) is refused too.
        let old = Claims {
            pwd: String::new(),
            ..issued(&users.all()[0])
        };
        assert_eq!(users.check_current(&old), Err(TokenError::Revoked));
    }

    /// A removed user's namespace never goes to a user added later: the file remembers the
    /// next namespace to hand out.
    #[test]
    fn namespaces_are_never_handed_out_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.toml");
        Users::open(&path, dir.path()).expect("open");
        let carol = add_user(&path, "carol", Role::User, "pw").expect("add");
        assert_eq!(carol.namespace, FIRST_NAMESPACE + 1);
        // The operator removes carol by deleting her entry.
        let mut file = read_file(&path).expect("read");
        file.users.retain(|u| u.name != "carol");
        std::fs::write(&path, toml::to_string(&file).expect("toml")).expect("write");
        let dave = add_user(&path, "dave", Role::User, "pw").expect("add");
        assert_eq!(dave.namespace, FIRST_NAMESPACE + 2, "not carol's");
    }

    /// A users file that does not parse, or names a user twice, or gives two users one
    /// namespace, is refused; the error says where, without quoting the line (it may hold a
    /// password hash, and the error is logged).
    #[test]
    fn a_bad_users_file_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.toml");
        let user = |name: &str, ns: u64| {
            format!(
                "[[user]]\nname = \"{name}\"\npassword_hash = \"$argon2id$x\"\nrole = \"user\"\nnamespace = {ns}\n"
            )
        };
        for (text, want) in [
            (
                format!(
                    "{}password_hash = \"$argon2id$secret-hash\" oops\n",
                    user("a", 1)
                ),
                "line 6",
            ),
            (format!("{}{}", user("a", 1), user("a", 2)), "there twice"),
            (
                format!("{}{}", user("a", 1), user("b", 1)),
                "another user's",
            ),
            (user("a", 0), "0 or another"),
            (
                user("a", 1).replace("role = \"user\"", "role = \"$argon2id$secret-hash\""),
                "line 4",
            ),
        ] {
            std::fs::write(&path, &text).expect("write");
            let e = read_file(&path).expect_err("refused").to_string();
            assert!(e.contains(want), "{e}");
            assert!(!e.contains("secret-hash"), "{e}");
        }
    }

    /// A temporary file a crash left with other permissions does not pass them on.
    #[test]
    fn private_files_are_private_whatever_was_left_behind() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token.key");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, b"old").expect("write");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_private(&path, b"secret").expect("write_private");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).expect("read"), b"secret");
    }

    #[test]
    fn users_reach_their_namespace_and_admins_all() {
        let user = claims(1);
        assert_eq!(user.namespace(0), Some(7));
        assert_eq!(user.namespace(7), Some(7));
        assert_eq!(user.namespace(8), None);
        let admin = Claims {
            role: Role::Admin,
            ..claims(1)
        };
        assert_eq!(admin.namespace(8), Some(8));
    }

    #[test]
    fn first_start_makes_an_admin_with_a_private_password_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.toml");
        let (users, boot) = Users::open(&path, dir.path()).expect("open");
        let boot = boot.expect("an admin was made");
        let mode = std::fs::metadata(&boot.password_file)
            .expect("password file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let password = std::fs::read_to_string(&boot.password_file).expect("read");
        let admin = users
            .check_password("admin", password.trim())
            .expect("the password works");
        assert_eq!(
            (admin.role, admin.namespace),
            (Role::Admin, FIRST_NAMESPACE)
        );
        assert!(users.check_password("admin", "wrong").is_none());
        assert!(users.check_password("nobody", password.trim()).is_none());
        // A second start finds the admin and makes none.
        let (_, again) = Users::open(&path, dir.path()).expect("open again");
        assert_eq!(again, None);
        // An added user gets the next namespace and is seen without a restart.
        let bob = add_user(&path, "bob", Role::User, "pw-bob").expect("add");
        assert_eq!(bob.namespace, FIRST_NAMESPACE + 1);
        assert!(users.check_password("bob", "pw-bob").is_some());
        assert!(matches!(
            add_user(&path, "bob", Role::User, "x"),
            Err(AuthError::UserExists(_))
        ));
        assert!(matches!(
            add_user(&path, "a b", Role::User, "x"),
            Err(AuthError::BadName(_))
        ));
    }

    #[test]
    fn the_token_key_is_made_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token.key");
        let a = TokenKey::load_or_create(&path).expect("create");
        let b = TokenKey::load_or_create(&path).expect("load");
        assert_eq!(a.key, b.key);
        let mode = std::fs::metadata(&path).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
