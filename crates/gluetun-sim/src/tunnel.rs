//! The tunnel's settings, read from Gluetun's own environment variables (the
//! part the emulator understands: the `custom` provider with WireGuard, as
//! the orchestrator's on-demand nodes use it). Like the real Gluetun, a node
//! whose settings are incomplete does not start: it logs why and exits 1.
//! What it was given (never the private key) shows in `GET /sim/state`, so
//! that a test can tell which credential a node holds.

use std::net::IpAddr;

use serde::Serialize;

/// The tunnel's settings, when `VPN_SERVICE_PROVIDER` is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TunnelSettings {
    pub provider: String,
    pub vpn_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<Wireguard>,
}

/// A WireGuard peer as given (the private key stays out).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Wireguard {
    pub public_key: String,
    /// `IP:port`.
    pub endpoint: String,
    pub addresses: String,
    pub preshared_key: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_ips: Option<String>,
}

/// A WireGuard key: 32 bytes in base64, so 43 characters of the alphabet and `=`.
fn is_key(text: &str) -> bool {
    text.len() == 44
        && text.ends_with('=')
        && text[..43]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Reads the settings through `var` (the process environment in `main`).
/// `Ok(None)` without `VPN_SERVICE_PROVIDER`: the emulator's tunnel then
/// simply runs, as before it read any setting.
pub fn read(var: impl Fn(&str) -> Option<String>) -> Result<Option<TunnelSettings>, String> {
    let get = |name: &str| {
        var(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let Some(provider) = get("VPN_SERVICE_PROVIDER") else {
        return Ok(None);
    };
    let provider = provider.to_ascii_lowercase();
    // Gluetun's default type.
    let vpn_type = get("VPN_TYPE")
        .unwrap_or_else(|| "openvpn".into())
        .to_ascii_lowercase();
    let mut settings = TunnelSettings {
        provider: provider.clone(),
        vpn_type: vpn_type.clone(),
        wireguard: None,
    };
    if provider != "custom" || vpn_type != "wireguard" {
        // Other providers and OpenVPN are not emulated: the tunnel runs.
        return Ok(Some(settings));
    }
    let wg = |what: &str| format!("VPN settings: Wireguard settings: {what}");
    let private = get("WIREGUARD_PRIVATE_KEY").ok_or_else(|| wg("private key is not set"))?;
    if !is_key(&private) {
        return Err(wg("private key is not valid"));
    }
    let addresses = get("WIREGUARD_ADDRESSES")
        .or_else(|| get("WIREGUARD_ADDRESS"))
        .ok_or_else(|| wg("interface address is not set"))?;
    if addresses.split(',').any(|a| !a.contains('/')) {
        return Err(wg(&format!("interface address is not valid: {addresses}")));
    }
    let preshared = get("WIREGUARD_PRESHARED_KEY");
    if preshared.as_deref().is_some_and(|k| !is_key(k)) {
        return Err(wg("pre-shared key is not valid"));
    }
    let sel = |what: &str| {
        format!("VPN settings: server selection: Wireguard server selection settings: {what}")
    };
    let ip = get("WIREGUARD_ENDPOINT_IP")
        .or_else(|| get("VPN_ENDPOINT_IP"))
        .ok_or_else(|| sel("endpoint IP is not set"))?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| sel(&format!("endpoint IP is not valid: {ip}")))?;
    let port = get("WIREGUARD_ENDPOINT_PORT")
        .or_else(|| get("VPN_ENDPOINT_PORT"))
        .ok_or_else(|| sel("endpoint port is not set"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| sel("endpoint port is not set"))?;
    let public = get("WIREGUARD_PUBLIC_KEY").ok_or_else(|| sel("public key is not set"))?;
    if !is_key(&public) {
        return Err(sel(&format!("public key is not valid: {public}")));
    }
    settings.wireguard = Some(Wireguard {
        public_key: public,
        endpoint: std::net::SocketAddr::new(ip, port).to_string(),
        addresses,
        preshared_key: preshared.is_some(),
        allowed_ips: get("WIREGUARD_ALLOWED_IPS"),
    });
    Ok(Some(settings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const KEY: &str = "wOEI9rqqbDwnN8/Bpp22sVz48T71vJ4fYmFWujulwUU=";
    const PUB: &str = "wAUaJMhAq3NFutLHIdF8AN0B5WG8RndfQKLPTEDHal0=";

    fn with(pairs: &[(&str, &str)]) -> Result<Option<TunnelSettings>, String> {
        let env: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        read(|k| env.get(k).cloned())
    }

    fn custom() -> Vec<(&'static str, &'static str)> {
        vec![
            ("VPN_SERVICE_PROVIDER", "custom"),
            ("VPN_TYPE", "wireguard"),
            ("WIREGUARD_PRIVATE_KEY", KEY),
            ("WIREGUARD_PUBLIC_KEY", PUB),
            ("WIREGUARD_ADDRESSES", "10.64.0.2/32"),
            ("WIREGUARD_ENDPOINT_IP", "198.51.100.7"),
            ("WIREGUARD_ENDPOINT_PORT", "51820"),
        ]
    }

    #[test]
    fn without_a_provider_the_tunnel_just_runs() {
        assert_eq!(with(&[]).unwrap(), None);
    }

    #[test]
    fn a_custom_wireguard_peer_is_reported_without_its_private_key() {
        let s = with(&custom()).unwrap().unwrap();
        let wg = s.wireguard.unwrap();
        assert_eq!(wg.public_key, PUB);
        assert_eq!(wg.endpoint, "198.51.100.7:51820");
        assert!(!wg.preshared_key);
        let json = serde_json::to_string(&with(&custom()).unwrap()).unwrap();
        assert!(!json.contains(KEY), "{json}");
    }

    #[test]
    fn the_old_endpoint_names_are_read_too() {
        let mut env: Vec<_> = custom()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("WIREGUARD_ENDPOINT"))
            .collect();
        env.push(("VPN_ENDPOINT_IP", "198.51.100.8"));
        env.push(("VPN_ENDPOINT_PORT", "1637"));
        let s = with(&env).unwrap().unwrap();
        assert_eq!(s.wireguard.unwrap().endpoint, "198.51.100.8:1637");
    }

    #[test]
    fn missing_or_bad_settings_stop_the_tunnel_with_gluetuns_words() {
        for (drop, error) in [
            ("WIREGUARD_PRIVATE_KEY", "private key is not set"),
            ("WIREGUARD_PUBLIC_KEY", "public key is not set"),
            ("WIREGUARD_ADDRESSES", "interface address is not set"),
            ("WIREGUARD_ENDPOINT_IP", "endpoint IP is not set"),
            ("WIREGUARD_ENDPOINT_PORT", "endpoint port is not set"),
        ] {
            let env: Vec<_> = custom().into_iter().filter(|(k, _)| *k != drop).collect();
            let e = with(&env).unwrap_err();
            assert!(e.contains(error), "{drop}: {e}");
        }
        let mut env = custom();
        env.push(("WIREGUARD_PRESHARED_KEY", "short"));
        assert!(with(&env)
            .unwrap_err()
            .contains("pre-shared key is not valid"));
        let env: Vec<_> = custom()
            .into_iter()
            .map(|(k, v)| {
                if k == "WIREGUARD_PRIVATE_KEY" {
                    (k, "nope")
                } else {
                    (k, v)
                }
            })
            .collect();
        assert!(with(&env).unwrap_err().contains("private key is not valid"));
    }
}
