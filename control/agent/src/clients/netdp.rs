//! netdp's Neutron API: networks, subnets and ports under `/v2.0`.

use std::net::Ipv4Addr;

use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::http::{Client, HttpError, NO_BODY};

/// A network.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Network {
    /// UUID.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Owning project.
    #[serde(default)]
    pub project_id: String,
    /// MTU.
    pub mtu: u32,
    /// Its subnets.
    #[serde(default)]
    pub subnets: Vec<String>,
}

/// A subnet.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Subnet {
    /// UUID.
    pub id: String,
    /// The network.
    pub network_id: String,
    /// The prefix, `10.0.0.0/24`.
    pub cidr: String,
    /// The gateway.
    pub gateway_ip: Option<Ipv4Addr>,
    /// DNS servers.
    #[serde(default)]
    pub dns_nameservers: Vec<Ipv4Addr>,
}

/// One address of a port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FixedIp {
    /// The subnet.
    pub subnet_id: String,
    /// The address (allocated when absent in a request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<Ipv4Addr>,
}

/// A port.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Port {
    /// UUID.
    pub id: String,
    /// The network.
    pub network_id: String,
    /// The MAC.
    pub mac_address: String,
    /// Addresses.
    pub fixed_ips: Vec<FixedIp>,
    /// Security groups.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// `ACTIVE` once netdp has programmed its tap.
    pub status: String,
    /// The server using it.
    #[serde(default)]
    pub device_id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
}

impl Port {
    /// The tap netdp expects for this port: `tap` and the first 11 characters of the id.
    pub fn tap_name(&self) -> String {
        format!("tap{}", &self.id[..self.id.len().min(11)])
    }
}

/// Body of a new network.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkCreate {
    /// Name.
    pub name: String,
    /// Owning project.
    pub project_id: String,
    /// MTU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// Body of a new subnet.
#[derive(Debug, Clone, Serialize)]
pub struct SubnetCreate {
    /// The network.
    pub network_id: String,
    /// Owning project.
    pub project_id: String,
    /// Always 4.
    pub ip_version: u8,
    /// The prefix.
    pub cidr: String,
    /// The gateway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_ip: Option<Ipv4Addr>,
    /// DHCP on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_dhcp: Option<bool>,
}

/// Body of a new port.
#[derive(Debug, Clone, Serialize)]
pub struct PortCreate {
    /// Name.
    pub name: String,
    /// The network.
    pub network_id: String,
    /// Owning project.
    pub project_id: String,
    /// The MAC (generated when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// Addresses (allocated from the first subnet when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed_ips: Option<Vec<FixedIp>>,
    /// Security groups (the project's default when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_groups: Option<Vec<String>>,
    /// `compute:<zone>`.
    pub device_owner: String,
    /// The server.
    pub device_id: String,
}

/// A netdp client.
#[derive(Debug, Clone)]
pub struct Netdp(pub Client);

impl Netdp {
    /// One network; `None` if netdp has no such network.
    pub async fn network(&self, id: &str) -> Result<Option<Network>, HttpError> {
        #[derive(Deserialize)]
        struct One {
            network: Network,
        }
        match self
            .0
            .json::<One>(Method::GET, &format!("/v2.0/networks/{id}"), NO_BODY)
            .await
        {
            Ok(one) => Ok(Some(one.network)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every network.
    pub async fn networks(&self) -> Result<Vec<Network>, HttpError> {
        #[derive(Deserialize)]
        struct Many {
            networks: Vec<Network>,
        }
        let m: Many = self.0.json(Method::GET, "/v2.0/networks", NO_BODY).await?;
        Ok(m.networks)
    }

    /// Creates a network.
    pub async fn create_network(&self, req: &NetworkCreate) -> Result<Network, HttpError> {
        #[derive(Deserialize)]
        struct One {
            network: Network,
        }
        let one: One = self
            .0
            .json(
                Method::POST,
                "/v2.0/networks",
                Some(&json!({ "network": req })),
            )
            .await?;
        Ok(one.network)
    }

    /// Every subnet.
    pub async fn subnets(&self) -> Result<Vec<Subnet>, HttpError> {
        #[derive(Deserialize)]
        struct Many {
            subnets: Vec<Subnet>,
        }
        let m: Many = self.0.json(Method::GET, "/v2.0/subnets", NO_BODY).await?;
        Ok(m.subnets)
    }

    /// Creates a subnet.
    pub async fn create_subnet(&self, req: &SubnetCreate) -> Result<Subnet, HttpError> {
        #[derive(Deserialize)]
        struct One {
            subnet: Subnet,
        }
        let one: One = self
            .0
            .json(
                Method::POST,
                "/v2.0/subnets",
                Some(&json!({ "subnet": req })),
            )
            .await?;
        Ok(one.subnet)
    }

    /// Creates a port.
    pub async fn create_port(&self, req: &PortCreate) -> Result<Port, HttpError> {
        #[derive(Deserialize)]
        struct One {
            port: Port,
        }
        let one: One = self
            .0
            .json(Method::POST, "/v2.0/ports", Some(&json!({ "port": req })))
            .await?;
        Ok(one.port)
    }

    /// Every port.
    pub async fn ports(&self) -> Result<Vec<Port>, HttpError> {
        #[derive(Deserialize)]
        struct Many {
            ports: Vec<Port>,
        }
        let m: Many = self.0.json(Method::GET, "/v2.0/ports", NO_BODY).await?;
        Ok(m.ports)
    }

    /// One port; `None` if netdp has no such port.
    pub async fn port(&self, id: &str) -> Result<Option<Port>, HttpError> {
        #[derive(Deserialize)]
        struct One {
            port: Port,
        }
        match self
            .0
            .json::<One>(Method::GET, &format!("/v2.0/ports/{id}"), NO_BODY)
            .await
        {
            Ok(one) => Ok(Some(one.port)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Binds a port to a server (`device_owner`, `device_id`); netdp programs its tap at
    /// once if the tap exists.
    pub async fn bind_port(&self, id: &str, device_id: &str) -> Result<Port, HttpError> {
        self.set_device(id, "compute:nova", device_id).await
    }

    /// Unbinds a port from its server (a port the agent did not create outlives the server).
    pub async fn unbind_port(&self, id: &str) -> Result<Port, HttpError> {
        self.set_device(id, "", "").await
    }

    async fn set_device(&self, id: &str, owner: &str, device_id: &str) -> Result<Port, HttpError> {
        #[derive(Deserialize)]
        struct One {
            port: Port,
        }
        let body = json!({"port": {"device_owner": owner, "device_id": device_id}});
        let one: One = self
            .0
            .json(Method::PUT, &format!("/v2.0/ports/{id}"), Some(&body))
            .await?;
        Ok(one.port)
    }

    /// Deletes a port.
    pub async fn delete_port(&self, id: &str) -> Result<(), HttpError> {
        self.0
            .call(Method::DELETE, &format!("/v2.0/ports/{id}"), NO_BODY)
            .await
            .map(drop)
    }
}
