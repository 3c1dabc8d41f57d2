//! Synthetic Windows packages for the demo and the tests: a minimal PE32
//! (x86) or PE32+ (x64, arm64) image with one `.rsrc` section holding a
//! `VS_VERSIONINFO` resource, some filler standing in for the cabinet, and
//! optionally an Authenticode-shaped PKCS#7 `SignedData` in the security
//! directory whose digest matches the file. The signature's RSA value is
//! filler (gapferry does not check it, see [`super::pe`]); the certificate
//! is a well-formed X.509 structure naming a test subject.
//!
//! Nothing here is Microsoft's: the bytes are written field by field.

use sha2::Digest;

use super::WinArch;

/// What to put into a synthetic package.
#[derive(Debug, Clone)]
pub struct FakePackage {
    pub arch: WinArch,
    /// `a.b.c.d`; `None`: no version resource at all.
    pub version: Option<[u16; 4]>,
    /// Bytes of filler after the section (the "cabinet").
    pub filler: usize,
    /// A seed for the filler, so two versions differ in content too.
    pub seed: u8,
    /// Subject CN of the embedded signature; `None`: unsigned.
    pub signer: Option<String>,
}

impl FakePackage {
    /// A signed package for `arch` with version `v`.
    pub fn signed(arch: WinArch, v: [u16; 4]) -> Self {
        FakePackage {
            arch,
            version: Some(v),
            filler: 4096,
            seed: v[2] as u8,
            signer: Some("Test Windows Publisher".into()),
        }
    }

    /// The package's bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut img = image(self);
        if let Some(cn) = &self.signer {
            sign(&mut img, cn);
        }
        img
    }
}

/// Parses `a.b.c.d` into the four words of a fixed version.
pub fn parse_version(s: &str) -> Option<[u16; 4]> {
    let parts: Vec<u16> = s
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    parts.try_into().ok()
}

const FILE_ALIGN: usize = 0x200;
const SECT_RVA: u32 = 0x1000;
const OPT_PE32: usize = 96 + 16 * 8;
const OPT_PE64: usize = 112 + 16 * 8;
/// Offset of the data directories in each optional header.
const DIRS_PE32: usize = 96;
const DIRS_PE64: usize = 112;
const PE_OFF: usize = 0x40;

fn align(n: usize, a: usize) -> usize {
    n.div_ceil(a) * a
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn utf16z(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain([0])
        .flat_map(|c| c.to_le_bytes())
        .collect()
}

fn pad4(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
}

/// One version-info block: wLength, wValueLength, wType, szKey, value,
/// children, each 32-bit aligned.
fn block(key: &str, value: &[u8], value_len: u16, text: bool, children: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 6];
    b.extend(utf16z(key));
    pad4(&mut b);
    b.extend(value);
    pad4(&mut b);
    b.extend(children);
    let len = b.len() as u16;
    put16(&mut b, 0, len);
    put16(&mut b, 2, value_len);
    put16(&mut b, 4, u16::from(text));
    b
}

fn version_info(v: [u16; 4]) -> Vec<u8> {
    let mut fixed = vec![0u8; 52];
    put32(&mut fixed, 0, 0xfeef04bd);
    put32(&mut fixed, 4, 0x0001_0000);
    let ms = (u32::from(v[0]) << 16) | u32::from(v[1]);
    let ls = (u32::from(v[2]) << 16) | u32::from(v[3]);
    put32(&mut fixed, 8, ms);
    put32(&mut fixed, 12, ls);
    put32(&mut fixed, 16, ms);
    put32(&mut fixed, 20, ls);
    put32(&mut fixed, 24, 0x3f);
    put32(&mut fixed, 32, 0x0004_0004); // VOS_NT_WINDOWS32
    put32(&mut fixed, 36, 1); // VFT_APP
    let text = format!("{}.{}.{}.{}", v[0], v[1], v[2], v[3]);
    let value = utf16z(&text);
    let string = block("FileVersion", &value, (value.len() / 2) as u16, true, &[]);
    let table = block("040904b0", &[], 0, true, &string);
    let sfi = block("StringFileInfo", &[], 0, true, &table);
    let mut tr = vec![0u8; 4];
    put16(&mut tr, 0, 0x0409);
    put16(&mut tr, 2, 0x04b0);
    let var = block("Translation", &tr, 4, false, &[]);
    let vfi = block("VarFileInfo", &[], 0, true, &var);
    let mut children = sfi;
    children.extend(vfi);
    block("VS_VERSION_INFO", &fixed, 52, false, &children)
}

/// The `.rsrc` section: RT_VERSION / 1 / 0x409 -> the version info.
fn rsrc(v: Option<[u16; 4]>) -> Vec<u8> {
    let Some(v) = v else {
        // An empty resource directory: a PE without a version.
        return vec![0u8; 16];
    };
    let data = version_info(v);
    let dir = |id: u32, target: u32| {
        let mut d = vec![0u8; 24];
        put16(&mut d, 14, 1); // one id entry
        put32(&mut d, 16, id);
        put32(&mut d, 20, target);
        d
    };
    // Root at 0, type dir at 24, name dir at 48, data entry at 72, data at 88.
    let mut s = dir(16, 0x8000_0000 | 24);
    s.extend(dir(1, 0x8000_0000 | 48));
    s.extend(dir(0x409, 72));
    let mut entry = vec![0u8; 16];
    put32(&mut entry, 0, SECT_RVA + 88);
    put32(&mut entry, 4, data.len() as u32);
    s.extend(entry);
    s.extend(data);
    s
}

/// The unsigned image, padded to 8 bytes (where a signature table starts).
fn image(p: &FakePackage) -> Vec<u8> {
    let pe64 = p.arch != WinArch::X86;
    let opt_size = if pe64 { OPT_PE64 } else { OPT_PE32 };
    let sect_table = PE_OFF + 4 + 20 + opt_size;
    let headers = align(sect_table + 40, FILE_ALIGN);
    let section = rsrc(p.version);
    let raw_size = align(section.len(), FILE_ALIGN);
    let mut b = vec![0u8; headers + raw_size];
    b[0..2].copy_from_slice(b"MZ");
    put32(&mut b, 0x3c, PE_OFF as u32);
    b[PE_OFF..PE_OFF + 4].copy_from_slice(b"PE\0\0");
    let coff = PE_OFF + 4;
    put16(&mut b, coff, p.arch.machine());
    put16(&mut b, coff + 2, 1);
    put16(&mut b, coff + 16, opt_size as u16);
    put16(&mut b, coff + 18, if pe64 { 0x0022 } else { 0x0102 });
    let o = coff + 20;
    put16(&mut b, o, if pe64 { 0x20b } else { 0x10b });
    put32(&mut b, o + 8, raw_size as u32); // SizeOfInitializedData
    put32(&mut b, o + 32, SECT_RVA); // SectionAlignment
    put32(&mut b, o + 36, FILE_ALIGN as u32);
    put16(&mut b, o + 40, 6); // MajorOperatingSystemVersion
    put16(&mut b, o + 48, 6); // MajorSubsystemVersion
    put32(
        &mut b,
        o + 56,
        SECT_RVA + align(section.len(), 0x1000) as u32,
    ); // SizeOfImage
    put32(&mut b, o + 60, headers as u32); // SizeOfHeaders
    put16(&mut b, o + 68, 2); // Subsystem: GUI
    let dirs = if pe64 {
        put64(&mut b, o + 24, 0x1_4000_0000); // ImageBase
        put64(&mut b, o + 72, 0x10_0000);
        put64(&mut b, o + 80, 0x1000);
        put64(&mut b, o + 88, 0x10_0000);
        put64(&mut b, o + 96, 0x1000);
        o + DIRS_PE64
    } else {
        put32(&mut b, o + 28, 0x40_0000); // ImageBase
        put32(&mut b, o + 72, 0x10_0000);
        put32(&mut b, o + 76, 0x1000);
        put32(&mut b, o + 80, 0x10_0000);
        put32(&mut b, o + 84, 0x1000);
        o + DIRS_PE32
    };
    put32(&mut b, dirs - 4, 16); // NumberOfRvaAndSizes
    put32(&mut b, dirs + 2 * 8, SECT_RVA); // resource directory
    put32(&mut b, dirs + 2 * 8 + 4, section.len() as u32);
    let s = sect_table;
    b[s..s + 5].copy_from_slice(b".rsrc");
    put32(&mut b, s + 8, section.len() as u32);
    put32(&mut b, s + 12, SECT_RVA);
    put32(&mut b, s + 16, raw_size as u32);
    put32(&mut b, s + 20, headers as u32);
    put32(&mut b, s + 36, 0x4000_0040);
    b[headers..headers + section.len()].copy_from_slice(&section);
    // The "cabinet": deterministic filler after the section.
    let mut x = u32::from(p.seed)
        .wrapping_mul(2_654_435_761)
        .wrapping_add(1);
    for _ in 0..p.filler {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        b.push(x as u8);
    }
    while !b.len().is_multiple_of(8) {
        b.push(0);
    }
    b
}

/// Offset of the security data directory entry.
fn security_dir(b: &[u8]) -> usize {
    let o = PE_OFF + 4 + 20;
    let magic = u16::from_le_bytes([b[o], b[o + 1]]);
    o + if magic == 0x20b { DIRS_PE64 } else { DIRS_PE32 } + 4 * 8
}

/// Appends a WIN_CERTIFICATE holding an Authenticode SignedData over the
/// image's Authenticode digest, and points the security directory at it.
fn sign(img: &mut Vec<u8>, cn: &str) {
    let digest = {
        let pe_digest = |bytes: &[u8]| -> Vec<u8> {
            let mut h = sha2::Sha256::new();
            let magic = object::FileKind::parse(bytes).expect("a PE we built");
            match magic {
                object::FileKind::Pe64 => {
                    let pe = object::read::pe::PeFile64::parse(bytes).expect("a PE we built");
                    authenticode::authenticode_digest(&pe, &mut h).expect("digest");
                }
                _ => {
                    let pe = object::read::pe::PeFile32::parse(bytes).expect("a PE we built");
                    authenticode::authenticode_digest(&pe, &mut h).expect("digest");
                }
            }
            h.finalize().to_vec()
        };
        pe_digest(img)
    };
    let pkcs7 = der::signed_data(&digest, cn);
    let len = 8 + pkcs7.len();
    let mut cert = Vec::with_capacity(align(len, 8));
    cert.extend((len as u32).to_le_bytes());
    cert.extend(0x0200u16.to_le_bytes()); // WIN_CERT_REVISION_2_0
    cert.extend(0x0002u16.to_le_bytes()); // WIN_CERT_TYPE_PKCS_SIGNED_DATA
    cert.extend(pkcs7);
    while cert.len() % 8 != 0 {
        cert.push(0);
    }
    let at = img.len() as u32;
    let dir = security_dir(img);
    put32(img, dir, at);
    put32(img, dir + 4, cert.len() as u32);
    img.extend(cert);
}

/// Just enough DER to write an Authenticode SignedData.
mod der {
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        let n = content.len();
        if n < 0x80 {
            v.push(n as u8);
        } else {
            let bytes: Vec<u8> = n
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            v.push(0x80 | bytes.len() as u8);
            v.extend(bytes);
        }
        v.extend(content);
        v
    }
    fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }
    fn set(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x31, &parts.concat())
    }
    fn explicit(n: u8, inner: Vec<u8>) -> Vec<u8> {
        tlv(0xa0 | n, &inner)
    }
    fn int(v: u8) -> Vec<u8> {
        tlv(0x02, &[v])
    }
    fn null() -> Vec<u8> {
        vec![0x05, 0x00]
    }
    fn oid(encoded: &[u8]) -> Vec<u8> {
        tlv(0x06, encoded)
    }
    fn octets(v: &[u8]) -> Vec<u8> {
        tlv(0x04, v)
    }
    fn bits(v: &[u8]) -> Vec<u8> {
        let mut c = vec![0];
        c.extend(v);
        tlv(0x03, &c)
    }
    fn utf8(s: &str) -> Vec<u8> {
        tlv(0x0c, s.as_bytes())
    }
    fn utc(s: &str) -> Vec<u8> {
        tlv(0x17, s.as_bytes())
    }

    const SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
    const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const SHA256_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
    const SPC_INDIRECT: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x01, 0x04];
    const SPC_PE_IMAGE: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x01, 0x0f];
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    const O: &[u8] = &[0x55, 0x04, 0x0a];

    fn alg(o: &[u8]) -> Vec<u8> {
        seq(&[oid(o), null()])
    }
    fn name(cn: &str) -> Vec<u8> {
        seq(&[
            set(&[seq(&[oid(O), utf8("gapferry test")])]),
            set(&[seq(&[oid(CN), utf8(cn)])]),
        ])
    }

    /// ContentInfo { signedData, SignedData { SpcIndirectDataContent with
    /// `digest`, one certificate for `cn`, one SignerInfo naming it } }.
    pub(super) fn signed_data(digest: &[u8], cn: &str) -> Vec<u8> {
        let issuer = name("gapferry test code signing CA");
        let serial = int(0x2a);
        let spki = seq(&[alg(RSA), bits(&[0x30, 0x03, 0x02, 0x01, 0x03])]);
        let tbs = seq(&[
            explicit(0, int(2)),
            serial.clone(),
            alg(SHA256_RSA),
            issuer.clone(),
            seq(&[utc("250101000000Z"), utc("350101000000Z")]),
            name(cn),
            spki,
        ]);
        let cert = seq(&[tbs, alg(SHA256_RSA), bits(&[0x5a; 32])]);
        let indirect = seq(&[
            seq(&[
                oid(SPC_PE_IMAGE),
                seq(&[bits(&[]), explicit(0, tlv(0xa2, &tlv(0x80, &[])))]),
            ]),
            seq(&[alg(SHA256), octets(digest)]),
        ]);
        let signer = seq(&[
            int(1),
            seq(&[issuer, serial]),
            alg(SHA256),
            alg(RSA),
            octets(&[0xa5; 64]),
        ]);
        let sd = seq(&[
            int(1),
            set(&[alg(SHA256)]),
            seq(&[oid(SPC_INDIRECT), explicit(0, indirect)]),
            tlv(0xa0, &cert),
            set(&[signer]),
        ]);
        seq(&[oid(SIGNED_DATA), explicit(0, sd)])
    }
}

#[cfg(test)]
mod tests {
    use super::super::pe::analyze;
    use super::*;

    #[test]
    fn every_arch_reads_back_with_version_and_signer() {
        for &arch in WinArch::ALL {
            let p = FakePackage::signed(arch, [1, 421, 1234, 0]);
            let info = analyze(&p.build()).unwrap_or_else(|e| panic!("{arch}: {e}"));
            assert_eq!(info.version, "1.421.1234.0");
            assert_eq!(info.machine, arch.machine());
            let sig = info.signature.expect("signed");
            let subject = sig.signer_subject.expect("subject");
            assert!(subject.contains("CN=Test Windows Publisher"), "{subject}");
        }
    }

    #[test]
    fn unsigned_has_no_signature_and_no_version_is_refused() {
        let mut p = FakePackage::signed(WinArch::X64, [1, 2, 3, 4]);
        p.signer = None;
        assert_eq!(analyze(&p.build()).unwrap().signature, None);
        p.version = None;
        let e = analyze(&p.build()).unwrap_err();
        assert!(e.contains("no version resource"), "{e}");
    }

    #[test]
    fn hostile_files_are_refused_with_a_reason() {
        let e = analyze(b"<!DOCTYPE html><html>sign in</html>").unwrap_err();
        assert!(e.contains("HTML page"), "{e}");
        let good = FakePackage::signed(WinArch::X86, [1, 2, 3, 4]).build();
        // Cut inside the section: truncated.
        let e = analyze(&good[..0x300]).unwrap_err();
        assert!(e.contains("truncated") || e.contains("complete"), "{e}");
        // Cut inside the signature table.
        let e = analyze(&good[..good.len() - 20]).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        // One byte of the "cabinet" changed after signing.
        let mut bad = good.clone();
        bad[0x500] ^= 1;
        let e = analyze(&bad).unwrap_err();
        assert!(e.contains("digest does not match"), "{e}");
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("1.421.7.0"), Some([1, 421, 7, 0]));
        assert_eq!(parse_version("1.421.7"), None);
        assert_eq!(parse_version("1.x.7.0"), None);
    }
}
