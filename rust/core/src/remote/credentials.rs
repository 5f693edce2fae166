//! AWS shared credentials and config files (`~/.aws/credentials`, `~/.aws/config`), read when
//! the environment holds no keys. `object_store` reads only the environment, so this small INI
//! reader fills the gap (the AWS SDK crates would bring a second HTTP stack for this alone).

use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Default, Debug, PartialEq, Eq)]
pub struct Profile {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

/// The profile named by `AWS_PROFILE` (else `default`) from the files named by
/// `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE` (else under `~/.aws`). Missing files are
/// simply empty.
pub fn profile_from_files() -> Profile {
    let name = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let path = |var: &str, file: &str| std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| home.join(".aws").join(file));
    let creds = read_ini(path("AWS_SHARED_CREDENTIALS_FILE", "credentials"));
    let config = read_ini(path("AWS_CONFIG_FILE", "config"));
    // In the config file every profile but the default one is written `[profile NAME]`.
    let config_section = if name == "default" { "default".to_owned() } else { format!("profile {name}") };
    let empty = HashMap::new();
    let c = creds.get(&name).unwrap_or(&empty);
    let f = config.get(&config_section).unwrap_or(&empty);
    let get = |k: &str| c.get(k).or_else(|| f.get(k)).cloned();
    Profile {
        access_key_id: get("aws_access_key_id"),
        secret_access_key: get("aws_secret_access_key"),
        session_token: get("aws_session_token"),
        region: get("region"),
        endpoint_url: get("endpoint_url"),
    }
}

fn read_ini(path: PathBuf) -> HashMap<String, HashMap<String, String>> {
    std::fs::read_to_string(path).map(|text| parse_ini(&text)).unwrap_or_default()
}

fn parse_ini(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut section: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.trim().to_owned());
        } else if let (Some(s), Some((k, v))) = (&section, line.split_once('=')) {
            out.entry(s.clone()).or_default().insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_and_keys() {
        let ini = parse_ini("# c\n[default]\naws_access_key_id = AK\n\n[profile dev]\nregion=eu-west-1\nAWS_SECRET_ACCESS_KEY = s=k\n");
        assert_eq!(ini["default"]["aws_access_key_id"], "AK");
        assert_eq!(ini["profile dev"]["region"], "eu-west-1");
        assert_eq!(ini["profile dev"]["aws_secret_access_key"], "s=k");
    }
}
