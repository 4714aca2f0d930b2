//! The config drive: what Nova writes with `--config-drive true`, and what this cloud gives
//! every server, since it has no metadata service. A FAT filesystem labelled `config-2`
//! holds, for each version directory (`openstack/2018-08-27/` and `openstack/latest/`):
//! `meta_data.json` (uuid, name, hostname, project, availability zone, keys, user
//! metadata, launch index, a random seed), `network_data.json` (links with MAC and MTU,
//! networks and DNS services from the server's ports), `vendor_data.json`,
//! `vendor_data2.json` and, when given, `user_data` (the decoded bytes).
//!
//! [`contents`] lays out the files, [`image`] formats them into a volume in memory (the
//! `fatfs` crate: no external mkfs), [`build`] writes it durably (temporary file, fsync,
//! rename) into the server's directory; the agent attaches it read-only.

use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::Path;

use base64::Engine;
use serde_json::{Value, json};

use crate::model::{PortResource, Server, hostname_for};

/// The volume label guests look for (cloud-init finds the drive by it).
pub const LABEL: [u8; 11] = *b"config-2   ";
/// The version directories written, the dated one first.
pub const VERSIONS: [&str; 2] = ["2018-08-27", "latest"];
/// The image's file name in the server's directory.
pub const FILE_NAME: &str = "config-drive.img";
/// The VMM drive id.
pub const DRIVE_ID: &str = "config-drive";
/// Bytes of `random_seed` in `meta_data.json`, as Nova.
pub const RANDOM_SEED_BYTES: usize = 512;

const MIB: u64 = 1 << 20;

/// Errors building a config drive.
#[derive(Debug, thiserror::Error)]
pub enum ConfigDriveError {
    /// The user data is not base64 (refused by validation; kept for states written before).
    #[error("user_data is not base64")]
    UserData(#[source] base64::DecodeError),
    /// No randomness for the seed.
    #[error("read random bytes for the seed: {0}")]
    Random(String),
    /// Formatting or filling the filesystem failed.
    #[error("build the config drive filesystem")]
    Format(#[source] io::Error),
    /// Writing the image failed.
    #[error("write the config drive")]
    Write(#[source] crate::store::StoreError),
}

/// `meta_data.json` for the server.
pub fn meta_data(s: &Server, random_seed: &[u8]) -> Value {
    let p = &s.placement;
    let m = p.metadata.clone().unwrap_or_default();
    let hostname = m
        .hostname
        .clone()
        .unwrap_or_else(|| hostname_for(&p.name, &p.id));
    let mut v = json!({
        "uuid": p.id,
        "name": p.name,
        "hostname": hostname,
        "project_id": p.project_id,
        "availability_zone": m.availability_zone.as_deref().unwrap_or("nova"),
        "launch_index": m.launch_index,
        "meta": m.properties,
        "devices": [],
        "random_seed": base64::engine::general_purpose::STANDARD.encode(random_seed),
    });
    if let (Some(name), Some(key)) = (&m.key_name, &m.public_key) {
        v["public_keys"] = json!({ name: key });
        v["keys"] = json!([{"name": name, "type": "ssh", "data": key}]);
    }
    v
}

/// `network_data.json` for the server's ports: one link per port (its tap, MAC, MTU), one
/// network per link (static IPv4 with the gateway as default route, or DHCP when the
/// port has no fixed IP) and the DNS servers as services.
pub fn network_data(ports: &[PortResource]) -> Value {
    let mut links = Vec::new();
    let mut networks = Vec::new();
    let mut dns: Vec<Ipv4Addr> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        links.push(json!({
            "id": port.tap, "vif_id": port.id, "type": "tap",
            "ethernet_mac_address": port.mac_address, "mtu": port.mtu,
        }));
        let services: Vec<Value> = port
            .dns_nameservers
            .iter()
            .map(|a| json!({"type": "dns", "address": a}))
            .collect();
        for a in &port.dns_nameservers {
            if !dns.contains(a) {
                dns.push(*a);
            }
        }
        let net = match (port.ip_address, port.prefix_len) {
            (Some(ip), Some(len)) => {
                let netmask =
                    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0));
                let routes: Vec<Value> = port
                    .gateway_ip
                    .map(|g| json!({"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": g}))
                    .into_iter()
                    .collect();
                json!({
                    "id": format!("network{i}"), "type": "ipv4", "link": port.tap,
                    "ip_address": ip, "netmask": netmask, "routes": routes,
                    "network_id": port.network_id, "services": services,
                })
            }
            _ => json!({
                "id": format!("network{i}"), "type": "ipv4_dhcp", "link": port.tap,
                "network_id": port.network_id,
            }),
        };
        networks.push(net);
    }
    let services: Vec<Value> = dns
        .iter()
        .map(|a| json!({"type": "dns", "address": a}))
        .collect();
    json!({"links": links, "networks": networks, "services": services})
}

/// The files of the drive, as (path, bytes), directories implied.
pub fn contents(
    s: &Server,
    random_seed: &[u8],
) -> Result<Vec<(String, Vec<u8>)>, ConfigDriveError> {
    let user_data = match &s.placement.metadata {
        Some(m) => m.user_data_bytes().map_err(ConfigDriveError::UserData)?,
        None => None,
    };
    let to_json = |v: &Value| serde_json::to_vec(v).unwrap_or_default();
    let meta = to_json(&meta_data(s, random_seed));
    let net = to_json(&network_data(&s.resources.ports));
    let mut files = Vec::new();
    for version in VERSIONS {
        let dir = format!("openstack/{version}");
        files.push((format!("{dir}/meta_data.json"), meta.clone()));
        files.push((format!("{dir}/network_data.json"), net.clone()));
        files.push((format!("{dir}/vendor_data.json"), b"{}".to_vec()));
        files.push((format!("{dir}/vendor_data2.json"), b"{}".to_vec()));
        if let Some(u) = &user_data {
            files.push((format!("{dir}/user_data"), u.clone()));
        }
    }
    Ok(files)
}

/// The size of the volume for these files: at least 1 MiB, twice the data plus a cluster
/// per file and directory, in whole MiB.
pub fn image_size(files: &[(String, Vec<u8>)]) -> u64 {
    let data: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    (MIB + 2 * data + 8192 * (files.len() as u64 + 8)).next_multiple_of(MIB)
}

/// A FAT volume labelled `config-2` holding `files`.
pub fn image(files: &[(String, Vec<u8>)], volume_id: u32) -> io::Result<Vec<u8>> {
    let size = image_size(files);
    let mut disk = io::Cursor::new(vec![0u8; size as usize]);
    fatfs::format_volume(
        &mut disk,
        fatfs::FormatVolumeOptions::new()
            .volume_label(LABEL)
            .volume_id(volume_id),
    )?;
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())?;
        {
            let root = fs.root_dir();
            for (path, bytes) in files {
                let mut parts: Vec<&str> = path.split('/').collect();
                let name = parts.pop().unwrap_or_default();
                let mut dir = root.clone();
                for d in parts {
                    dir = dir.create_dir(d)?;
                }
                let mut f = dir.create_file(name)?;
                f.truncate()?;
                f.write_all(bytes)?;
                f.flush()?;
            }
        }
        fs.unmount()?;
    }
    Ok(disk.into_inner())
}

/// Builds the server's config drive and writes it durably to `path`.
pub fn build(s: &Server, path: &Path) -> Result<(), ConfigDriveError> {
    let mut seed = [0u8; RANDOM_SEED_BYTES];
    getrandom::fill(&mut seed).map_err(|e| ConfigDriveError::Random(e.to_string()))?;
    let files = contents(s, &seed)?;
    let id = s.placement.id.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let bytes = image(&files, id).map_err(ConfigDriveError::Format)?;
    crate::store::write_atomic(path, &bytes).map_err(ConfigDriveError::Write)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::model::{InstanceMetadata, Placement, Resources, Status};

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFerrostackTestKeyOnly test@ferrostack";

    fn server(user_data: Option<&[u8]>, properties: BTreeMapS) -> Server {
        let placement: Placement = serde_json::from_value(json!({
            "id": "3f2a1c9e-0000-4000-8000-00000000abcd",
            "name": "Web Server_1",
            "project_id": "proj-1",
            "vcpus": 1,
            "ram_mib": 64,
            "kernel": {"path": "/boot/vmlinux"},
            "root_disk": {"image": {"path": "/images/disk.img"}},
        }))
        .unwrap();
        let mut s = Server {
            placement,
            status: Status::Build,
            task_state: None,
            fault: None,
            resources: Resources::default(),
            process: None,
            stop_requested: false,
            build_steps: vec![],
            created: 0,
            updated: 0,
        };
        s.placement.metadata = Some(InstanceMetadata {
            availability_zone: Some("zone-a".into()),
            key_name: Some("mykey".into()),
            public_key: Some(KEY.into()),
            properties,
            user_data: user_data.map(|u| base64::engine::general_purpose::STANDARD.encode(u)),
            launch_index: 0,
            hostname: None,
        });
        s.resources.ports = vec![
            PortResource {
                id: "port-a".into(),
                network_id: "net-a".into(),
                tap: "tapport-a".into(),
                tap_created: true,
                mac_address: "fa:16:3e:00:00:01".into(),
                ip_address: Some(Ipv4Addr::new(10, 9, 0, 5)),
                prefix_len: Some(24),
                gateway_ip: Some(Ipv4Addr::new(10, 9, 0, 1)),
                dns_nameservers: vec![Ipv4Addr::new(10, 9, 0, 2), Ipv4Addr::new(9, 9, 9, 9)],
                mtu: Some(1450),
                created: true,
            },
            PortResource {
                id: "port-b".into(),
                network_id: "net-b".into(),
                tap: "tapport-b".into(),
                tap_created: true,
                mac_address: "fa:16:3e:00:00:02".into(),
                ip_address: None,
                prefix_len: None,
                gateway_ip: None,
                dns_nameservers: vec![Ipv4Addr::new(9, 9, 9, 9)],
                mtu: None,
                created: true,
            },
        ];
        s
    }

    type BTreeMapS = std::collections::BTreeMap<String, String>;

    /// Every file of the volume, read back through the filesystem.
    fn read_back(image: Vec<u8>) -> (String, Vec<(String, Vec<u8>)>) {
        let fs = fatfs::FileSystem::new(io::Cursor::new(image), fatfs::FsOptions::new()).unwrap();
        let label = fs
            .read_volume_label_from_root_dir()
            .unwrap()
            .unwrap_or_default();
        let mut out = Vec::new();
        let mut stack = vec![(String::new(), fs.root_dir())];
        while let Some((prefix, dir)) = stack.pop() {
            for e in dir.iter() {
                let e = e.unwrap();
                let name = e.file_name();
                if name == "." || name == ".." {
                    continue;
                }
                let path = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}/{name}")
                };
                if e.is_dir() {
                    stack.push((path, e.to_dir()));
                } else {
                    let mut bytes = Vec::new();
                    e.to_file().read_to_end(&mut bytes).unwrap();
                    out.push((path, bytes));
                }
            }
        }
        out.sort();
        (label, out)
    }

    fn file<'a>(files: &'a [(String, Vec<u8>)], path: &str) -> &'a [u8] {
        &files
            .iter()
            .find(|(p, _)| p == path)
            .unwrap_or_else(|| panic!("{path} missing"))
            .1
    }

    #[test]
    fn the_drive_holds_nova_metadata_user_data_and_network_data() {
        let user_data = b"#cloud-config\n# marker\n\x00\xff binary tail".to_vec();
        let props: BTreeMapS = [("role".to_string(), "web".to_string())].into();
        let s = server(Some(&user_data), props);
        let seed = [7u8; RANDOM_SEED_BYTES];
        let image = image(&contents(&s, &seed).unwrap(), 0x1234_5678).unwrap();
        assert_eq!(image.len() as u64 % MIB, 0);
        let (label, files) = read_back(image);
        assert_eq!(label, "config-2");
        let names: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        for v in VERSIONS {
            for f in [
                "meta_data.json",
                "network_data.json",
                "user_data",
                "vendor_data.json",
                "vendor_data2.json",
            ] {
                let path = format!("openstack/{v}/{f}");
                assert!(names.contains(&path.as_str()), "{path} not in {names:?}");
            }
        }
        assert_eq!(names.len(), 10, "{names:?}");
        assert_eq!(file(&files, "openstack/latest/user_data"), user_data);

        let meta: Value =
            serde_json::from_slice(file(&files, "openstack/latest/meta_data.json")).unwrap();
        assert_eq!(meta["uuid"], "3f2a1c9e-0000-4000-8000-00000000abcd");
        assert_eq!(meta["name"], "Web Server_1");
        assert_eq!(meta["hostname"], "web-server-1");
        assert_eq!(meta["project_id"], "proj-1");
        assert_eq!(meta["availability_zone"], "zone-a");
        assert_eq!(meta["launch_index"], 0);
        assert_eq!(meta["meta"], json!({"role": "web"}));
        assert_eq!(meta["public_keys"], json!({"mykey": KEY}));
        assert_eq!(
            meta["keys"],
            json!([{"name": "mykey", "type": "ssh", "data": KEY}])
        );
        let seed_back = base64::engine::general_purpose::STANDARD
            .decode(meta["random_seed"].as_str().unwrap())
            .unwrap();
        assert_eq!(seed_back, seed);
        assert_eq!(
            file(&files, "openstack/2018-08-27/meta_data.json"),
            file(&files, "openstack/latest/meta_data.json")
        );

        let net: Value =
            serde_json::from_slice(file(&files, "openstack/latest/network_data.json")).unwrap();
        assert_eq!(
            net["links"],
            json!([
                {"id": "tapport-a", "vif_id": "port-a", "type": "tap",
                 "ethernet_mac_address": "fa:16:3e:00:00:01", "mtu": 1450},
                {"id": "tapport-b", "vif_id": "port-b", "type": "tap",
                 "ethernet_mac_address": "fa:16:3e:00:00:02", "mtu": null},
            ])
        );
        assert_eq!(
            net["networks"][0],
            json!({"id": "network0", "type": "ipv4", "link": "tapport-a",
                   "ip_address": "10.9.0.5", "netmask": "255.255.255.0",
                   "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.9.0.1"}],
                   "network_id": "net-a",
                   "services": [{"type": "dns", "address": "10.9.0.2"},
                                {"type": "dns", "address": "9.9.9.9"}]})
        );
        assert_eq!(
            net["networks"][1],
            json!({"id": "network1", "type": "ipv4_dhcp", "link": "tapport-b",
                   "network_id": "net-b"})
        );
        assert_eq!(
            net["services"],
            json!([{"type": "dns", "address": "10.9.0.2"},
                   {"type": "dns", "address": "9.9.9.9"}])
        );
    }

    #[test]
    fn without_key_or_user_data_those_entries_are_absent() {
        let mut s = server(None, BTreeMapS::new());
        s.placement.metadata = None;
        s.resources.ports.clear();
        let (_, files) = read_back(image(&contents(&s, &[0; 16]).unwrap(), 1).unwrap());
        assert_eq!(files.len(), 8);
        let meta: Value =
            serde_json::from_slice(file(&files, "openstack/latest/meta_data.json")).unwrap();
        assert!(meta.get("public_keys").is_none() && meta.get("keys").is_none());
        assert_eq!(meta["availability_zone"], "nova");
        assert_eq!(meta["meta"], json!({}));
        let net: Value =
            serde_json::from_slice(file(&files, "openstack/latest/network_data.json")).unwrap();
        assert_eq!(net, json!({"links": [], "networks": [], "services": []}));
    }

    /// blkid (util-linux, its own FAT prober) sees a vfat volume labelled config-2, which
    /// is how cloud-init finds the drive.
    #[test]
    fn blkid_finds_a_vfat_volume_labelled_config_2() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        build(&server(Some(b"hello"), BTreeMapS::new()), &path).unwrap();
        let out = std::process::Command::new("blkid")
            .args(["-p", "-o", "export"])
            .arg(&path)
            .output()
            .expect("blkid (util-linux) runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(text.lines().any(|l| l == "LABEL=config-2"), "{text}");
        assert!(text.lines().any(|l| l == "TYPE=vfat"), "{text}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Any user data up to Nova's limit and any properties come back byte for byte.
        #[test]
        fn user_data_and_properties_round_trip(
            user_data in proptest::collection::vec(proptest::num::u8::ANY, 0..49_000),
            props in proptest::collection::btree_map("[a-z_]{1,20}", ".{0,40}", 0..20),
        ) {
            let s = server(Some(&user_data), props.clone());
            let (label, files) = read_back(image(&contents(&s, &[1; 8]).unwrap(), 9).unwrap());
            proptest::prop_assert_eq!(label, "config-2");
            proptest::prop_assert_eq!(file(&files, "openstack/latest/user_data"), &user_data[..]);
            proptest::prop_assert_eq!(file(&files, "openstack/2018-08-27/user_data"), &user_data[..]);
            let meta: Value =
                serde_json::from_slice(file(&files, "openstack/latest/meta_data.json")).unwrap();
            proptest::prop_assert_eq!(&meta["meta"], &serde_json::to_value(&props).unwrap());
        }
    }
}
