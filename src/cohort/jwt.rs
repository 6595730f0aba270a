//! The `jwt` cohort matcher: where the token is taken from (a cookie, or a header with an
//! optional `Bearer ` prefix), the key file and the pinned algorithm it is verified with, the
//! registered claims enforced (`exp`, `nbf`, `iss`, `aud`, with leeway) and the claim (or dotted
//! path) whose value puts the request in a cohort.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use http::header::{HeaderMap, HeaderName, AUTHORIZATION};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::{check_values, JwtMatcherConfig};
use crate::util::cookie::cookie_value;
use crate::util::cookie::valid_cookie_name;
use crate::util::duration;
use crate::util::field_error::FieldError;

/// Longest token (bytes) we are willing to base64-decode and verify; longer ones do not match.
const MAX_JWT_LEN: usize = 16 * 1024;

enum TokenSource {
    Cookie(String),
    Header(HeaderName),
}

pub(super) struct JwtMatcher {
    source: TokenSource,
    claim_path: Vec<String>,
    values: Vec<String>,
    key: DecodingKey,
    validation: Validation,
    leeway_secs: u64,
}

pub(super) fn compile_jwt(
    j: &JwtMatcherConfig,
    key: &str,
    base_dir: &Path,
    errors: &mut Vec<FieldError>,
) -> Option<JwtMatcher> {
    let before = errors.len();
    let source = match (&j.cookie, &j.header) {
        (Some(_), Some(_)) => {
            errors.push(FieldError::new(
                key,
                "give either cookie or header for the token, not both",
            ));
            None
        }
        (Some(c), None) => {
            if !valid_cookie_name(c) {
                errors.push(FieldError::new(
                    format!("{key}.cookie"),
                    format!("{c:?} is not a valid cookie name"),
                ));
            }
            Some(TokenSource::Cookie(c.clone()))
        }
        (None, Some(h)) => match HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => Some(TokenSource::Header(n)),
            Err(_) => {
                errors.push(FieldError::new(
                    format!("{key}.header"),
                    format!("{h:?} is not a valid header name"),
                ));
                None
            }
        },
        (None, None) => Some(TokenSource::Header(AUTHORIZATION)),
    };
    let claim_path: Vec<String> = j.claim.split('.').map(str::to_owned).collect();
    if claim_path.iter().any(String::is_empty) {
        errors.push(FieldError::new(
            format!("{key}.claim"),
            format!("{:?} is not a claim name (or dotted path)", j.claim),
        ));
    }
    check_values(&j.values, &format!("{key}.values"), errors);
    let leeway_secs = duration::parse(&j.leeway)
        .map(|d| d.as_secs())
        .unwrap_or_else(|_| {
            errors.push(FieldError::new(
                format!("{key}.leeway"),
                format!("{:?} is not a duration like \"30s\"", j.leeway),
            ));
            0
        });
    let algorithm = match Algorithm::from_str(j.algorithm.trim()) {
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(FieldError::new(
                format!("{key}.algorithm"),
                format!(
                    "unknown algorithm {:?}; supported: HS256 HS384 HS512 RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA",
                    j.algorithm
                ),
            ));
            None
        }
    };
    let path: PathBuf = if Path::new(&j.key_file).is_absolute() {
        PathBuf::from(&j.key_file)
    } else {
        base_dir.join(&j.key_file)
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => Some(b),
        Err(e) => {
            errors.push(FieldError::new(
                format!("{key}.key_file"),
                format!("cannot read key file {}: {e}", path.display()),
            ));
            None
        }
    };
    let decoding_key = match (algorithm, bytes) {
        (Some(alg), Some(bytes)) => {
            let r = match alg {
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                    let mut secret: &[u8] = &bytes;
                    while let [rest @ .., b'\n' | b'\r'] = secret {
                        secret = rest;
                    }
                    if secret.len() < 32 {
                        Err(format!(
                            "HMAC secret in {} is {} bytes, at least 32 are required",
                            path.display(),
                            secret.len()
                        ))
                    } else {
                        Ok(DecodingKey::from_secret(secret))
                    }
                }
                Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512 => DecodingKey::from_rsa_pem(&bytes)
                    .map_err(|e| format!("{} is not a PEM RSA public key: {e}", path.display())),
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&bytes)
                    .map_err(|e| format!("{} is not a PEM EC public key: {e}", path.display())),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(&bytes).map_err(|e| {
                    format!("{} is not a PEM Ed25519 public key: {e}", path.display())
                }),
            };
            match r {
                Ok(k) => Some((alg, k)),
                Err(reason) => {
                    errors.push(FieldError::new(format!("{key}.key_file"), reason));
                    None
                }
            }
        }
        _ => None,
    };
    let (alg, decoding_key) = decoding_key?;
    let source = source?;
    if errors.len() != before {
        return None;
    }
    let mut validation = Validation::new(alg);
    // exp/nbf are checked by us against an injectable clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp"]);
    if let Some(iss) = &j.issuer {
        validation.set_issuer(&[iss]);
        validation.required_spec_claims.insert("iss".to_owned());
    }
    match &j.audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            validation.required_spec_claims.insert("aud".to_owned());
        }
        None => validation.validate_aud = false,
    }
    Some(JwtMatcher {
        source,
        claim_path,
        values: j.values.clone(),
        key: decoding_key,
        validation,
        leeway_secs,
    })
}

impl JwtMatcher {
    fn token<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        let raw = match &self.source {
            TokenSource::Cookie(name) => cookie_value(headers, name)?,
            TokenSource::Header(name) => {
                let v = headers.get(name)?.to_str().ok()?.trim();
                match v.get(..7) {
                    Some(p) if p.eq_ignore_ascii_case("bearer ") => v[7..].trim_start(),
                    _ => v,
                }
            }
        };
        (!raw.is_empty() && raw.len() <= MAX_JWT_LEN).then_some(raw)
    }

    pub(super) fn matches(&self, headers: &HeaderMap, now_unix: u64) -> bool {
        let Some(token) = self.token(headers) else {
            return false;
        };
        let data =
            match jsonwebtoken::decode::<serde_json::Value>(token, &self.key, &self.validation) {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(reason = %e, "cohort jwt rejected");
                    return false;
                }
            };
        let claims = &data.claims;
        let now = now_unix as f64;
        let leeway = self.leeway_secs as f64;
        match claims.get("exp").and_then(serde_json::Value::as_f64) {
            Some(exp) if now < exp + leeway => {}
            _ => {
                tracing::debug!("cohort jwt expired or without numeric exp");
                return false;
            }
        }
        if let Some(nbf) = claims.get("nbf") {
            match nbf.as_f64() {
                Some(nbf) if now + leeway >= nbf => {}
                _ => return false,
            }
        }
        let mut v = claims;
        for part in &self.claim_path {
            match v.get(part.as_str()) {
                Some(next) => v = next,
                None => return false,
            }
        }
        match v {
            serde_json::Value::String(s) => self.values.iter().any(|x| x == s),
            serde_json::Value::Array(items) => items.iter().any(|item| {
                item.as_str()
                    .is_some_and(|s| self.values.iter().any(|x| x == s))
            }),
            _ => false,
        }
    }
}
