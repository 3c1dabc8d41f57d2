//! What gapferry checks in a Windows security intelligence package before
//! it goes anywhere: that the file is a complete PE image (not an HTML error
//! page, not cut short), the version in its version resource (the item's
//! version, by which downgrades are judged), and its embedded Authenticode
//! signature: present, well formed, and covering these exact bytes (the
//! Authenticode digest recomputed and compared with the signed one).
//!
//! What is NOT checked here (and said in docs/SECURITY.md): the signer's
//! RSA signature over the signed data, the certificate chain to Microsoft's
//! root, revocation and timestamps. Windows checks those when it runs the
//! package; gapferry reports the signer's subject so a person can see it.
//!
//! This module reads bytes only; it never opens files it was not given and
//! never writes.

use std::io::Read;
use std::path::Path;

use authenticode::{AttributeCertificateIterator, AuthenticodeSignature, PeTrait};
use object::read::pe::{ImageNtHeaders, ImageOptionalHeader, PeFile32, PeFile64};
use sha2::Digest;

use super::MAX_PACKAGE;

/// A package checked by [`analyze`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInfo {
    /// The PE `Machine` field (0x8664 x64, 0x14c x86, 0xaa64 arm64).
    pub machine: u16,
    /// The file version of the fixed version resource, `a.b.c.d`.
    pub version: String,
    /// The embedded Authenticode signature, if the package has one.
    pub signature: Option<SignatureInfo>,
}

/// The embedded Authenticode signature, as far as gapferry reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureInfo {
    /// The signing certificate's subject (RFC 4514), when the signature
    /// carries the certificate its signer names.
    pub signer_subject: Option<String>,
    /// The Authenticode digest algorithm.
    pub digest_algorithm: String,
}

/// Reads a package file whole (the checks need it in memory), refusing one
/// larger than [`MAX_PACKAGE`].
pub fn read_package(path: &Path) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    f.take(MAX_PACKAGE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_PACKAGE {
        return Err(std::io::Error::other(format!(
            "larger than the {MAX_PACKAGE} bytes gapferry accepts for a Windows package"
        )));
    }
    Ok(bytes)
}

/// What a file starts with, for messages about a file that is not a PE.
fn looks_like(bytes: &[u8]) -> String {
    let head: String = String::from_utf8_lossy(&bytes[..bytes.len().min(16)])
        .chars()
        .map(|c| if c.is_control() { '.' } else { c })
        .collect();
    let lower = head.to_ascii_lowercase();
    if lower.trim_start().starts_with("<!doctype") || lower.trim_start().starts_with("<html") {
        "it is an HTML page (a proxy or sign-in page instead of the package?)".into()
    } else if bytes.is_empty() {
        "it is empty".into()
    } else {
        format!("it starts with {head:?}")
    }
}

/// Checks a package and reads its version and signature. The error is the
/// reason the file is not a usable package, for "FILE: <reason>" messages.
pub fn analyze(bytes: &[u8]) -> Result<PackageInfo, String> {
    if bytes.len() < 2 || &bytes[..2] != b"MZ" {
        return Err(format!("is not a Windows PE file: {}", looks_like(bytes)));
    }
    let kind = object::FileKind::parse(bytes)
        .map_err(|e| format!("is not a complete PE file: {e} (truncated download?)"))?;
    match kind {
        object::FileKind::Pe32 => {
            let pe = PeFile32::parse(bytes)
                .map_err(|e| format!("is not a complete PE file: {e} (truncated download?)"))?;
            analyze_pe(&pe, bytes)
        }
        object::FileKind::Pe64 => {
            let pe = PeFile64::parse(bytes)
                .map_err(|e| format!("is not a complete PE file: {e} (truncated download?)"))?;
            analyze_pe(&pe, bytes)
        }
        other => Err(format!(
            "is not a Windows PE image (it parses as {other:?}); is this the right file?"
        )),
    }
}

fn analyze_pe<I: ImageNtHeaders>(
    pe: &object::read::pe::PeFile<'_, I>,
    bytes: &[u8],
) -> Result<PackageInfo, String> {
    let len = bytes.len() as u64;
    // Every section's bytes and the signature table must be in the file: a
    // download cut short fails here, whatever else it still parses as.
    for s in pe.section_table().iter() {
        let (start, size) = s.pe_file_range();
        if u64::from(start) + u64::from(size) > len {
            return Err(format!(
                "is truncated: section {:?} ends at byte {} but the file has {len} (re-run the download)",
                String::from_utf8_lossy(s.raw_name()),
                u64::from(start) + u64::from(size)
            ));
        }
    }
    if let Some(dir) = pe.data_directory(object::pe::IMAGE_DIRECTORY_ENTRY_SECURITY) {
        // Its address is a file offset: the signature table is the file's tail.
        let end = u64::from(dir.virtual_address.get(object::LittleEndian))
            + u64::from(dir.size.get(object::LittleEndian));
        if end > len {
            return Err(format!(
                "is truncated: its signature table ends at byte {end} but the file has {len} (re-run the download)"
            ));
        }
    }
    let machine = pe
        .nt_headers()
        .file_header()
        .machine
        .get(object::LittleEndian);
    let size_of_image = pe.nt_headers().optional_header().size_of_image();
    if size_of_image == 0 {
        return Err("is not a complete PE file: SizeOfImage is 0".into());
    }
    let version = version_of(bytes)?;
    let signature = signature_of(pe)?;
    Ok(PackageInfo {
        machine,
        version,
        signature,
    })
}

/// The file version in the fixed part of the version resource.
fn version_of(bytes: &[u8]) -> Result<String, String> {
    let no_version = |why: String| {
        format!("has no version resource ({why}); it is not a security intelligence package")
    };
    let file =
        pelite::PeFile::from_bytes(bytes).map_err(|e| format!("is not a complete PE file: {e}"))?;
    let resources = file.resources().map_err(|e| no_version(e.to_string()))?;
    let info = resources
        .version_info()
        .map_err(|e| no_version(e.to_string()))?;
    let fixed = info
        .fixed()
        .ok_or_else(|| no_version("no VS_FIXEDFILEINFO".into()))?;
    if fixed.dwSignature != 0xfeef04bd {
        return Err(no_version("VS_FIXEDFILEINFO has a wrong signature".into()));
    }
    let v = fixed.dwFileVersion;
    if (v.Major, v.Minor, v.Patch, v.Build) == (0, 0, 0, 0) {
        return Err(no_version("its file version is 0.0.0.0".into()));
    }
    // pelite names the four words Major.Minor.Patch.Build in display order.
    Ok(format!("{}.{}.{}.{}", v.Major, v.Minor, v.Patch, v.Build))
}

/// The embedded Authenticode signature: none (`Ok(None)`), or one that is
/// well formed and whose digest matches the file; anything else is an error.
fn signature_of<I: ImageNtHeaders>(
    pe: &object::read::pe::PeFile<'_, I>,
) -> Result<Option<SignatureInfo>, String> {
    let bad = |why: String| format!("has a damaged Authenticode signature: {why}");
    let Some(certs) = AttributeCertificateIterator::new(pe).map_err(|e| bad(e.to_string()))? else {
        return Ok(None);
    };
    // Windows reads the first attribute certificate; so does gapferry.
    let mut certs = certs;
    let Some(cert) = certs.next() else {
        return Ok(None);
    };
    let cert = cert.map_err(|e| bad(e.to_string()))?;
    let sig = cert
        .get_authenticode_signature()
        .map_err(|e| bad(e.to_string()))?;
    let alg = sig.digest_algorithm().oid.to_string();
    let computed: Vec<u8> = if alg == SHA256_OID {
        let mut h = sha2::Sha256::new();
        authenticode::authenticode_digest(pe as &dyn PeTrait, &mut h)
            .map_err(|e| bad(e.to_string()))?;
        h.finalize().to_vec()
    } else {
        return Err(bad(format!(
            "digest algorithm {alg} is not SHA-256, the only one gapferry checks"
        )));
    };
    if computed != sig.digest() {
        return Err(bad(
            "the file's Authenticode digest does not match the signed one (modified or damaged after signing)"
                .into(),
        ));
    }
    Ok(Some(SignatureInfo {
        signer_subject: signer_subject(&sig),
        digest_algorithm: "sha256".into(),
    }))
}

/// id-sha256.
const SHA256_OID: &str = "2.16.840.1.101.3.4.2.1";

/// The subject of the certificate the signer info names by issuer and
/// serial number.
fn signer_subject(sig: &AuthenticodeSignature) -> Option<String> {
    use cms::signed_data::SignerIdentifier;
    let SignerIdentifier::IssuerAndSerialNumber(id) = &sig.signer_info().sid else {
        return None;
    };
    sig.certificates()
        .find(|c| {
            c.tbs_certificate.issuer == id.issuer
                && c.tbs_certificate.serial_number == id.serial_number
        })
        .map(|c| c.tbs_certificate.subject.to_string())
}
