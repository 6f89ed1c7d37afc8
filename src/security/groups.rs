//! API groups (Triton's nine, plus `metrics` and `canary`) and the one table
//! that puts every HTTP route and gRPC method into exactly one of them. A
//! path the table does not know has no group and is refused by the auth
//! layer (deny by default), so a route added to a front without a line here
//! is unreachable rather than unguarded.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    Health,
    Metadata,
    Inference,
    SharedMemory,
    ModelConfig,
    ModelRepository,
    Statistics,
    Trace,
    Logging,
    Metrics,
    Canary,
}

impl Group {
    pub const ALL: [Group; 11] = [
        Group::Health,
        Group::Metadata,
        Group::Inference,
        Group::SharedMemory,
        Group::ModelConfig,
        Group::ModelRepository,
        Group::Statistics,
        Group::Trace,
        Group::Logging,
        Group::Metrics,
        Group::Canary,
    ];

    /// The name used in the key file and Triton's restricted-API flags.
    pub fn name(self) -> &'static str {
        match self {
            Group::Health => "health",
            Group::Metadata => "metadata",
            Group::Inference => "inference",
            Group::SharedMemory => "shared-memory",
            Group::ModelConfig => "model-config",
            Group::ModelRepository => "model-repository",
            Group::Statistics => "statistics",
            Group::Trace => "trace",
            Group::Logging => "logging",
            Group::Metrics => "metrics",
            Group::Canary => "canary",
        }
    }

    pub fn parse(name: &str) -> Option<Group> {
        Group::ALL.into_iter().find(|g| g.name() == name)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of groups: what a key may call, what a restriction covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Groups(u16);

impl Groups {
    pub const EVERY: Groups = Groups(u16::MAX);

    pub fn contains(self, group: Group) -> bool {
        self.0 & group.bit() != 0
    }

    pub fn insert(&mut self, group: Group) {
        self.0 |= group.bit();
    }

    pub fn overlaps(self, other: Groups) -> bool {
        self.0 & other.0 != 0
    }

    /// `*`, or group names separated by commas.
    pub fn parse(list: &str) -> Result<Groups, String> {
        if list == "*" {
            return Ok(Groups::EVERY);
        }
        let mut groups = Groups::default();
        for name in list.split(',') {
            let group = Group::parse(name.trim()).ok_or_else(|| {
                let known: Vec<&str> = Group::ALL.iter().map(|g| g.name()).collect();
                format!("unknown API group {name:?} (known: {}, or *)", known.join(", "))
            })?;
            groups.insert(group);
        }
        Ok(groups)
    }
}

/// Which listener a request came in on: each has its own paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Grpc,
    Http,
    Metrics,
}

impl Port {
    pub fn name(self) -> &'static str {
        match self {
            Port::Grpc => "grpc",
            Port::Http => "http",
            Port::Metrics => "metrics",
        }
    }
}

/// Every HTTP route of the HTTP front (api/http/mod.rs), in axum's syntax.
pub const HTTP_ROUTES: &[(&str, Group)] = &[
    ("/v2", Group::Metadata),
    ("/v2/health/live", Group::Health),
    ("/v2/health/ready", Group::Health),
    ("/v2/models", Group::Metadata),
    ("/v2/models/stats", Group::Statistics),
    ("/v2/models/{model}", Group::Metadata),
    ("/v2/models/{model}/versions/{version}", Group::Metadata),
    ("/v2/models/{model}/ready", Group::Health),
    ("/v2/models/{model}/versions/{version}/ready", Group::Health),
    ("/v2/models/{model}/infer", Group::Inference),
    ("/v2/models/{model}/versions/{version}/infer", Group::Inference),
    ("/v2/models/{model}/config", Group::ModelConfig),
    ("/v2/models/{model}/versions/{version}/config", Group::ModelConfig),
    ("/v2/models/{model}/stats", Group::Statistics),
    ("/v2/models/{model}/versions/{version}/stats", Group::Statistics),
    ("/v2/models/{model}/shadow", Group::Statistics),
    ("/v2/models/{model}/capacity", Group::Statistics),
    ("/v2/repository/index", Group::ModelRepository),
    ("/v2/repository/models/{model}/load", Group::ModelRepository),
    ("/v2/repository/models/{model}/unload", Group::ModelRepository),
    ("/v2/repository/models/{model}/canary", Group::Canary),
    ("/v2/repository/models/{model}/shadow", Group::Canary),
];

/// The metrics port's one route.
pub const METRICS_ROUTES: &[(&str, Group)] = &[("/metrics", Group::Metrics)];

/// A gRPC service on the gRPC port and the group of each of its methods.
pub struct GrpcService {
    pub name: &'static str,
    pub methods: &'static [(&'static str, Group)],
    /// Every method of the service is in this group (methods is empty).
    pub every: Option<Group>,
}

/// Every gRPC service on the gRPC port.
pub const GRPC_SERVICES: &[GrpcService] = &[
    GrpcService {
        name: "inference.GRPCInferenceService",
        methods: &[
            ("ServerLive", Group::Health),
            ("ServerReady", Group::Health),
            ("ModelReady", Group::Health),
            ("ServerMetadata", Group::Metadata),
            ("ModelMetadata", Group::Metadata),
            ("ModelInfer", Group::Inference),
            ("ModelStreamInfer", Group::Inference),
            ("ModelConfig", Group::ModelConfig),
            ("ModelStatistics", Group::Statistics),
            ("RepositoryIndex", Group::ModelRepository),
            ("RepositoryModelLoad", Group::ModelRepository),
            ("RepositoryModelUnload", Group::ModelRepository),
            ("SystemSharedMemoryStatus", Group::SharedMemory),
            ("SystemSharedMemoryRegister", Group::SharedMemory),
            ("SystemSharedMemoryUnregister", Group::SharedMemory),
            ("CudaSharedMemoryStatus", Group::SharedMemory),
            ("CudaSharedMemoryRegister", Group::SharedMemory),
            ("CudaSharedMemoryUnregister", Group::SharedMemory),
            ("TraceSetting", Group::Trace),
            ("LogSettings", Group::Logging),
        ],
        every: None,
    },
    GrpcService { name: "grpc.health.v1.Health", methods: &[], every: Some(Group::Health) },
    // Reflection describes the API, as ServerMetadata does.
    GrpcService { name: "grpc.reflection.v1.ServerReflection", methods: &[], every: Some(Group::Metadata) },
    GrpcService { name: "grpc.reflection.v1alpha.ServerReflection", methods: &[], every: Some(Group::Metadata) },
];

/// Looks paths up in the tables above.
pub struct Table {
    http: matchit::Router<Group>,
    metrics: matchit::Router<Group>,
}

impl Table {
    pub fn new() -> Table {
        Table { http: router(HTTP_ROUTES), metrics: router(METRICS_ROUTES) }
    }

    /// The group of a request path on `port`, or None if nothing serves it.
    pub fn classify(&self, port: Port, path: &str) -> Option<Group> {
        match port {
            Port::Http => self.http.at(path).ok().map(|m| *m.value),
            Port::Metrics => self.metrics.at(path).ok().map(|m| *m.value),
            Port::Grpc => grpc_group(path),
        }
    }
}

impl Default for Table {
    fn default() -> Self {
        Table::new()
    }
}

fn router(routes: &[(&str, Group)]) -> matchit::Router<Group> {
    let mut router = matchit::Router::new();
    for &(path, group) in routes {
        router.insert(path, group).expect("the route table is well formed; this is a bug");
    }
    router
}

/// `/package.Service/Method` → the method's group.
fn grpc_group(path: &str) -> Option<Group> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let service = GRPC_SERVICES.iter().find(|s| s.name == service)?;
    if method.is_empty() || method.contains('/') {
        return None;
    }
    match service.every {
        Some(group) => Some(group),
        None => service.methods.iter().find(|(name, _)| *name == method).map(|&(_, group)| group),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_find_their_group() {
        let table = Table::new();
        assert_eq!(table.classify(Port::Http, "/v2/models/mlp/infer"), Some(Group::Inference));
        assert_eq!(table.classify(Port::Http, "/v2/models/stats"), Some(Group::Statistics));
        assert_eq!(table.classify(Port::Http, "/v2/models/mlp/versions/2/ready"), Some(Group::Health));
        assert_eq!(table.classify(Port::Http, "/v2/repository/models/mlp/canary"), Some(Group::Canary));
        assert_eq!(table.classify(Port::Metrics, "/metrics"), Some(Group::Metrics));
        assert_eq!(
            table.classify(Port::Grpc, "/inference.GRPCInferenceService/RepositoryModelLoad"),
            Some(Group::ModelRepository)
        );
        assert_eq!(table.classify(Port::Grpc, "/grpc.health.v1.Health/Watch"), Some(Group::Health));
    }

    #[test]
    fn unknown_paths_have_no_group() {
        let table = Table::new();
        for path in ["/", "/v2/", "/v2/models/mlp/infer/", "/v2//health/live", "/metrics/x", "/v3"] {
            assert_eq!(table.classify(Port::Http, path), None, "{path}");
        }
        assert_eq!(table.classify(Port::Metrics, "/v2/health/live"), None);
        assert_eq!(table.classify(Port::Http, "/metrics"), None);
        for path in [
            "/inference.GRPCInferenceService/Nope",
            "/inference.GRPCInferenceService/",
            "/inference.GRPCInferenceService/ModelInfer/x",
            "/grpc.health.v1.Health/",
            "inference.GRPCInferenceService/ModelInfer",
            "/other.Service/ModelInfer",
        ] {
            assert_eq!(table.classify(Port::Grpc, path), None, "{path}");
        }
    }

    #[test]
    fn every_method_the_grpc_port_serves_has_a_group() {
        let mut pool = prost_reflect::DescriptorPool::new();
        for set in crate::api::grpc::SERVED_DESCRIPTOR_SETS {
            pool.decode_file_descriptor_set(set).unwrap();
        }
        let table = Table::new();
        let mut methods = 0;
        for service in pool.services() {
            for method in service.methods() {
                let path = format!("/{}/{}", service.full_name(), method.name());
                assert!(table.classify(Port::Grpc, &path).is_some(), "{path} has no API group");
                methods += 1;
            }
        }
        assert_eq!(methods, 24);
        // And every method the table names exists.
        for service in GRPC_SERVICES {
            let described = pool.get_service_by_name(service.name).expect(service.name);
            for (method, _) in service.methods {
                assert!(described.methods().any(|m| m.name() == *method), "{}/{method}", service.name);
            }
        }
    }

    #[test]
    fn group_lists_parse() {
        let groups = Groups::parse("inference,metadata").unwrap();
        assert!(groups.contains(Group::Inference) && groups.contains(Group::Metadata));
        assert!(!groups.contains(Group::ModelRepository));
        assert!(Groups::parse("*").unwrap().contains(Group::Canary));
        let error = Groups::parse("inference,admin").unwrap_err();
        assert!(error.contains("\"admin\""), "{error}");
        for group in Group::ALL {
            assert_eq!(Group::parse(group.name()), Some(group));
        }
    }
}
