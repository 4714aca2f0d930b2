//! Neutron's resources as netdp keeps them: the JSON shapes of the networking API v2.0
//! (`/v2.0/networks`, `subnets`, `ports`, `routers`, `security-groups`,
//! `security-group-rules`), with the fields netdp acts on.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// A tenant network (`network`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Network {
    /// UUID.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Owning project.
    #[serde(default)]
    pub project_id: String,
    /// Administrative state.
    pub admin_state_up: bool,
    /// MTU the guests should use.
    pub mtu: u32,
    /// Subnet ids on this network.
    #[serde(default)]
    pub subnets: Vec<String>,
    /// `ACTIVE`.
    pub status: String,
    /// An external (provider) network: routers' gateways and floating IPs live on it.
    #[serde(rename = "router:external", default)]
    pub router_external: bool,
}

/// Body of `POST /v2.0/networks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkCreate {
    /// The id to give the resource (a new UUID when absent): control keeps one id for a
    /// resource on every node. Create only.
    #[serde(default)]
    pub id: Option<String>,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Owning project.
    #[serde(default, alias = "tenant_id")]
    pub project_id: String,
    /// Administrative state (default up).
    pub admin_state_up: Option<bool>,
    /// MTU (default 1500).
    pub mtu: Option<u32>,
    /// External network.
    #[serde(rename = "router:external")]
    pub router_external: Option<bool>,
}

/// An IPv4 subnet (`subnet`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Subnet {
    /// UUID.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// The network.
    pub network_id: String,
    /// Owning project.
    #[serde(default)]
    pub project_id: String,
    /// 4.
    pub ip_version: u8,
    /// The prefix, `10.0.0.0/24`.
    pub cidr: String,
    /// The gateway (router interface) address.
    pub gateway_ip: Option<Ipv4Addr>,
    /// Whether ports get their address by DHCP.
    pub enable_dhcp: bool,
    /// DNS servers handed out by DHCP.
    #[serde(default)]
    pub dns_nameservers: Vec<Ipv4Addr>,
}

/// Body of `POST /v2.0/subnets`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetCreate {
    /// The id to give the resource (a new UUID when absent): control keeps one id for a
    /// resource on every node. Create only.
    #[serde(default)]
    pub id: Option<String>,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// The network.
    pub network_id: String,
    /// Owning project.
    #[serde(default, alias = "tenant_id")]
    pub project_id: String,
    /// Must be 4.
    pub ip_version: u8,
    /// The prefix.
    pub cidr: String,
    /// The gateway; defaults to the first address of the prefix.
    pub gateway_ip: Option<Ipv4Addr>,
    /// Default true.
    pub enable_dhcp: Option<bool>,
    /// DNS servers for DHCP (none by default).
    pub dns_nameservers: Option<Vec<Ipv4Addr>>,
}

/// One fixed IP of a port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FixedIp {
    /// The subnet.
    pub subnet_id: String,
    /// The address (allocated from the subnet when absent in a request).
    pub ip_address: Option<Ipv4Addr>,
}

/// One fixed IP a port asks for, as Neutron takes it: a subnet (an address is allocated
/// from it), an address (on the subnet of the network that holds it), or both.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FixedIpRequest {
    /// The subnet.
    pub subnet_id: Option<String>,
    /// The address.
    pub ip_address: Option<Ipv4Addr>,
}

/// An allowed address pair.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AddressPair {
    /// The address.
    pub ip_address: Ipv4Addr,
    /// The MAC (the port's own when absent).
    pub mac_address: Option<String>,
}

/// A port (`port`). Its host interface is named as Neutron names taps: `tap` followed by
/// the first 11 characters of the id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Port {
    /// UUID.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// The network.
    pub network_id: String,
    /// Owning project.
    #[serde(default)]
    pub project_id: String,
    /// The MAC.
    pub mac_address: String,
    /// Addresses.
    pub fixed_ips: Vec<FixedIp>,
    /// Security groups.
    pub security_groups: Vec<String>,
    /// Anti-spoofing and security groups on.
    pub port_security_enabled: bool,
    /// Extra addresses the port may send from.
    pub allowed_address_pairs: Vec<AddressPair>,
    /// `network:router_interface` for router ports, else empty or `compute:*`.
    #[serde(default)]
    pub device_owner: String,
    /// The router (or VM) using the port.
    #[serde(default)]
    pub device_id: String,
    /// `ACTIVE` when the interface exists and is programmed, else `DOWN`.
    pub status: String,
}

impl Port {
    /// The host interface name of the port.
    pub fn tap_name(&self) -> String {
        let n = self.id.len().min(11);
        format!("tap{}", &self.id[..n])
    }
}

/// Body of `POST /v2.0/ports` (and, all optional, `PUT`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortCreate {
    /// The id to give the resource (a new UUID when absent): control keeps one id for a
    /// resource on every node. Create only.
    #[serde(default)]
    pub id: Option<String>,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// The network.
    pub network_id: Option<String>,
    /// Owning project.
    #[serde(default, alias = "tenant_id")]
    pub project_id: Option<String>,
    /// The MAC (generated in `fa:16:3e` when absent).
    pub mac_address: Option<String>,
    /// Addresses (one allocated from the first subnet when absent).
    pub fixed_ips: Option<Vec<FixedIpRequest>>,
    /// Security groups (the project's `default` group when absent).
    pub security_groups: Option<Vec<String>>,
    /// Default true.
    pub port_security_enabled: Option<bool>,
    /// Extra addresses.
    pub allowed_address_pairs: Option<Vec<AddressPair>>,
    /// Device owner.
    pub device_owner: Option<String>,
    /// Device id.
    pub device_id: Option<String>,
}

/// A router (`router`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Router {
    /// UUID.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Owning project.
    #[serde(default)]
    pub project_id: String,
    /// Administrative state.
    pub admin_state_up: bool,
    /// External gateway: `network_id`, `enable_snat` (gateway SNAT for ports without a
    /// floating IP, on by default) and `external_fixed_ips`.
    pub external_gateway_info: Option<serde_json::Value>,
    /// `ACTIVE`.
    pub status: String,
    /// Extra routes (Neutron's `extraroute`): each next hop is on one of the router's
    /// interface or gateway subnets.
    #[serde(default)]
    pub routes: Vec<ExtraRoute>,
}

/// An extra route of a router: traffic to `destination` (a CIDR) goes to `nexthop`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(deny_unknown_fields)]
pub struct ExtraRoute {
    /// The destination network, `a.b.c.d/len`.
    pub destination: String,
    /// The next hop: an address on one of the router's subnets.
    pub nexthop: Ipv4Addr,
}

/// Body of `PUT /v2.0/routers/{id}/add_extraroutes` and `remove_extraroutes`
/// (`{"router": {"routes": [...]}}`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesChange {
    /// The routes to add or remove.
    pub routes: Vec<ExtraRoute>,
}

/// Body of `POST /v2.0/routers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterCreate {
    /// The id to give the resource (a new UUID when absent): control keeps one id for a
    /// resource on every node. Create only.
    #[serde(default)]
    pub id: Option<String>,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Owning project.
    #[serde(default, alias = "tenant_id")]
    pub project_id: String,
    /// Administrative state.
    pub admin_state_up: Option<bool>,
    /// External gateway.
    pub external_gateway_info: Option<serde_json::Value>,
    /// Extra routes (checked once the router has its interfaces, so only routes via the
    /// gateway's subnet can be given at creation).
    #[serde(default)]
    pub routes: Option<Vec<ExtraRoute>>,
}

/// Body of `PUT /v2.0/routers/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterUpdate {
    /// Name.
    pub name: Option<String>,
    /// External gateway: `{"network_id": ..., "enable_snat": ...}`, or null (or `{}`) to
    /// clear (clearing is refused while floating IPs use it).
    #[serde(default, with = "double_option")]
    pub external_gateway_info: Option<Option<serde_json::Value>>,
    /// Replaces the extra routes (null clears them, as `[]` does).
    #[serde(default, with = "double_option")]
    pub routes: Option<Option<Vec<ExtraRoute>>>,
}

/// A floating IP (`floatingip`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FloatingIp {
    /// UUID.
    pub id: String,
    /// The external network it is allocated on.
    pub floating_network_id: String,
    /// The address.
    pub floating_ip_address: Ipv4Addr,
    /// The port it maps to.
    pub port_id: Option<String>,
    /// The port's address it maps to.
    pub fixed_ip_address: Option<Ipv4Addr>,
    /// The router doing the translation.
    pub router_id: Option<String>,
    /// Owning project.
    #[serde(default)]
    pub project_id: String,
    /// `ACTIVE` when associated, else `DOWN`.
    pub status: String,
}

/// Body of `POST /v2.0/floatingips` (and `PUT` with `port_id` only).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloatingIpCreate {
    /// The id to give the resource (a new UUID when absent): control keeps one id for a
    /// resource on every node. Create only.
    #[serde(default)]
    pub id: Option<String>,
    /// The external network.
    pub floating_network_id: Option<String>,
    /// A specific address.
    pub floating_ip_address: Option<Ipv4Addr>,
    /// The port to map to (null to disassociate).
    #[serde(default, with = "double_option")]
    pub port_id: Option<Option<String>>,
    /// Which of the port's addresses (its first when absent).
    pub fixed_ip_address: Option<Ipv4Addr>,
    /// Owning project.
    #[serde(default, alias = "tenant_id")]
    pub project_id: String,
}

/// Distinguishes an absent field from an explicit null.
mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// Body of `PUT /v2.0/routers/{id}/add_router_interface` and `remove_router_interface`:
/// a subnet or a port (one of them).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterInterface {
    /// The subnet whose gateway address the router takes (or gives back).
    pub subnet_id: Option<String>,
    /// The port whose address and MAC the router takes (or the interface to remove).
    pub port_id: Option<String>,
}

/// A security group (`security_group`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SecurityGroup {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Owning project.
    #[serde(default)]
    pub project_id: String,
    /// Its rules (filled in responses).
    #[serde(default)]
    pub security_group_rules: Vec<SecurityGroupRule>,
}

/// Body of `POST /v2.0/security-groups`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupCreate {
    /// The id to give the resource (a new UUID when absent): control keeps one id for a
    /// resource on every node. Create only.
    #[serde(default)]
    pub id: Option<String>,
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Owning project.
    #[serde(default, alias = "tenant_id")]
    pub project_id: String,
}

/// A security-group rule (`security_group_rule`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SecurityGroupRule {
    /// UUID.
    pub id: String,
    /// The group.
    pub security_group_id: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// `IPv4` (IPv6 rules are stored but the datapath drops IPv6).
    pub ethertype: String,
    /// `tcp`, `udp`, `icmp`, a number, or null for any.
    pub protocol: Option<String>,
    /// Lowest port, or the ICMP type.
    pub port_range_min: Option<u16>,
    /// Highest port, or the ICMP code.
    pub port_range_max: Option<u16>,
    /// Remote prefix.
    pub remote_ip_prefix: Option<String>,
    /// Remote group: the addresses of its ports.
    pub remote_group_id: Option<String>,
    /// Owning project.
    #[serde(default)]
    pub project_id: String,
}

/// Body of `POST /v2.0/security-group-rules`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupRuleCreate {
    /// The id to give the resource (a new UUID when absent): control keeps one id for a
    /// resource on every node. Create only.
    #[serde(default)]
    pub id: Option<String>,
    /// The group.
    pub security_group_id: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// `IPv4` (default) or `IPv6`.
    pub ethertype: Option<String>,
    /// Protocol.
    pub protocol: Option<String>,
    /// Lowest port, or the ICMP type.
    pub port_range_min: Option<u16>,
    /// Highest port, or the ICMP code.
    pub port_range_max: Option<u16>,
    /// Remote prefix.
    pub remote_ip_prefix: Option<String>,
    /// Remote group.
    pub remote_group_id: Option<String>,
    /// Owning project.
    #[serde(default, alias = "tenant_id")]
    pub project_id: String,
}

/// Parses `a.b.c.d/len`.
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, l) = s.split_once('/')?;
    let len: u8 = l.parse().ok()?;
    if len > 32 {
        return None;
    }
    Some((a.parse().ok()?, len))
}

/// Parses `fa:16:3e:00:00:01`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut m = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut m {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(m)
}

/// The IP protocol number of a Neutron protocol name or number.
pub fn protocol_number(p: &str) -> Option<u8> {
    match p {
        "tcp" => Some(6),
        "udp" => Some(17),
        "icmp" => Some(1),
        "any" => Some(0),
        n => n.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_accept_neutron_forms_and_refuse_junk() {
        assert_eq!(
            parse_cidr("10.0.0.0/24"),
            Some((Ipv4Addr::new(10, 0, 0, 0), 24))
        );
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        assert_eq!(parse_cidr("10.0.0.0"), None);
        assert_eq!(
            parse_mac("fa:16:3e:00:00:0a"),
            Some([0xfa, 0x16, 0x3e, 0, 0, 0x0a])
        );
        assert_eq!(parse_mac("fa:16:3e:00:00"), None);
        assert_eq!(parse_mac("fa:16:3e:00:00:00:01"), None);
        assert_eq!(protocol_number("tcp"), Some(6));
        assert_eq!(protocol_number("47"), Some(47));
        assert_eq!(protocol_number("bogus"), None);
        let p = Port {
            id: "0123456789abcdef".into(),
            name: String::new(),
            network_id: String::new(),
            project_id: String::new(),
            mac_address: String::new(),
            fixed_ips: vec![],
            security_groups: vec![],
            port_security_enabled: true,
            allowed_address_pairs: vec![],
            device_owner: String::new(),
            device_id: String::new(),
            status: "DOWN".into(),
        };
        assert_eq!(p.tap_name(), "tap0123456789a");
    }
}
