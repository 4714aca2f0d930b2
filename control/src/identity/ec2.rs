//! EC2 credentials (Keystone's `ec2` credential type: an access key and a secret for a
//! user on a project) and the check behind `/v3/s3tokens`: a service that received an S3
//! request signed with AWS Signature Version 4 sends the string to sign, the signature
//! and the access key; the signature is recomputed here with the secret, which never
//! leaves control.

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::new_id;
use super::token::{self, Claims, Scope, method, now_secs};
use crate::api::ApiError;
use crate::service::{Service, ServiceError};
use crate::store::Kind;

/// The credential type of EC2 (and S3) keys.
pub const EC2: &str = "ec2";

/// A stored credential (scope: the user id).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialDoc {
    /// Owner.
    pub user_id: String,
    /// Project (required for `ec2`).
    pub project_id: Option<String>,
    /// `ec2`, `totp`, `cert`...
    #[serde(rename = "type")]
    pub kind: String,
    /// The credential itself, a JSON string for `ec2` ([`Ec2Blob`]).
    pub blob: String,
}

/// The blob of an `ec2` credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ec2Blob {
    /// Access key (public).
    pub access: String,
    /// Secret key.
    pub secret: String,
    /// Trust (always `None` here).
    #[serde(default)]
    pub trust_id: Option<String>,
}

impl Ec2Blob {
    /// A fresh random pair.
    pub fn generate() -> Ec2Blob {
        Ec2Blob {
            access: new_id(),
            secret: new_id(),
            trust_id: None,
        }
    }

    /// Parses and checks the blob of an `ec2` credential, or 400 saying what is wrong.
    pub fn parse(blob: &str) -> Result<Ec2Blob, ApiError> {
        let b: Ec2Blob = serde_json::from_str(blob).map_err(|e| {
            ApiError::bad_request(format!(
                "an ec2 credential's blob must be a JSON object with access and secret: {e}"
            ))
        })?;
        if b.access.is_empty() || b.secret.is_empty() || b.access.len() > 255 {
            return Err(ApiError::bad_request(
                "an ec2 credential needs a non-empty access (at most 255 bytes) and secret",
            ));
        }
        Ok(b)
    }

    /// The blob as stored.
    pub fn to_blob(&self) -> String {
        serde_json::to_string(self).expect("blobs serialize")
    }
}

/// The id of the `ec2` credential with this access key (as Keystone makes it): hex SHA-256.
pub fn credential_id(access: &str) -> String {
    hex::encode(Sha256::digest(access.as_bytes()))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("hmac takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// The SigV4 signature (hex) of `string_to_sign` with `secret`, the signing key derived
/// from the credential scope on its third line (`date/region/service/aws4_request`).
/// `None` if the string is not a SigV4 string to sign.
pub fn sigv4_signature(secret: &str, string_to_sign: &str) -> Option<String> {
    let mut lines = string_to_sign.split('\n');
    let algorithm = lines.next()?;
    if algorithm != "AWS4-HMAC-SHA256" && algorithm != "AWS4-HMAC-SHA256-PAYLOAD" {
        return None;
    }
    let _amz_date = lines.next()?;
    let scope: Vec<&str> = lines.next()?.split('/').collect();
    let [date, region, service, "aws4_request"] = scope.as_slice() else {
        return None;
    };
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    let k = hmac(&k, b"aws4_request");
    Some(hex::encode(hmac(&k, string_to_sign.as_bytes())))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The error every failed signature check answers, so a caller learns nothing about
/// which part was wrong beyond an unknown key.
fn mismatch() -> ServiceError {
    ApiError::unauthorized("The request signature does not match the EC2 credential.").into()
}

impl Service {
    /// The `ec2` credential with an access key, if any.
    pub fn ec2_credential(&self, access: &str) -> Result<Option<CredentialDoc>, ServiceError> {
        let Some(rec) = self.store.get(Kind::Credential, &credential_id(access))? else {
            return Ok(None);
        };
        let doc: CredentialDoc = rec.parse()?;
        Ok((doc.kind == EC2).then_some(doc))
    }

    /// Checks an S3 signature made with an EC2 credential and answers claims for a token
    /// scoped to the credential's project (`/v3/s3tokens`).
    pub fn s3_token(
        &self,
        access: &str,
        string_to_sign: &str,
        signature: &str,
    ) -> Result<Claims, ServiceError> {
        let Some(doc) = self.ec2_credential(access)? else {
            return Err(ApiError::unauthorized("EC2 access key not found.").into());
        };
        let blob = Ec2Blob::parse(&doc.blob)?;
        let expected = sigv4_signature(&blob.secret, string_to_sign).ok_or_else(|| {
            ApiError::unauthorized("only AWS Signature Version 4 strings to sign are supported")
        })?;
        if !constant_time_eq(
            expected.as_bytes(),
            signature.to_ascii_lowercase().as_bytes(),
        ) {
            return Err(mismatch());
        }
        let project = doc.project_id.ok_or_else(mismatch)?;
        Ok(Claims {
            methods: method::EC2_CREDENTIAL,
            user_id: doc.user_id,
            scope: Scope::Project(project),
            issued_at_ms: token::now_ms(),
            expires_at: now_secs() + self.config.token_expiry.as_secs(),
            audit_id: token::random_audit_id()?,
            parent_audit_id: None,
            app_cred_id: None,
            trust_id: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigv4_matches_the_aws_documentation_example() {
        // The GET Object example of the S3 SigV4 documentation ("Examples: signature
        // calculations"): its string to sign and signature.
        let sts = "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n\
                   7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972";
        assert_eq!(
            sigv4_signature("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", sts).unwrap(),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert!(sigv4_signature("k", "AWS HMAC\n").is_none());
        assert!(sigv4_signature("k", "AWS4-HMAC-SHA256\nx\n20130524/us-east-1/s3\nh").is_none());
    }

    #[test]
    fn ec2_blobs_and_ids() {
        let b = Ec2Blob::parse(r#"{"access": "a", "secret": "s"}"#).unwrap();
        assert_eq!((b.access.as_str(), b.secret.as_str()), ("a", "s"));
        assert!(Ec2Blob::parse(r#"{"access": "", "secret": "s"}"#).is_err());
        assert!(Ec2Blob::parse("not json").is_err());
        assert_eq!(
            credential_id("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let g = Ec2Blob::generate();
        assert_eq!(Ec2Blob::parse(&g.to_blob()).unwrap().secret, g.secret);
    }
}
