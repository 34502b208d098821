//! `wharf hostkey list`: the SHA256 fingerprints partners should see on first connect.

use crate::config::Config;
use crate::sftp::hostkeys;

pub fn list(config: &Config) -> anyhow::Result<()> {
    let keys = hostkeys::load_or_generate(&config.sftp.host_key_dir)?;
    for (alg, fp) in hostkeys::fingerprints(&keys) {
        println!("{fp} {alg}");
    }
    Ok(())
}
