//! WireGuard credentials for the VPN nodes the orchestrator creates itself
//! (`VPN_CONFIGS_DIR`): one `.conf` file per credential, in the format
//! `wg-quick` and VPN providers use, of which one node may use each at a
//! time. A file becomes the environment of Gluetun's `custom` WireGuard
//! provider (checked against Gluetun's wiki, `setup/providers/custom.md` and
//! `setup/options/wireguard.md`): environment variables, not a bind-mounted
//! file, so that it also works when the orchestrator itself runs in a
//! container and the Docker daemon cannot see its files.
//!
//! A file that does not parse is reported with its name, line and field; the
//! other files are still used.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use base64::Engine as _;

/// Files larger than this are not credentials.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// One credential: what a Gluetun node needs to open its tunnel.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The file's name without `.conf`: what leases and labels carry.
    pub name: String,
    pub file: PathBuf,
    /// The server's public key (not a secret; shown to tell nodes apart).
    pub public_key: String,
    /// The server's address.
    pub endpoint: SocketAddr,
    /// Gluetun's environment for this credential, private key included.
    env: Vec<(String, String)>,
}

// By hand, so that the private key never reaches a log line.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("file", &self.file)
            .field("public_key", &self.public_key)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// Gluetun's environment (`VPN_SERVICE_PROVIDER=custom`,
    /// `VPN_TYPE=wireguard`, `WIREGUARD_*`). Holds the private key: goes to
    /// the container's environment and nowhere else.
    pub fn gluetun_env(&self) -> &[(String, String)] {
        &self.env
    }
}

/// Why a credential file cannot be used: the file, the line when there is
/// one, and what is wrong (never a key's value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct CredentialError {
    /// The file's name in `VPN_CONFIGS_DIR`.
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

/// What `VPN_CONFIGS_DIR` holds: the usable credentials (by name) and the
/// files that are not.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub usable: Vec<Credential>,
    pub broken: Vec<CredentialError>,
}

/// Reads every `*.conf` file of `dir` (other files are ignored), sorted by
/// name. Only a directory that cannot be listed is an error.
pub fn load_dir(dir: &Path) -> std::io::Result<Credentials> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "conf"))
        .collect();
    files.sort();
    let mut found = Credentials::default();
    for path in files {
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let problem = |message: String| CredentialError {
            file: file.clone(),
            line: None,
            message,
        };
        let text = match std::fs::metadata(&path) {
            Ok(meta) if !meta.is_file() => continue,
            Ok(meta) if meta.len() > MAX_FILE_BYTES => {
                found.broken.push(problem(format!(
                    "{} bytes: too large for a WireGuard configuration",
                    meta.len()
                )));
                continue;
            }
            Ok(_) => std::fs::read_to_string(&path),
            Err(e) => Err(e),
        };
        match text {
            Ok(text) => match parse(&file, &path, &text) {
                Ok(credential) => found.usable.push(credential),
                Err(e) => found.broken.push(e),
            },
            Err(e) => found.broken.push(problem(format!("cannot be read: {e}"))),
        }
    }
    Ok(found)
}

/// A value of the file and the line it was on.
struct Value {
    text: String,
    line: usize,
}

#[derive(Default)]
struct Section {
    /// Key (lowercase) → values, in file order (some keys may repeat).
    values: BTreeMap<String, Vec<Value>>,
    line: usize,
}

/// Parses one file (`file` is its name, for messages).
pub fn parse(file: &str, path: &Path, text: &str) -> Result<Credential, CredentialError> {
    let fail = |line: Option<usize>, message: String| CredentialError {
        file: file.to_owned(),
        line,
        message,
    };
    let mut interface: Option<Section> = None;
    let mut peers: Vec<Section> = Vec::new();
    // Which section the lines below a header go to.
    enum At {
        Nowhere,
        Interface,
        Peer,
    }
    let mut at = At::Nowhere;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let content = raw.split('#').next().unwrap_or_default().trim();
        if content.is_empty() {
            continue;
        }
        if let Some(header) = content.strip_prefix('[') {
            let Some(name) = header.strip_suffix(']') else {
                return Err(fail(
                    Some(line),
                    format!("'{content}' is not a section header like [Interface]"),
                ));
            };
            match name.trim().to_ascii_lowercase().as_str() {
                "interface" if interface.is_some() => {
                    return Err(fail(Some(line), "a second [Interface] section".into()))
                }
                "interface" => {
                    interface = Some(Section {
                        line,
                        ..Section::default()
                    });
                    at = At::Interface;
                }
                "peer" => {
                    peers.push(Section {
                        line,
                        ..Section::default()
                    });
                    at = At::Peer;
                }
                other => {
                    return Err(fail(
                        Some(line),
                        format!("unknown section [{other}] (expected [Interface] or [Peer])"),
                    ))
                }
            }
            continue;
        }
        let Some((key, value)) = content.split_once('=') else {
            return Err(fail(Some(line), "not a 'Key = value' line".to_owned()));
        };
        let section = match at {
            At::Interface => interface.as_mut(),
            At::Peer => peers.last_mut(),
            At::Nowhere => None,
        };
        let Some(section) = section else {
            return Err(fail(
                Some(line),
                format!(
                    "'{}' comes before any [Interface] or [Peer] section",
                    key.trim()
                ),
            ));
        };
        section
            .values
            .entry(key.trim().to_ascii_lowercase())
            .or_default()
            .push(Value {
                text: value.trim().to_owned(),
                line,
            });
    }
    let Some(interface) = interface else {
        return Err(fail(None, "no [Interface] section".into()));
    };
    let peer = match peers.len() {
        0 => return Err(fail(None, "no [Peer] section".into())),
        1 => peers.remove(0),
        _ => {
            return Err(fail(
                Some(peers[1].line),
                "a second [Peer] section (Gluetun connects to one server)".into(),
            ))
        }
    };

    // One value of a key (the last one wins, as with wg-quick), or None.
    let single = |section: &Section, key: &str| -> Option<(String, usize)> {
        section
            .values
            .get(key)
            .and_then(|v| v.last())
            .map(|v| (v.text.clone(), v.line))
    };
    let required = |section: &Section, name: &str, key: &str, what: &str| {
        single(section, key)
            .filter(|(v, _)| !v.is_empty())
            .ok_or_else(|| fail(Some(section.line), format!("[{name}] {what} is missing")))
    };
    let key_field = |section: &Section, name: &str, key: &str, what: &str, optional: bool| {
        let found = if optional {
            match single(section, key) {
                Some((v, line)) if !v.is_empty() => (v, line),
                _ => return Ok(None),
            }
        } else {
            required(section, name, key, what)?
        };
        // A WireGuard key is 32 bytes in base64 (44 characters). Its value
        // is never repeated in a message.
        match base64::engine::general_purpose::STANDARD.decode(&found.0) {
            Ok(bytes) if bytes.len() == 32 => Ok(Some(found.0)),
            _ => Err(fail(
                Some(found.1),
                format!(
                    "[{name}] {what} is not a WireGuard key (32 bytes in base64, 44 characters)"
                ),
            )),
        }
    };

    let private_key =
        key_field(&interface, "Interface", "privatekey", "PrivateKey", false)?.unwrap_or_default();
    let public_key = key_field(&peer, "Peer", "publickey", "PublicKey", false)?.unwrap_or_default();
    let preshared_key = key_field(&peer, "Peer", "presharedkey", "PresharedKey", true)?;

    // Address may repeat and holds comma-separated prefixes; wg-quick takes a
    // bare address as a host route.
    let mut addresses = Vec::new();
    for value in interface.values.get("address").into_iter().flatten() {
        for item in value
            .text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            addresses.push(prefix(item, true).ok_or_else(|| {
                fail(
                    Some(value.line),
                    format!("[Interface] Address '{item}' is not an IP address with an optional /prefix"),
                )
            })?);
        }
    }
    if addresses.is_empty() {
        return Err(fail(
            Some(interface.line),
            "[Interface] Address is missing".into(),
        ));
    }
    let mut allowed = Vec::new();
    for value in peer.values.get("allowedips").into_iter().flatten() {
        for item in value
            .text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            allowed.push(prefix(item, false).ok_or_else(|| {
                fail(
                    Some(value.line),
                    format!("[Peer] AllowedIPs '{item}' is not an IP range like 0.0.0.0/0"),
                )
            })?);
        }
    }

    let (endpoint_text, endpoint_line) = required(&peer, "Peer", "endpoint", "Endpoint")?;
    let endpoint = endpoint(&endpoint_text).map_err(|why| {
        fail(
            Some(endpoint_line),
            format!("[Peer] Endpoint '{endpoint_text}' {why}"),
        )
    })?;

    let mtu = match single(&interface, "mtu") {
        Some((v, line)) => Some(v.parse::<u32>().ok().filter(|m| *m > 0).ok_or_else(|| {
            fail(
                Some(line),
                format!("[Interface] MTU '{v}' is not a positive number"),
            )
        })?),
        None => None,
    };
    let keepalive = match single(&peer, "persistentkeepalive") {
        Some((v, _)) if v.eq_ignore_ascii_case("off") => None,
        Some((v, line)) => Some(v.parse::<u16>().map_err(|_| {
            fail(
                Some(line),
                format!("[Peer] PersistentKeepalive '{v}' is not a number of seconds or 'off'"),
            )
        })?),
        None => None,
    };

    let mut env: Vec<(String, String)> = vec![
        ("VPN_SERVICE_PROVIDER".into(), "custom".into()),
        ("VPN_TYPE".into(), "wireguard".into()),
        ("WIREGUARD_PRIVATE_KEY".into(), private_key),
        ("WIREGUARD_PUBLIC_KEY".into(), public_key.clone()),
        ("WIREGUARD_ADDRESSES".into(), addresses.join(",")),
        ("WIREGUARD_ENDPOINT_IP".into(), endpoint.ip().to_string()),
        (
            "WIREGUARD_ENDPOINT_PORT".into(),
            endpoint.port().to_string(),
        ),
    ];
    if let Some(psk) = preshared_key {
        env.push(("WIREGUARD_PRESHARED_KEY".into(), psk));
    }
    if !allowed.is_empty() {
        env.push(("WIREGUARD_ALLOWED_IPS".into(), allowed.join(",")));
    }
    if let Some(mtu) = mtu {
        env.push(("WIREGUARD_MTU".into(), mtu.to_string()));
    }
    if let Some(seconds) = keepalive.filter(|s| *s > 0) {
        env.push((
            "WIREGUARD_PERSISTENT_KEEPALIVE_INTERVAL".into(),
            format!("{seconds}s"),
        ));
    }
    Ok(Credential {
        name: file.strip_suffix(".conf").unwrap_or(file).to_owned(),
        file: path.to_owned(),
        public_key,
        endpoint,
        env,
    })
}

/// `10.0.0.2/32`, `fd00::2/128`; with `bare_is_host`, `10.0.0.2` means
/// `10.0.0.2/32`.
fn prefix(text: &str, bare_is_host: bool) -> Option<String> {
    let (ip, bits) = match text.split_once('/') {
        Some((ip, bits)) => (ip.trim().parse::<IpAddr>().ok()?, Some(bits.trim())),
        None => (text.parse::<IpAddr>().ok()?, None),
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        Some(bits) => bits.parse::<u8>().ok().filter(|b| *b <= max)?,
        None if bare_is_host => max,
        None => return None,
    };
    Some(format!("{ip}/{bits}"))
}

/// `1.2.3.4:51820` or `[2001:db8::1]:51820`. Gluetun connects to an IP
/// address only (it resolves nothing before the tunnel is up).
fn endpoint(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        if address.port() == 0 {
            return Err("has port 0".into());
        }
        return Ok(address);
    }
    match text.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() && !host.is_empty() => Err(
            "names a host, not an IP address: Gluetun needs the server's IP address (resolve it and write the IP in the file)".into(),
        ),
        _ => Err("is not an address like 198.51.100.1:51820".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIVATE: &str = "wOEI9rqqbDwnN8/Bpp22sVz48T71vJ4fYmFWujulwUU=";
    const PUBLIC: &str = "wAUaJMhAq3NFutLHIdF8AN0B5WG8RndfQKLPTEDHal0=";
    const PSK: &str = "xOEI9rqqbDwnN8/Bpp22sVz48T71vJ4fYmFWujulwUU=";

    fn good() -> String {
        format!(
            "# from the provider\n[Interface]\nPrivateKey = {PRIVATE}\nAddress = 10.64.222.21/32, fc00:bbbb::2/128\nDNS = 10.64.0.1\nMTU = 1420\n\n[Peer]\nPublicKey = {PUBLIC}\nPresharedKey = {PSK}\nAllowedIPs = 0.0.0.0/0, ::/0\nEndpoint = 198.51.100.7:51820\nPersistentKeepalive = 25\n"
        )
    }

    fn env(c: &Credential) -> BTreeMap<&str, &str> {
        c.gluetun_env()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    fn error(text: &str) -> CredentialError {
        parse("bad.conf", Path::new("/x/bad.conf"), text).unwrap_err()
    }

    #[test]
    fn a_provider_file_becomes_gluetuns_custom_wireguard_environment() {
        let c = parse("se-1.conf", Path::new("/c/se-1.conf"), &good()).unwrap();
        assert_eq!(c.name, "se-1");
        assert_eq!(c.public_key, PUBLIC);
        assert_eq!(c.endpoint, "198.51.100.7:51820".parse().unwrap());
        let env = env(&c);
        assert_eq!(env["VPN_SERVICE_PROVIDER"], "custom");
        assert_eq!(env["VPN_TYPE"], "wireguard");
        assert_eq!(env["WIREGUARD_PRIVATE_KEY"], PRIVATE);
        assert_eq!(env["WIREGUARD_PUBLIC_KEY"], PUBLIC);
        assert_eq!(env["WIREGUARD_PRESHARED_KEY"], PSK);
        assert_eq!(
            env["WIREGUARD_ADDRESSES"],
            "10.64.222.21/32,fc00:bbbb::2/128"
        );
        assert_eq!(env["WIREGUARD_ALLOWED_IPS"], "0.0.0.0/0,::/0");
        assert_eq!(env["WIREGUARD_ENDPOINT_IP"], "198.51.100.7");
        assert_eq!(env["WIREGUARD_ENDPOINT_PORT"], "51820");
        assert_eq!(env["WIREGUARD_MTU"], "1420");
        assert_eq!(env["WIREGUARD_PERSISTENT_KEEPALIVE_INTERVAL"], "25s");
        assert!(
            !format!("{c:?}").contains(PRIVATE),
            "Debug never shows the private key"
        );
    }

    #[test]
    fn keys_are_case_insensitive_optional_fields_may_be_missing_and_a_bare_address_is_a_host() {
        let text = format!(
            "[interface]\nprivatekey={PRIVATE}\naddress=10.0.0.2\n[PEER]\npublickey={PUBLIC}\nendpoint=[2001:db8::1]:51820\n"
        );
        let c = parse("v6.conf", Path::new("v6.conf"), &text).unwrap();
        let env = env(&c);
        assert_eq!(env["WIREGUARD_ADDRESSES"], "10.0.0.2/32");
        assert_eq!(env["WIREGUARD_ENDPOINT_IP"], "2001:db8::1");
        assert!(!env.contains_key("WIREGUARD_PRESHARED_KEY"));
        assert!(!env.contains_key("WIREGUARD_ALLOWED_IPS"));
        assert!(!env.contains_key("WIREGUARD_MTU"));
    }

    #[test]
    fn a_missing_field_names_its_section() {
        let e = error(&good().replace(&format!("PrivateKey = {PRIVATE}\n"), ""));
        assert_eq!(
            e.to_string(),
            "bad.conf:2: [Interface] PrivateKey is missing"
        );
        let e = error(&good().replace("Endpoint = 198.51.100.7:51820\n", ""));
        assert_eq!(e.to_string(), "bad.conf:8: [Peer] Endpoint is missing");
        let e = error(&good().replace("Address = 10.64.222.21/32, fc00:bbbb::2/128\n", ""));
        assert!(
            e.to_string().contains("[Interface] Address is missing"),
            "{e}"
        );
        let e = error(&good().replace(&format!("PublicKey = {PUBLIC}\n"), ""));
        assert!(e.message.contains("[Peer] PublicKey is missing"), "{e}");
    }

    #[test]
    fn a_bad_value_names_the_line_and_field_but_never_a_key() {
        let e = error(&good().replace(PRIVATE, "not-a-key"));
        assert_eq!(e.line, Some(3));
        assert!(
            e.message
                .contains("[Interface] PrivateKey is not a WireGuard key"),
            "{e}"
        );
        assert!(
            !e.to_string().contains("not-a-key"),
            "the value is not repeated"
        );
        let short = &PRIVATE[4..];
        let e = error(&good().replace(PRIVATE, short));
        assert!(!e.to_string().contains(short));

        let e = error(&good().replace("198.51.100.7:51820", "vpn.example.com:51820"));
        assert_eq!(e.line, Some(12));
        assert!(e.message.contains("names a host, not an IP address"), "{e}");
        let e = error(&good().replace("198.51.100.7:51820", "198.51.100.7"));
        assert!(e.message.contains("not an address like"), "{e}");
        let e = error(&good().replace("10.64.222.21/32", "10.64.222.21/33"));
        assert_eq!(e.line, Some(4));
        assert!(e.message.contains("Address '10.64.222.21/33'"), "{e}");
        let e = error(&good().replace("0.0.0.0/0", "everything"));
        assert!(e.message.contains("AllowedIPs 'everything'"), "{e}");
        let e = error(&good().replace("MTU = 1420", "MTU = big"));
        assert!(e.message.contains("MTU 'big'"), "{e}");
        let e = error(&good().replace("PersistentKeepalive = 25", "PersistentKeepalive = often"));
        assert!(e.message.contains("PersistentKeepalive"), "{e}");
    }

    #[test]
    fn structure_errors_are_named() {
        assert_eq!(error("").to_string(), "bad.conf: no [Interface] section");
        let e = error(&format!(
            "[Interface]\nPrivateKey = {PRIVATE}\nAddress = 10.0.0.2/32\n"
        ));
        assert_eq!(e.to_string(), "bad.conf: no [Peer] section");
        let e = error(&format!("{}[Peer]\nPublicKey = {PUBLIC}\n", good()));
        assert!(e.message.contains("second [Peer]"), "{e}");
        assert_eq!(e.line, Some(14));
        let e = error("PrivateKey = x\n[Interface]\n");
        assert_eq!(e.line, Some(1));
        assert!(e.message.contains("before any [Interface]"), "{e}");
        let e = error("[Interface\n");
        assert!(e.message.contains("not a section header"), "{e}");
        let e = error("[Wat]\n");
        assert!(e.message.contains("unknown section [wat]"), "{e}");
        let e = error("[Interface]\njust words\n");
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("not a 'Key = value' line"), "{e}");
    }

    #[test]
    fn a_directory_gives_usable_credentials_and_named_problems() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.conf"), good()).unwrap();
        std::fs::write(
            dir.path().join("a.conf"),
            good().replace("198.51.100.7", "198.51.100.8"),
        )
        .unwrap();
        std::fs::write(dir.path().join("c.conf"), "[Interface]\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a credential").unwrap();
        std::fs::create_dir(dir.path().join("d.conf")).unwrap();
        let found = load_dir(dir.path()).unwrap();
        let names: Vec<&str> = found.usable.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(found.usable[0].endpoint.ip().to_string(), "198.51.100.8");
        assert_eq!(found.broken.len(), 1);
        assert_eq!(found.broken[0].file, "c.conf");
        assert!(load_dir(&dir.path().join("missing")).is_err());
    }
}
