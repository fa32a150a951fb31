//! Connection tokens: a JWT signed with HS256 (a shared secret) or RS256/ES256 (keys from a JWKS
//! file or URL, chosen by `kid`). Claims: `sub` (player or operator id), `tenant`, `role`
//! (`player` | `operator`), `rooms` (room ids the holder may join; `"*"` for every room of the
//! tenant), `exp` (required). Optional `aud`/`iss` are checked when configured.
//!
//! The keys sign for every tenant, or each tenant has its own (a file of tenants and their keys,
//! [`TenantFile`]): a token then verifies only with the keys of the tenant it names.
//!
//! What a token allows is decided here too ([`Claims::may_subscribe`]), so the rule is one pure
//! function with a test matrix beside it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use pitboss_model::live::ChannelName;
use pitboss_model::validate::{MAX_ID, MAX_TENANT_ID, id_violation};
use serde::{Deserialize, Serialize};

/// Who holds a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A game client: its own player channel and the rooms its token lists.
    Player,
    /// An operator console: its tenant's alerts, the rooms its token lists, acks, publishing.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Player => "player",
            Role::Operator => "operator",
        }
    }
}

/// The claims of a connection token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The player id (role player) or the operator's user id (role operator).
    pub sub: String,
    /// The tenant; channels of other tenants are never allowed.
    pub tenant: String,
    pub role: Role,
    /// Rooms the holder may join; `"*"` allows every room of the tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
    /// Expiry, seconds since the Unix epoch. Enforced at connect and on the live connection.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// One audience or several (RFC 7519 allows both; identity providers send either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Not before, seconds since the Unix epoch: checked when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

/// A token's `aud`: a string or an array of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// How far in the future a token's `nbf` may be (the issuer's clock ahead of ours).
pub const NBF_LEEWAY_SECS: u64 = 60;

/// Longest token accepted: JWTs of identity providers are well under it; a larger one is
/// refused before it is decoded.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

impl Claims {
    /// Whether this token may subscribe to `channel`: only its tenant's channels; a player its
    /// own player channel, an operator its tenant's operator channel; rooms listed in `rooms`.
    pub fn may_subscribe(&self, channel: &ChannelName) -> bool {
        if channel.tenant_id() != self.tenant {
            return false;
        }
        match channel {
            ChannelName::Player { player_id, .. } => {
                self.role == Role::Player && *player_id == self.sub
            }
            ChannelName::Operator { .. } => self.role == Role::Operator,
            ChannelName::Room { room_id, .. } => {
                self.rooms.iter().any(|r| r == "*" || r == room_id)
            }
        }
    }

    /// The claims' own rules (ids well formed, rooms well formed), beyond the signature.
    fn check(&self) -> Result<(), AuthError> {
        let bad = |m: String| Err(AuthError::Claims(m));
        if let Some(v) = id_violation("sub", &self.sub, MAX_ID) {
            return bad(format!("{}: {}", v.path, v.message));
        }
        if let Some(v) = id_violation("tenant", &self.tenant, MAX_TENANT_ID) {
            return bad(format!("{}: {}", v.path, v.message));
        }
        if self.rooms.len() > MAX_ROOMS {
            return bad(format!("rooms: at most {MAX_ROOMS}"));
        }
        for r in &self.rooms {
            if r != "*"
                && let Some(v) = id_violation("rooms", r, MAX_ID)
            {
                return bad(format!("{}: {}", v.path, v.message));
            }
        }
        Ok(())
    }

    /// Seconds until the token expires (0 when it has), at most [`MAX_EXPIRES_IN`]: an issuer
    /// writing the largest `exp` for "never" gets a connection that lives a century, not a
    /// deadline past what the clock can add.
    pub fn expires_in(&self) -> Duration {
        Duration::from_secs(
            self.exp
                .saturating_sub(jsonwebtoken::get_current_timestamp())
                .min(MAX_EXPIRES_IN.as_secs()),
        )
    }
}

/// The longest a token's expiry is waited for (100 years).
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Most rooms one token may list.
pub const MAX_ROOMS: usize = 256;

/// Why a token was refused; `code` is what clients see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no token: send it as `Authorization: Bearer <jwt>` (a WebSocket from a browser: the subprotocols `pitboss.v1` and `pitboss.token.<jwt>`)"
    )]
    Missing,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("the token has expired")]
    Expired,
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token's algorithm {0} is not accepted here (configured: {1})")]
    Algorithm(String, String),
    #[error("no key for the token (kid {0:?})")]
    UnknownKey(Option<String>),
    #[error("no keys for the token's tenant {0:?} here")]
    UnknownTenant(String),
    #[error("the token's claims are invalid: {0}")]
    Claims(String),
    #[error("the new token is for another {0}: a refresh keeps the tenant, subject and role")]
    Mismatch(&'static str),
}

impl AuthError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Malformed | AuthError::TooLong => "token_malformed",
            AuthError::Expired => "token_expired",
            AuthError::Signature => "token_signature",
            AuthError::Algorithm(..) => "token_algorithm",
            AuthError::UnknownKey(_) => "token_unknown_key",
            AuthError::UnknownTenant(_) => "token_unknown_tenant",
            AuthError::Claims(_) => "token_claims",
            AuthError::Mismatch(_) => "token_mismatch",
        }
    }
}

/// Where verification keys come from.
#[derive(Debug, Clone, Default)]
pub struct KeySource {
    /// HS256 shared secret (raw bytes).
    pub hs256_secret: Option<Vec<u8>>,
    /// A JWKS document on disk (RS256/ES256 public keys), read at start.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL, fetched at start and every `jwks_refresh`.
    pub jwks_url: Option<String>,
    pub jwks_refresh: Duration,
    /// Required `aud` (when set, tokens without it are refused).
    pub audience: Option<String>,
    /// Required `iss` (when set, tokens without it are refused).
    pub issuer: Option<String>,
}

#[derive(Clone)]
struct PublicKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// One issuer's keys: an HS256 secret and/or JWKS keys, and the `aud`/`iss` it requires.
#[derive(Clone)]
struct Keys {
    hs: Option<DecodingKey>,
    jwks: Arc<RwLock<Vec<PublicKey>>>,
    source: Arc<KeySource>,
}

/// Verifies connection tokens. Cheap to clone.
///
/// Either one set of keys signs for every tenant ([`Verifier::new`]: `--jwt-secret-file`,
/// `--jwks-*`), or each tenant has its own ([`Verifier::tenants`]: `--tenant-keys`): a token
/// then verifies only with the keys of the tenant it names, so one tenant's signing key cannot
/// let anybody into another tenant's channels.
#[derive(Clone)]
pub struct Verifier {
    keys: Signers,
}

#[derive(Clone)]
enum Signers {
    Shared(Keys),
    PerTenant(Arc<TenantKeys>),
}

/// Each tenant's keys, read from a file and read again every refresh.
struct TenantKeys {
    path: PathBuf,
    refresh: Duration,
    by_tenant: RwLock<Arc<HashMap<String, Keys>>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.keys {
            Signers::Shared(k) => f
                .debug_struct("Verifier")
                .field("hs256", &k.hs.is_some())
                .field("jwks_keys", &k.jwks.read().map(|k| k.len()).unwrap_or(0))
                .finish(),
            Signers::PerTenant(t) => f
                .debug_struct("Verifier")
                .field("tenant_keys", &t.path)
                .field("tenants", &t.current().len())
                .finish(),
        }
    }
}

impl Keys {
    /// Reads the secret and the JWKS file, fetches the JWKS URL; fails when there is no key.
    async fn load(source: KeySource) -> anyhow::Result<Keys> {
        let hs = match &source.hs256_secret {
            Some(s) if s.len() < 32 => anyhow::bail!("the HS256 secret must be at least 32 bytes"),
            Some(s) => Some(DecodingKey::from_secret(s)?),
            None => None,
        };
        let mut keys = Vec::new();
        if let Some(path) = &source.jwks_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            keys.extend(parse_jwks(&text)?);
        }
        if let Some(url) = &source.jwks_url {
            keys.extend(fetch_jwks(url).await?);
        }
        if hs.is_none() && keys.is_empty() {
            anyhow::bail!("no token keys: give an HS256 secret, a JWKS file or a JWKS URL");
        }
        warn_any_audience(None, &source);
        Ok(Keys {
            hs,
            jwks: Arc::new(RwLock::new(keys)),
            source: Arc::new(source),
        })
    }

    fn accepted(&self, into: &mut Vec<&'static str>) {
        if self.hs.is_some() && !into.contains(&"HS256") {
            into.push("HS256");
        }
        if self.jwks.read().is_ok_and(|k| !k.is_empty()) && !into.contains(&"RS256") {
            into.extend(["RS256", "ES256"]);
        }
    }

    fn accepted_here(&self) -> String {
        let mut a = Vec::new();
        self.accepted(&mut a);
        a.join(", ")
    }

    /// Verifies `token` (its header already read): signature, expiry, audience/issuer when
    /// configured, and the claims.
    fn verify(&self, token: &str, header: &Header) -> Result<Claims, AuthError> {
        let key = match header.alg {
            Algorithm::HS256 => self
                .hs
                .clone()
                .ok_or_else(|| AuthError::Algorithm("HS256".into(), self.accepted_here()))?,
            alg @ (Algorithm::RS256 | Algorithm::ES256) => {
                let keys = self.jwks.read().map_err(|_| AuthError::UnknownKey(None))?;
                keys.iter()
                    .find(|k| k.alg == alg && (header.kid.is_none() || k.kid == header.kid))
                    .map(|k| k.key.clone())
                    .ok_or_else(|| {
                        if keys.is_empty() {
                            AuthError::Algorithm(format!("{alg:?}"), self.accepted_here())
                        } else {
                            AuthError::UnknownKey(header.kid.clone())
                        }
                    })?
            }
            other => {
                return Err(AuthError::Algorithm(
                    format!("{other:?}"),
                    self.accepted_here(),
                ));
            }
        };
        let mut validation = Validation::new(header.alg);
        // No leeway: a token is refused at connect exactly when the live connection would be
        // closed for it (the issuer's clock is the reference).
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        // `nbf` is checked below, with leeway (`exp` has none).
        match &self.source.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.source.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => AuthError::Expired,
                K::InvalidSignature => AuthError::Signature,
                K::InvalidAlgorithm => {
                    AuthError::Algorithm(format!("{:?}", header.alg), self.accepted_here())
                }
                K::InvalidToken | K::Base64(_) | K::Utf8(_) => AuthError::Malformed,
                K::Json(e) => AuthError::Claims(e.to_string()),
                other => AuthError::Claims(format!("{other:?}")),
            }
        })?;
        // RFC 7519 §4.1.4: `exp` is the time *on or after which* the token is refused (the
        // library accepts it for the whole second of `exp`; a live connection would be closed
        // for it at once).
        if data.claims.exp <= jsonwebtoken::get_current_timestamp() {
            return Err(AuthError::Expired);
        }
        // RFC 7519: not accepted before its `nbf`, when it has one. Identity providers often set
        // `nbf = iat`, so a minute of leeway for their clock being ahead of ours.
        if let Some(nbf) = data.claims.nbf
            && nbf > jsonwebtoken::get_current_timestamp().saturating_add(NBF_LEEWAY_SECS)
        {
            return Err(AuthError::Claims(
                "`nbf` is in the future: the token is not valid yet".into(),
            ));
        }
        data.claims.check()?;
        Ok(data.claims)
    }

    /// Fetches the JWKS URL again (the JWKS file read again beside it); a failure keeps the
    /// keys it had.
    async fn refresh_jwks(&self) {
        let Some(url) = &self.source.jwks_url else {
            return;
        };
        match fetch_jwks(url).await {
            Ok(mut keys) => {
                if let Some(path) = &self.source.jwks_file
                    && let Ok(text) = std::fs::read_to_string(path)
                    && let Ok(file_keys) = parse_jwks(&text)
                {
                    keys.extend(file_keys);
                }
                if let Ok(mut k) = self.jwks.write() {
                    *k = keys;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "JWKS refresh failed; keeping the old keys")
            }
        }
    }
}

impl TenantKeys {
    fn current(&self) -> Arc<HashMap<String, Keys>> {
        match self.by_tenant.read() {
            Ok(m) => Arc::clone(&m),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }
}

impl Verifier {
    /// Loads the keys (fetching the JWKS URL once); fails when there is no key at all or a key
    /// source cannot be read. These keys sign for every tenant.
    pub async fn new(source: KeySource) -> anyhow::Result<Verifier> {
        Ok(Verifier {
            keys: Signers::Shared(Keys::load(source).await?),
        })
    }

    /// Each tenant's own keys, from the TOML file at `path` ([`TenantFile`]): fails when the
    /// file is malformed (with its line), names no tenant, or a tenant's key cannot be read.
    /// `refresh`: how often the file is read again (and JWKS URLs fetched again) by
    /// [`Verifier::spawn_refresh`].
    pub async fn tenants(path: &Path, refresh: Duration) -> anyhow::Result<Verifier> {
        let by_tenant = load_tenants(path, refresh, None).await?;
        for (tenant, keys) in &by_tenant {
            warn_any_audience(Some(tenant), &keys.source);
        }
        Ok(Verifier {
            keys: Signers::PerTenant(Arc::new(TenantKeys {
                path: path.to_owned(),
                refresh,
                by_tenant: RwLock::new(Arc::new(by_tenant)),
            })),
        })
    }

    /// A verifier with one HS256 secret (tests, `pitboss up`).
    pub fn hs256(secret: &[u8]) -> anyhow::Result<Verifier> {
        if secret.len() < 32 {
            anyhow::bail!("the HS256 secret must be at least 32 bytes");
        }
        Ok(Verifier {
            keys: Signers::Shared(Keys {
                hs: Some(DecodingKey::from_secret(secret)?),
                jwks: Arc::new(RwLock::new(Vec::new())),
                source: Arc::new(KeySource {
                    hs256_secret: Some(secret.to_vec()),
                    ..KeySource::default()
                }),
            }),
        })
    }

    /// Until the process ends: re-fetches the JWKS URL every `jwks_refresh` (keys rotate; a
    /// failed fetch keeps the keys it had), or with keys per tenant, reads the tenants' file
    /// again as often (tenants come and go, keys rotate; a file that no longer reads keeps
    /// the keys in force, a tenant whose JWKS URL fails keeps its old keys). Nothing to do
    /// with shared keys and no URL.
    pub fn spawn_refresh(&self) {
        match &self.keys {
            Signers::Shared(keys) => {
                if keys.source.jwks_url.is_none() {
                    return;
                }
                let every = keys.source.jwks_refresh.max(Duration::from_secs(10));
                let keys = keys.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(every).await;
                        keys.refresh_jwks().await;
                    }
                });
            }
            Signers::PerTenant(t) => {
                let t = Arc::clone(t);
                let every = t.refresh.max(Duration::from_secs(10));
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(every).await;
                        t.reload().await;
                    }
                });
            }
        }
    }

    fn accepted(&self) -> String {
        let mut a = Vec::new();
        match &self.keys {
            Signers::Shared(k) => k.accepted(&mut a),
            Signers::PerTenant(t) => {
                for k in t.current().values() {
                    k.accepted(&mut a);
                }
            }
        }
        a.join(", ")
    }

    /// Why a token whose header the JWT library cannot read is refused: a header naming an
    /// algorithm the library does not know (`none` among them) is refused for its algorithm,
    /// anything else (a known algorithm with another field wrong) as malformed.
    fn unreadable(&self, token: &str) -> AuthError {
        use base64::Engine;
        let alg = token
            .split('.')
            .next()
            .and_then(|h| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(h)
                    .ok()
            })
            .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
            .and_then(|h| h.get("alg")?.as_str().map(str::to_owned));
        match alg {
            // An algorithm the library knows: the header is wrong elsewhere.
            Some(alg) if alg.parse::<Algorithm>().is_ok() => AuthError::Malformed,
            Some(alg) => AuthError::Algorithm(alg, self.accepted()),
            None => AuthError::Malformed,
        }
    }

    /// Verifies `token`: signature, expiry, audience/issuer when configured, and the claims;
    /// with keys per tenant, by the keys of the tenant the token names (read before the
    /// signature only to choose them: a token verifies with no other tenant's keys).
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLong);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| self.unreadable(token))?;
        match &self.keys {
            Signers::Shared(keys) => keys.verify(token, &header),
            Signers::PerTenant(t) => {
                let tenant = named_tenant(token)?;
                let keys = t
                    .current()
                    .get(&tenant)
                    .cloned()
                    .ok_or_else(|| AuthError::UnknownTenant(tenant.clone()))?;
                let claims = keys.verify(token, &header)?;
                // The same payload read twice; checked all the same.
                if claims.tenant != tenant {
                    return Err(AuthError::Claims("tenant: read two ways".into()));
                }
                Ok(claims)
            }
        }
    }
}

/// An identity provider's keys (JWKS) sign tokens for every application it serves: without a
/// required `aud`, a token it made for another application opens a socket here too. Said once,
/// at start.
fn warn_any_audience(tenant: Option<&str>, source: &KeySource) {
    if (source.jwks_file.is_some() || source.jwks_url.is_some()) && source.audience.is_none() {
        tracing::warn!(
            tenant = tenant.unwrap_or("(every tenant)"),
            "JWKS keys without a required audience: a token the identity provider made for another of its applications is accepted too; set --jwt-audience (or `audience` in the tenant keys file)"
        );
    }
}

/// The `tenant` a token's payload names, unverified (to choose the keys that verify it).
fn named_tenant(token: &str) -> Result<String, AuthError> {
    use base64::Engine;
    #[derive(Deserialize)]
    struct Named {
        tenant: Option<serde_json::Value>,
    }
    let payload = token.split('.').nth(1).ok_or(AuthError::Malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| AuthError::Malformed)?;
    let named: Named = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    match named.tenant {
        // Checked before it is looked up (and named in an answer): what a claims check after
        // the signature would refuse anyway.
        Some(serde_json::Value::String(t)) => match id_violation("tenant", &t, MAX_TENANT_ID) {
            Some(v) => Err(AuthError::Claims(format!("{}: {}", v.path, v.message))),
            None => Ok(t),
        },
        Some(_) => Err(AuthError::Claims("tenant: must be a string".into())),
        None => Err(AuthError::Claims(
            "missing field `tenant`: with keys per tenant, the tenant chooses the key".into(),
        )),
    }
}

/// The file of keys per tenant (`pitboss gateway --tenant-keys`), TOML:
///
/// ```toml
/// [[tenant]]
/// id = "acme"
/// hs256_secret_file = "acme.secret"   # relative to this file; at least 32 bytes
///
/// [[tenant]]
/// id = "lucky"
/// jwks_url = "https://auth.lucky.example/.well-known/jwks.json"
/// issuer = "https://auth.lucky.example/"   # required `iss` (optional)
/// audience = "pitboss"                      # required `aud` (optional)
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantFile {
    #[serde(default)]
    pub tenant: Vec<TenantSpec>,
}

/// One tenant of a [`TenantFile`]: at least one of its three key sources.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    pub id: toml::Spanned<String>,
    /// A file holding the HS256 secret (surrounding whitespace ignored), never the secret
    /// itself: the file of tenants can be read by whoever deploys, the secrets by the gateway.
    pub hs256_secret_file: Option<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

/// `path:line: message` for a place in the tenants' file.
fn at_line(path: &Path, text: &str, span: Option<std::ops::Range<usize>>, msg: &str) -> String {
    match span {
        Some(r) => {
            let end = r.start.min(text.len());
            let line = text.as_bytes()[..end]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            format!("{}:{line}: {msg}", path.display())
        }
        None => format!("{}: {msg}", path.display()),
    }
}

/// One tenant of the file, read: what is local (secret, JWKS file), and the URL to fetch.
struct Listed {
    id: String,
    at: String,
    hs: Option<DecodingKey>,
    file_keys: Vec<PublicKey>,
    source: KeySource,
}

/// Reads the tenants' file. A file that does not read (its syntax, a tenant without keys, a
/// secret or JWKS file missing or malformed) fails whole, with its line. A tenant whose JWKS URL
/// cannot be fetched does not stop the others: it keeps the keys it had (`previous`, a re-read:
/// its URL's keys, with what the file says now), or, new, is served with its other keys if it
/// has some, else left out until a later read fetches it (an error in the log). Fails when no
/// tenant is left.
async fn load_tenants(
    path: &Path,
    refresh: Duration,
    previous: Option<&HashMap<String, Keys>>,
) -> anyhow::Result<HashMap<String, Keys>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    // The parser's own message, without the line it quotes (which could hold a secret
    // written where a file name belongs).
    let file: TenantFile = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!(at_line(path, &text, e.span(), e.message().trim())))?;
    if file.tenant.is_empty() {
        anyhow::bail!(
            "{}: no [[tenant]]: list each tenant with its keys",
            path.display()
        );
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut listed: Vec<Listed> = Vec::new();
    for t in file.tenant {
        let span = Some(t.id.span());
        let id = t.id.into_inner();
        let at = at_line(path, &text, span, &format!("tenant {id:?}"));
        let bad = |m: String| anyhow::anyhow!("{at}: {m}");
        if let Some(v) = id_violation("id", &id, MAX_TENANT_ID) {
            return Err(bad(v.message));
        }
        if listed.iter().any(|l| l.id == id) {
            return Err(bad("listed twice".into()));
        }
        if t.hs256_secret_file.is_none() && t.jwks_file.is_none() && t.jwks_url.is_none() {
            return Err(bad(
                "has no key: give hs256_secret_file, jwks_file or jwks_url".into(),
            ));
        }
        let hs = match &t.hs256_secret_file {
            Some(f) => {
                let secret = read_secret(&dir.join(f)).map_err(|e| bad(e.to_string()))?;
                Some(DecodingKey::from_secret(&secret).map_err(|e| bad(e.to_string()))?)
            }
            None => None,
        };
        let jwks_file = t.jwks_file.map(|f| dir.join(f));
        let file_keys = match &jwks_file {
            Some(f) => {
                let body = std::fs::read_to_string(f)
                    .map_err(|e| bad(format!("reading {}: {e}", f.display())))?;
                parse_jwks(&body).map_err(|e| bad(format!("{}: {e}", f.display())))?
            }
            None => Vec::new(),
        };
        listed.push(Listed {
            id,
            at,
            hs,
            file_keys,
            source: KeySource {
                hs256_secret: None,
                jwks_file,
                jwks_url: t.jwks_url,
                jwks_refresh: refresh,
                audience: t.audience,
                issuer: t.issuer,
            },
        });
    }
    // Every tenant's URL at once (each fetch has its own 10 s bound).
    let fetched = futures::future::join_all(listed.iter().map(|l| async {
        match &l.source.jwks_url {
            Some(url) => Some(fetch_jwks(url).await),
            None => None,
        }
    }))
    .await;
    let mut out = HashMap::new();
    let mut failures = Vec::new();
    for (l, fetched) in listed.into_iter().zip(fetched) {
        let mut keys = l.file_keys;
        match fetched {
            None => {}
            Some(Ok(url_keys)) => keys.extend(url_keys),
            Some(Err(e)) => {
                let old = previous.and_then(|p| p.get(&l.id));
                if let Some(old) = old
                    && let Ok(old_keys) = old.jwks.read()
                {
                    tracing::warn!(tenant = %l.id, error = %e, "tenant keys: the JWKS URL failed; keeping its keys from the last read");
                    keys.extend(old_keys.iter().cloned());
                } else if l.hs.is_some() || !keys.is_empty() {
                    tracing::error!(tenant = %l.id, error = %e, "tenant keys: the JWKS URL failed; serving the tenant with its other keys until it is fetched");
                } else {
                    tracing::error!(tenant = %l.id, error = %e, "tenant keys: the JWKS URL failed; the tenant is left out until it is fetched");
                    failures.push(format!("{}: {e}", l.at));
                    continue;
                }
            }
        }
        out.insert(
            l.id,
            Keys {
                hs: l.hs,
                jwks: Arc::new(RwLock::new(keys)),
                source: Arc::new(l.source),
            },
        );
    }
    if out.is_empty() {
        anyhow::bail!("no tenant's keys could be read: {}", failures.join("; "));
    }
    Ok(out)
}

impl TenantKeys {
    /// Reads the file again; keeps the keys in force when it cannot be read.
    async fn reload(&self) {
        let old = self.current();
        match load_tenants(&self.path, self.refresh, Some(&old)).await {
            Ok(new) => {
                let added: Vec<&String> = new.keys().filter(|t| !old.contains_key(*t)).collect();
                let removed: Vec<&String> = old.keys().filter(|t| !new.contains_key(*t)).collect();
                if added.is_empty() && removed.is_empty() {
                    tracing::debug!(tenants = new.len(), "tenant keys read again");
                } else {
                    tracing::info!(
                        tenants = new.len(),
                        ?added,
                        ?removed,
                        "tenant keys read again: tenants changed"
                    );
                }
                match self.by_tenant.write() {
                    Ok(mut m) => *m = Arc::new(new),
                    Err(p) => *p.into_inner() = Arc::new(new),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "tenant keys: the file does not read; keeping the keys in force")
            }
        }
    }
}

fn parse_jwks(text: &str) -> anyhow::Result<Vec<PublicKey>> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| anyhow::anyhow!("JWKS: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        match jwk_algorithm(jwk) {
            Some(alg) => keys.push(PublicKey {
                kid: jwk.common.key_id.clone(),
                alg,
                key: DecodingKey::from_jwk(jwk).map_err(|e| anyhow::anyhow!("JWKS key: {e}"))?,
            }),
            None => {
                tracing::warn!(kid = ?jwk.common.key_id, "JWKS key skipped: not RS256 or ES256 (P-256)")
            }
        }
    }
    Ok(keys)
}

/// RS256 for RSA keys, ES256 for P-256 keys (an `alg` on the key must agree); others skipped.
fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(by_type),
        Some(KeyAlgorithm::RS256) if by_type == Algorithm::RS256 => Some(by_type),
        Some(KeyAlgorithm::ES256) if by_type == Algorithm::ES256 => Some(by_type),
        Some(_) => None,
    }
}

async fn fetch_jwks(url: &str) -> anyhow::Result<Vec<PublicKey>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut response = client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| anyhow::anyhow!("fetching JWKS {url}: {e}"))?;
    // A key set is a few KiB; the URL may be another company's: read at most this much.
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| anyhow::anyhow!("fetching JWKS {url}: {e}"))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            anyhow::bail!("fetching JWKS {url}: longer than {MAX_JWKS_BYTES} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    let text =
        String::from_utf8(body).map_err(|_| anyhow::anyhow!("fetching JWKS {url}: not UTF-8"))?;
    parse_jwks(&text)
}

/// The longest JWKS document fetched.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// An HS256 secret from the file at `path`: its text without surrounding whitespace, at least
/// 32 bytes.
pub fn read_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let secret = text.trim().as_bytes().to_vec();
    if secret.len() < 32 {
        anyhow::bail!(
            "{}: the HS256 secret must be at least 32 bytes",
            path.display()
        );
    }
    Ok(secret)
}

/// Signs an HS256 token (for `pitboss token`, tests and the demo).
pub fn sign_hs256(claims: &Claims, secret: &[u8]) -> anyhow::Result<String> {
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret)?,
    )?)
}

/// Claims for `role` in `tenant` as `sub`, valid for `ttl`.
pub fn claims(tenant: &str, sub: &str, role: Role, rooms: Vec<String>, ttl: Duration) -> Claims {
    let now = jsonwebtoken::get_current_timestamp();
    Claims {
        sub: sub.to_owned(),
        tenant: tenant.to_owned(),
        role,
        rooms,
        exp: now + ttl.as_secs(),
        iat: Some(now),
        aud: None,
        nbf: None,
        iss: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn token(c: &Claims) -> String {
        sign_hs256(c, SECRET).unwrap()
    }

    #[test]
    fn a_signed_token_verifies_and_bad_ones_are_refused_with_their_code() {
        let v = Verifier::hs256(SECRET).unwrap();
        let c = claims("acme", "p-1", Role::Player, vec![], Duration::from_secs(60));
        assert_eq!(v.verify(&token(&c)).unwrap(), c);

        let mut expired = c.clone();
        expired.exp = jsonwebtoken::get_current_timestamp() - 60;
        assert_eq!(v.verify(&token(&expired)).unwrap_err(), AuthError::Expired);
        // `exp` this very second: refused too (on or after `exp`, RFC 7519).
        expired.exp = jsonwebtoken::get_current_timestamp();
        assert_eq!(v.verify(&token(&expired)).unwrap_err(), AuthError::Expired);

        let forged = sign_hs256(&c, b"another-secret-another-secret-xx").unwrap();
        assert_eq!(v.verify(&forged).unwrap_err(), AuthError::Signature);

        assert_eq!(v.verify("not a jwt").unwrap_err(), AuthError::Malformed);
        assert_eq!(v.verify("").unwrap_err(), AuthError::Malformed);

        let mut bad_tenant = c.clone();
        bad_tenant.tenant = "ac me".into();
        assert_eq!(
            v.verify(&token(&bad_tenant)).unwrap_err().code(),
            "token_claims"
        );

        // alg "none" and other algorithms are refused.
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&serde_json::to_string(&c).unwrap())
        );
        assert_eq!(v.verify(&none).unwrap_err().code(), "token_algorithm");
        assert_eq!(
            v.verify(&format!("{none}c2lnbmF0dXJl")).unwrap_err().code(),
            "token_algorithm",
            "signed or not"
        );
        let garbled = format!("{}.{}.", b64(r#"{"typ":"JWT"}"#), b64("{}"));
        assert_eq!(v.verify(&garbled).unwrap_err().code(), "token_malformed");
        let bad_kid = format!("{}.{}.", b64(r#"{"alg":"HS256","kid":5}"#), b64("{}"));
        assert_eq!(
            v.verify(&bad_kid).unwrap_err().code(),
            "token_malformed",
            "an accepted algorithm with a malformed header"
        );
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &c,
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&hs512).unwrap_err().code(), "token_algorithm");

        // `nbf` (RFC 7519): a token is refused before it, accepted from it on.
        let mut early = c.clone();
        early.nbf = Some(jsonwebtoken::get_current_timestamp() + 600);
        let e = v.verify(&token(&early)).unwrap_err();
        assert_eq!(e.code(), "token_claims");
        assert!(e.to_string().contains("nbf"), "{e}");
        early.nbf = Some(jsonwebtoken::get_current_timestamp() - 1);
        assert_eq!(v.verify(&token(&early)).unwrap(), early);
        // An issuer's clock a little ahead of ours (`nbf = iat`): within the leeway.
        early.nbf = Some(jsonwebtoken::get_current_timestamp() + NBF_LEEWAY_SECS / 2);
        assert_eq!(v.verify(&token(&early)).unwrap(), early);

        // A token longer than identity providers make is refused before it is decoded.
        let mut long = c.clone();
        long.rooms = (0..200).map(|i| format!("room-{i:040}")).collect();
        let t = token(&long);
        assert!(t.len() > MAX_TOKEN_BYTES);
        assert_eq!(v.verify(&t).unwrap_err(), AuthError::TooLong);
        assert_eq!(AuthError::TooLong.code(), "token_malformed");
    }

    #[tokio::test]
    async fn an_audience_is_one_string_or_an_array_of_them() {
        let v = Verifier::new(KeySource {
            hs256_secret: Some(SECRET.to_vec()),
            audience: Some("pitboss-gw".into()),
            ..KeySource::default()
        })
        .await
        .unwrap();
        let mut c = claims("acme", "p-1", Role::Player, vec![], Duration::from_secs(60));
        assert_eq!(v.verify(&token(&c)).unwrap_err().code(), "token_claims");
        c.aud = Some(Audience::One("pitboss-gw".into()));
        assert_eq!(v.verify(&token(&c)).unwrap(), c);
        c.aud = Some(Audience::Many(vec!["other".into(), "pitboss-gw".into()]));
        assert_eq!(v.verify(&token(&c)).unwrap(), c);
        c.aud = Some(Audience::Many(vec!["other".into()]));
        assert_eq!(v.verify(&token(&c)).unwrap_err().code(), "token_claims");
        c.aud = Some(Audience::One("other".into()));
        assert_eq!(v.verify(&token(&c)).unwrap_err().code(), "token_claims");
    }

    fn b64(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    /// Test-only key pairs (edge-gateway/tests/keys: made for these tests, never used elsewhere).
    fn keys(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/keys")
            .join(name)
    }

    fn sign(alg: Algorithm, kid: Option<&str>, pem: &str, c: &Claims) -> String {
        let pem = std::fs::read(keys(pem)).unwrap();
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
        };
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, c, &key).unwrap()
    }

    async fn jwks_cases(v: &Verifier) {
        let c = claims(
            "acme",
            "ops",
            Role::Operator,
            vec![],
            Duration::from_secs(60),
        );
        assert_eq!(
            v.verify(&sign(Algorithm::ES256, Some("ec-1"), "es256.pem", &c))
                .unwrap(),
            c
        );
        assert_eq!(
            v.verify(&sign(Algorithm::RS256, Some("rsa-1"), "rs256.pem", &c))
                .unwrap(),
            c
        );
        // Without a kid, the key of the algorithm is used.
        assert_eq!(
            v.verify(&sign(Algorithm::ES256, None, "es256.pem", &c))
                .unwrap(),
            c
        );
        assert_eq!(
            v.verify(&sign(Algorithm::ES256, Some("ec-9"), "es256.pem", &c))
                .unwrap_err(),
            AuthError::UnknownKey(Some("ec-9".into()))
        );
        // Signed by another key under a known kid: the signature fails.
        let mut other = c.clone();
        other.sub = "intruder".into();
        let token = sign(Algorithm::RS256, Some("rsa-1"), "rs256.pem", &other);
        let (head, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let good = sign(Algorithm::RS256, Some("rsa-1"), "rs256.pem", &c);
        let payload = good.split('.').nth(1).unwrap();
        assert_eq!(
            v.verify(&format!("{head}.{payload}.{sig}")).unwrap_err(),
            AuthError::Signature
        );
        // No HS256 secret configured: an HS256 token is refused for its algorithm.
        let hs = sign_hs256(&c, SECRET).unwrap();
        assert_eq!(v.verify(&hs).unwrap_err().code(), "token_algorithm");
    }

    #[tokio::test]
    async fn rs256_and_es256_tokens_verify_with_keys_from_a_jwks_file_or_url() {
        let file = Verifier::new(KeySource {
            jwks_file: Some(keys("jwks.json")),
            ..KeySource::default()
        })
        .await
        .unwrap();
        jwks_cases(&file).await;

        // The same keys served over HTTP.
        let body = std::fs::read_to_string(keys("jwks.json")).unwrap();
        let app =
            axum::Router::new().route("/jwks", axum::routing::get(move || async move { body }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url = Verifier::new(KeySource {
            jwks_url: Some(format!("http://{addr}/jwks")),
            ..KeySource::default()
        })
        .await
        .unwrap();
        jwks_cases(&url).await;

        // No keys at all, or an unreachable URL: refused at start.
        assert!(Verifier::new(KeySource::default()).await.is_err());
        assert!(
            Verifier::new(KeySource {
                jwks_url: Some("http://127.0.0.1:9/jwks".into()),
                ..KeySource::default()
            })
            .await
            .is_err()
        );
    }

    const OTHER: &[u8] = b"another-tenant-s-secret-0123456789";

    /// A file of tenants in `dir`: acme and other (HS256, each its own secret), lucky (the test
    /// JWKS, with its issuer).
    fn tenant_file(dir: &Path, extra: &str) -> PathBuf {
        std::fs::write(dir.join("acme.secret"), SECRET).unwrap();
        std::fs::write(dir.join("other.secret"), [OTHER, b"\n"].concat()).unwrap();
        std::fs::copy(keys("jwks.json"), dir.join("lucky-jwks.json")).unwrap();
        let file = dir.join("tenants.toml");
        std::fs::write(
            &file,
            format!(
                r#"
[[tenant]]
id = "acme"
hs256_secret_file = "acme.secret"

[[tenant]]
id = "lucky"
jwks_file = "lucky-jwks.json"
issuer = "https://auth.lucky.example/"
{extra}"#
            ),
        )
        .unwrap();
        file
    }

    /// The verifier of `file`, checked to let in acme and other with their own secrets; their
    /// claims.
    async fn acme_and_other(file: &Path) -> (Verifier, Claims, Claims) {
        let v = Verifier::tenants(file, Duration::from_secs(300))
            .await
            .unwrap();
        let ttl = Duration::from_secs(60);
        let acme = claims("acme", "p-1", Role::Player, vec![], ttl);
        assert_eq!(v.verify(&token(&acme)).unwrap(), acme);
        let other = claims("other", "ops", Role::Operator, vec![], ttl);
        assert_eq!(
            v.verify(&sign_hs256(&other, OTHER).unwrap()).unwrap(),
            other
        );
        (v, acme, other)
    }

    const OTHER_TENANT: &str =
        "\n[[tenant]]\nid = \"other\"\nhs256_secret_file = \"other.secret\"\n";

    #[tokio::test]
    async fn with_keys_per_tenant_a_token_verifies_only_with_its_own_tenant_s_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (v, acme, other) = acme_and_other(&tenant_file(dir.path(), OTHER_TENANT)).await;
        let ttl = Duration::from_secs(60);
        // acme's secret signs for acme alone: a token it signed naming another tenant fails
        // the other tenant's secret.
        assert_eq!(v.verify(&token(&other)).unwrap_err(), AuthError::Signature);
        let mut lucky = claims("lucky", "p-9", Role::Player, vec![], ttl);
        assert_eq!(
            v.verify(&token(&lucky)).unwrap_err().code(),
            "token_algorithm",
            "lucky has no HS256 secret"
        );
        // lucky's own keys, with its issuer.
        assert_eq!(
            v.verify(&sign(Algorithm::ES256, Some("ec-1"), "es256.pem", &lucky))
                .unwrap_err()
                .code(),
            "token_claims",
            "without lucky's `iss`"
        );
        lucky.iss = Some("https://auth.lucky.example/".into());
        assert_eq!(
            v.verify(&sign(Algorithm::ES256, Some("ec-1"), "es256.pem", &lucky))
                .unwrap(),
            lucky
        );
        // lucky's keys sign nothing for acme.
        let mut acme_by_lucky = acme.clone();
        acme_by_lucky.iss = lucky.iss.clone();
        assert_eq!(
            v.verify(&sign(
                Algorithm::RS256,
                Some("rsa-1"),
                "rs256.pem",
                &acme_by_lucky
            ))
            .unwrap_err()
            .code(),
            "token_algorithm"
        );
        // A tenant without keys here, a token naming no tenant, a payload that is not JSON.
        let ghost = claims("ghost", "p-1", Role::Player, vec![], ttl);
        let e = v.verify(&token(&ghost)).unwrap_err();
        assert_eq!(e, AuthError::UnknownTenant("ghost".into()));
        assert_eq!(e.code(), "token_unknown_tenant");
        // A tenant no token may name is refused for its claims before any lookup, and not
        // repeated in the answer.
        for bad in ["ac me".to_owned(), "<script>".to_owned(), "t".repeat(5000)] {
            let mut c = ghost.clone();
            c.tenant = bad.clone();
            let e = v.verify(&token(&c)).unwrap_err();
            assert_eq!(e.code(), "token_claims", "{bad:?}");
            assert!(!e.to_string().contains(&bad), "{e}");
        }
        let nameless = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "p-1", "role": "player", "exp": acme.exp}),
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap();
        let e = v.verify(&nameless).unwrap_err();
        assert_eq!(e.code(), "token_claims");
        assert!(e.to_string().contains("tenant"), "{e}");
        let numbered = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "p-1", "tenant": 7, "role": "player", "exp": acme.exp}),
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&numbered).unwrap_err().code(), "token_claims");
        let head = b64(r#"{"alg":"HS256","typ":"JWT"}"#);
        assert_eq!(
            v.verify(&format!("{head}.{}.c2ln", b64("not json")))
                .unwrap_err()
                .code(),
            "token_malformed"
        );
        assert_eq!(
            v.verify(&format!("{head}.%%%.c2ln")).unwrap_err().code(),
            "token_malformed"
        );
    }

    #[tokio::test]
    async fn the_file_of_tenant_keys_is_read_again_and_a_bad_one_keeps_the_keys_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let file = tenant_file(dir.path(), "");
        let v = Verifier::tenants(&file, Duration::from_secs(300))
            .await
            .unwrap();
        let Signers::PerTenant(t) = &v.keys else {
            panic!("keys per tenant")
        };
        let ttl = Duration::from_secs(60);
        let acme = claims("acme", "p-1", Role::Player, vec![], ttl);
        let other = claims("other", "ops", Role::Operator, vec![], ttl);
        let other_token = sign_hs256(&other, OTHER).unwrap();
        assert_eq!(
            v.verify(&other_token).unwrap_err().code(),
            "token_unknown_tenant"
        );
        // A tenant added to the file: its tokens verify after the next read.
        tenant_file(dir.path(), OTHER_TENANT);
        t.reload().await;
        assert_eq!(v.verify(&other_token).unwrap(), other);
        // A file that no longer reads: the keys in force stay.
        std::fs::write(&file, "[[tenant]\nid = ").unwrap();
        t.reload().await;
        assert_eq!(v.verify(&token(&acme)).unwrap(), acme);
        assert_eq!(v.verify(&other_token).unwrap(), other);
        // A tenant removed from the file: its tokens are refused after the next read.
        tenant_file(dir.path(), "");
        t.reload().await;
        assert_eq!(
            v.verify(&other_token).unwrap_err().code(),
            "token_unknown_tenant"
        );
        assert_eq!(v.verify(&token(&acme)).unwrap(), acme);
    }

    #[tokio::test]
    async fn a_bad_file_of_tenant_keys_is_refused_with_its_line_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("acme.secret"), SECRET).unwrap();
        std::fs::write(dir.path().join("short.secret"), "too short").unwrap();
        let file = dir.path().join("tenants.toml");
        let secret = std::str::from_utf8(SECRET).unwrap();
        let cases = [
            (
                format!("[[tenant]]\nid = \"acme\"\nhs256_secret = \"{secret}\"\n"),
                "tenants.toml:3: unknown field `hs256_secret`",
            ),
            (
                "[[tenant]]\nid = \"acme\"\nhs256_secret_file = \"acme.secret\"\n\n[[tenant]]\nid = \"acme\"\njwks_url = \"http://127.0.0.1:9/jwks\"\n".into(),
                "tenants.toml:6: tenant \"acme\": listed twice",
            ),
            (
                "[[tenant]]\nid = \"acme\"\n".into(),
                "tenants.toml:2: tenant \"acme\": has no key",
            ),
            (
                "[[tenant]]\nid = \"acme\"\nhs256_secret_file = \"short.secret\"\n".into(),
                "the HS256 secret must be at least 32 bytes",
            ),
            (
                "[[tenant]]\nid = \"acme\"\nhs256_secret_file = \"missing.secret\"\n".into(),
                "tenants.toml:2: tenant \"acme\": reading",
            ),
            (
                "[[tenant]]\nid = \"ac me\"\nhs256_secret_file = \"acme.secret\"\n".into(),
                "tenants.toml:2: tenant \"ac me\"",
            ),
            (
                "[[tenant]]\nid = \"acme\"\njwks_url = \"http://127.0.0.1:9/jwks\"\n".into(),
                "no tenant's keys could be read: /",
            ),
            ("".into(), "no [[tenant]]"),
        ];
        for (text, want) in cases {
            std::fs::write(&file, &text).unwrap();
            let e = Verifier::tenants(&file, Duration::from_secs(300))
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains(secret), "the secret is not repeated: {e}");
        }
    }

    /// One tenant's identity provider down at start does not keep the others out: a tenant
    /// with only that URL is left out (and read again later), one with other keys is served
    /// with them.
    #[tokio::test]
    async fn a_tenant_whose_jwks_url_fails_at_start_leaves_the_others_in() {
        let dir = tempfile::tempdir().unwrap();
        let down = "jwks_url = \"http://127.0.0.1:9/jwks\"";
        let file = tenant_file(
            dir.path(),
            &format!(
                "\n[[tenant]]\nid = \"other\"\nhs256_secret_file = \"other.secret\"\n{down}\n\n[[tenant]]\nid = \"down\"\n{down}\n"
            ),
        );
        // "other" is served with its secret.
        let (v, _, _) = acme_and_other(&file).await;
        let ttl = Duration::from_secs(60);
        let down = claims("down", "p-1", Role::Player, vec![], ttl);
        assert_eq!(
            v.verify(&token(&down)).unwrap_err().code(),
            "token_unknown_tenant"
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(Verifier::hs256(b"short").is_err());
    }

    #[test]
    fn who_may_subscribe_to_what() {
        let player = claims(
            "acme",
            "p-1",
            Role::Player,
            vec!["table-1".into()],
            Duration::from_secs(60),
        );
        let operator = claims(
            "acme",
            "ops",
            Role::Operator,
            vec!["*".into()],
            Duration::from_secs(60),
        );
        let ch = |s: &str| ChannelName::parse(s, "channel").unwrap();
        // (channel, player may, operator may)
        let matrix = [
            ("player:acme:p-1", true, false),
            ("player:acme:p-2", false, false),
            ("player:other:p-1", false, false),
            ("operator:acme", false, true),
            ("operator:other", false, false),
            ("room:acme:table-1", true, true),
            ("room:acme:table-2", false, true),
            ("room:other:table-1", false, false),
        ];
        for (name, p, o) in matrix {
            assert_eq!(player.may_subscribe(&ch(name)), p, "player on {name}");
            assert_eq!(operator.may_subscribe(&ch(name)), o, "operator on {name}");
        }
    }

    /// The largest `exp` (an issuer's "never") is a deadline the clock can hold: the session
    /// adds it to now on every refresh and frame (it panicked, leaving the socket's
    /// subscriptions behind).
    #[test]
    fn the_largest_expiry_is_a_deadline_the_clock_can_hold() {
        for exp in [u64::MAX, 1 << 63, u64::MAX / 2] {
            let mut c = claims("acme", "p1", Role::Player, vec![], Duration::from_secs(60));
            c.exp = exp;
            let left = c.expires_in();
            assert_eq!(left, MAX_EXPIRES_IN);
            let _ = tokio::time::Instant::now() + left;
            let _ = std::time::Instant::now() + left;
        }
    }
}
