//! config.pbtxt: parsed as protobuf text format against proto/model_config.proto
//! (so an unknown or misspelt field is a load error naming it), then checked
//! and completed against the ONNX graph.

use crate::pb;
use crate::tensor::{DataType, TensorSpec};
use prost_reflect::DynamicMessage;

/// Platform and backend names Triton uses for ONNX Runtime models.
pub const PLATFORM: &str = "onnxruntime_onnx";
pub const BACKEND: &str = "onnxruntime";
/// max_batch_size given to a graph that can batch when no config says otherwise
/// (Triton's default-max-batch-size).
pub const AUTO_MAX_BATCH_SIZE: i32 = 4;
/// The most priority levels a model may have (each is a queue of its own).
pub const MAX_PRIORITY_LEVELS: u64 = 64;

/// The `parameters` keys ferroserve understands; any other key is a load error.
pub const KNOWN_PARAMETERS: &[&str] = &[
    "intra_op_thread_count",
    "inter_op_thread_count",
    "allow_spinning",
    "spin_between_runs",
    "adaptive_concurrency",
    "adaptive_concurrency_min",
    "adaptive_concurrency_max",
    "request_timeout_ms",
    "stable_version",
    "canary_version",
    "canary_weight",
    "slo_latency_seconds",
    "slo_admission",
    "slo_latency_objective",
    "slo_availability_objective",
    "breaker_consecutive_failures",
    "breaker_open_ms",
    "breaker_slow_call_ms",
    "breaker_window",
    "breaker_min_calls",
    "breaker_rate_percent",
    "breaker_probes",
    "shadow_version",
    "shadow_percent",
    "shadow_abs_tolerance",
    "shadow_rel_tolerance",
    "shadow_queue_size",
    "shadow_keep_inputs",
    "shadow_promote_rows",
    "shadow_promote_agreement",
    "shadow_promote_latency_ratio",
    "shadow_promote_weight",
];

/// Parses config.pbtxt text. Errors name the offending field and position.
pub fn parse(text: &str) -> Result<pb::ModelConfig, String> {
    let descriptor = pb::descriptor_pool()
        .get_message_by_name("inference.ModelConfig")
        .expect("model_config.proto defines ModelConfig; this is a bug");
    let text = colon_before_lists(text);
    let message = DynamicMessage::parse_text_format(descriptor, &text).map_err(|e| format!("config.pbtxt: {e}"))?;
    let config = message.transcode_to::<pb::ModelConfig>().map_err(|e| format!("config.pbtxt: {e}"))?;
    check_file_names(&config).map_err(|e| format!("config.pbtxt: {e}"))?;
    Ok(config)
}

/// Parses a config given as JSON (the `config` parameter of a load request,
/// Triton's form: protobuf JSON, field names as in config.pbtxt or camelCase).
pub fn parse_json(text: &str) -> Result<pb::ModelConfig, String> {
    let descriptor = pb::descriptor_pool()
        .get_message_by_name("inference.ModelConfig")
        .expect("model_config.proto defines ModelConfig; this is a bug");
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let message = DynamicMessage::deserialize(descriptor, &mut deserializer)
        .map_err(|e| format!("the load request's config: {e}"))?;
    deserializer.end().map_err(|e| format!("the load request's config: {e}"))?;
    let config = message.transcode_to::<pb::ModelConfig>().map_err(|e| format!("the load request's config: {e}"))?;
    check_file_names(&config).map_err(|e| format!("the load request's config: {e}"))?;
    Ok(config)
}

/// The file names a config gives are plain names inside the model's
/// folders (`default_model_filename` in the version folder, a warm-up
/// `input_data_file` in `warmup/`): no separator, no `..`, no absolute path
/// — a config sent with a load request must not reach a file outside the
/// model.
fn check_file_names(config: &pb::ModelConfig) -> Result<(), String> {
    use pb::model_warmup::input::InputDataType;
    let mut names = vec![("default_model_filename", config.default_model_filename.as_str())];
    for warmup in &config.model_warmup {
        for input in warmup.inputs.values() {
            if let Some(InputDataType::InputDataFile(file)) = &input.input_data_type {
                names.push(("model_warmup input_data_file", file.as_str()));
            }
        }
    }
    for (field, name) in names {
        let plain = !name.contains(['/', '\\', '\0']) && name != "." && name != "..";
        if !plain {
            return Err(format!(
                "{field} {name:?} must be a plain file name inside the model's folder: no '/', '\\' or '..'"
            ));
        }
    }
    Ok(())
}

/// Protobuf's own text parser accepts `input [ { ... } ]` (no colon before a
/// list of messages), the form most Triton configs use; prost-reflect wants
/// `input: [ ... ]`. Inserts the colon where a field name meets `[`, outside
/// strings and comments.
fn colon_before_lists(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut last_significant: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '#' => {
                out.push(c);
                for c in chars.by_ref() {
                    out.push(c);
                    if c == '\n' {
                        break;
                    }
                }
                continue;
            }
            '"' | '\'' => {
                out.push(c);
                while let Some(s) = chars.next() {
                    out.push(s);
                    if s == '\\' {
                        if let Some(escaped) = chars.next() {
                            out.push(escaped);
                        }
                    } else if s == c {
                        break;
                    }
                }
            }
            '[' if last_significant.is_some_and(|p| p.is_alphanumeric() || p == '_') => out.push_str(": ["),
            _ => out.push(c),
        }
        if !c.is_whitespace() {
            last_significant = Some(c);
        }
    }
    out
}

/// The model's I/O as a request sees it, derived from a completed config.
#[derive(Debug, Clone)]
pub struct ModelIo {
    pub max_batch_size: usize,
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
}

/// One input or output: `dims` as clients send them (no batch dimension when
/// batching), `graph_dims` as the graph takes them (reshape applied).
#[derive(Debug, Clone)]
pub struct IoSpec {
    pub name: String,
    pub datatype: DataType,
    pub dims: Vec<i64>,
    pub graph_dims: Vec<i64>,
    pub optional: bool,
}

/// Checks `config` against the graph's signature and fills what it leaves
/// out. `explicit` is false when there was no config.pbtxt at all.
pub fn complete(
    config: &mut pb::ModelConfig,
    name: &str,
    explicit: bool,
    graph_inputs: &[TensorSpec],
    graph_outputs: &[TensorSpec],
) -> Result<ModelIo, String> {
    if config.name.is_empty() {
        config.name = name.to_string();
    } else if config.name != name {
        return Err(format!("config.pbtxt names the model '{}' but its directory is '{name}'", config.name));
    }
    check_platform(config)?;
    let batchable = graph_inputs.iter().chain(graph_outputs).all(|t| t.dims.first() == Some(&-1));
    if config.max_batch_size < 0 {
        return Err(format!("max_batch_size must be >= 0, got {}", config.max_batch_size));
    }
    let partial = config.input.is_empty() && config.output.is_empty();
    if config.max_batch_size == 0 && batchable && (!explicit || partial) && config.scheduling_choice.is_none() {
        config.max_batch_size = AUTO_MAX_BATCH_SIZE;
        config.scheduling_choice = Some(pb::model_config::SchedulingChoice::DynamicBatching(Default::default()));
    }
    let batching = config.max_batch_size > 0;
    if batching && !batchable {
        let fixed = graph_inputs
            .iter()
            .chain(graph_outputs)
            .find(|t| t.dims.first() != Some(&-1))
            .expect("not batchable means one tensor lacks a dynamic first dim; this is a bug");
        return Err(format!(
            "max_batch_size {} needs a dynamic first dimension on every input and output, but '{}' has dims {:?}",
            config.max_batch_size, fixed.name, fixed.dims
        ));
    }
    let inputs = complete_side("input", &mut config.input, graph_inputs, batching)?;
    let outputs = complete_outputs(&mut config.output, graph_outputs, batching)?;
    check_version_policy(config)?;
    check_instance_groups(config)?;
    check_batching(config)?;
    check_parameters(config)?;
    Ok(ModelIo { max_batch_size: config.max_batch_size as usize, inputs, outputs })
}

fn check_platform(config: &mut pb::ModelConfig) -> Result<(), String> {
    if !config.platform.is_empty() && config.platform != PLATFORM {
        return Err(format!("platform '{}' is not supported; use '{PLATFORM}'", config.platform));
    }
    if !config.backend.is_empty() && config.backend != BACKEND {
        return Err(format!("backend '{}' is not supported; use '{BACKEND}'", config.backend));
    }
    if !config.runtime.is_empty() {
        return Err(format!("runtime '{}' is not supported: ferroserve runs ONNX Runtime only", config.runtime));
    }
    config.platform = PLATFORM.to_string();
    config.backend = BACKEND.to_string();
    if config.default_model_filename.is_empty() {
        config.default_model_filename = "model.onnx".to_string();
    }
    Ok(())
}

/// The graph dims a client-facing declaration maps to.
fn to_graph_dims(dims: &[i64], reshape: Option<&pb::ModelTensorReshape>, batching: bool) -> Vec<i64> {
    let body = reshape.map_or(dims, |r| &r.shape[..]);
    let mut full = Vec::with_capacity(body.len() + 1);
    if batching {
        full.push(-1);
    }
    full.extend_from_slice(body);
    full
}

fn compatible(a: &[i64], b: &[i64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| x < 0 || y < 0 || x == y)
}

fn client_dims(graph: &TensorSpec, batching: bool) -> Vec<i64> {
    graph.dims[usize::from(batching)..].to_vec()
}

fn names(specs: &[TensorSpec]) -> String {
    specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
}

fn check_declared(
    side: &str,
    name: &str,
    data_type: i32,
    dims: &[i64],
    reshape: Option<&pb::ModelTensorReshape>,
    graph: &[TensorSpec],
    batching: bool,
) -> Result<(TensorSpec, Vec<i64>), String> {
    let spec = graph
        .iter()
        .find(|g| g.name == name)
        .ok_or_else(|| format!("config {side} '{name}' is not in the model; its {side}s are [{}]", names(graph)))?;
    let datatype = pb::DataType::try_from(data_type)
        .ok()
        .and_then(DataType::from_config)
        .ok_or_else(|| format!("config {side} '{name}' needs a data_type"))?;
    if datatype != spec.datatype {
        return Err(format!(
            "config {side} '{name}' declares {} but the model's is {}",
            datatype.to_config().as_str_name(),
            spec.datatype.to_config().as_str_name()
        ));
    }
    if dims.is_empty() && reshape.is_none() && spec.dims.len() != usize::from(batching) {
        return Err(format!("config {side} '{name}' needs dims"));
    }
    let graph_dims = to_graph_dims(dims, reshape, batching);
    if !compatible(&graph_dims, &spec.dims) {
        return Err(format!(
            "config {side} '{name}' dims {dims:?}{} (with batch: {graph_dims:?}) disagree with the model's {:?}",
            reshape.map(|r| format!(" reshaped to {:?}", r.shape)).unwrap_or_default(),
            spec.dims
        ));
    }
    if let Some(r) = reshape {
        let known = |d: &[i64]| d.iter().all(|&x| x >= 0);
        if known(dims) && known(&r.shape) && dims.iter().product::<i64>() != r.shape.iter().product::<i64>() {
            return Err(format!(
                "config {side} '{name}' reshape {:?} has a different element count from dims {dims:?}",
                r.shape
            ));
        }
    }
    Ok((spec.clone(), graph_dims))
}

fn complete_side(
    side: &str,
    declared: &mut Vec<pb::ModelInput>,
    graph: &[TensorSpec],
    batching: bool,
) -> Result<Vec<IoSpec>, String> {
    if declared.is_empty() {
        *declared = graph
            .iter()
            .map(|g| pb::ModelInput {
                name: g.name.clone(),
                data_type: g.datatype.to_config() as i32,
                dims: client_dims(g, batching),
                ..Default::default()
            })
            .collect();
    }
    let mut specs = Vec::with_capacity(declared.len());
    for input in declared.iter() {
        if input.is_shape_tensor || input.allow_ragged_batch {
            return Err(format!(
                "config input '{}': is_shape_tensor and allow_ragged_batch are not supported",
                input.name
            ));
        }
        let (spec, graph_dims) =
            check_declared(side, &input.name, input.data_type, &input.dims, input.reshape.as_ref(), graph, batching)?;
        specs.push(IoSpec {
            name: spec.name,
            datatype: spec.datatype,
            dims: input.dims.clone(),
            graph_dims,
            optional: input.optional,
        });
    }
    if let Some(missing) = graph.iter().find(|g| !declared.iter().any(|d| d.name == g.name)) {
        return Err(format!("model input '{}' is missing from config.pbtxt", missing.name));
    }
    Ok(specs)
}

fn complete_outputs(
    declared: &mut Vec<pb::ModelOutput>,
    graph: &[TensorSpec],
    batching: bool,
) -> Result<Vec<IoSpec>, String> {
    if declared.is_empty() {
        *declared = graph
            .iter()
            .map(|g| pb::ModelOutput {
                name: g.name.clone(),
                data_type: g.datatype.to_config() as i32,
                dims: client_dims(g, batching),
                ..Default::default()
            })
            .collect();
    }
    let mut specs = Vec::with_capacity(declared.len());
    for output in declared.iter() {
        if output.is_shape_tensor || !output.label_filename.is_empty() {
            return Err(format!(
                "config output '{}': is_shape_tensor and label_filename are not supported",
                output.name
            ));
        }
        let (spec, graph_dims) = check_declared(
            "output",
            &output.name,
            output.data_type,
            &output.dims,
            output.reshape.as_ref(),
            graph,
            batching,
        )?;
        specs.push(IoSpec {
            name: spec.name,
            datatype: spec.datatype,
            dims: output.dims.clone(),
            graph_dims,
            optional: false,
        });
    }
    Ok(specs)
}

fn check_version_policy(config: &mut pb::ModelConfig) -> Result<(), String> {
    use pb::model_version_policy::{Latest, PolicyChoice};
    let policy = config.version_policy.get_or_insert_with(Default::default);
    match &policy.policy_choice {
        None => policy.policy_choice = Some(PolicyChoice::Latest(Latest { num_versions: 1 })),
        Some(PolicyChoice::Latest(l)) if l.num_versions == 0 => {
            return Err("version_policy latest needs num_versions >= 1".into());
        }
        Some(PolicyChoice::Specific(s)) if s.versions.is_empty() => {
            return Err("version_policy specific needs at least one version".into());
        }
        _ => {}
    }
    Ok(())
}

fn check_instance_groups(config: &mut pb::ModelConfig) -> Result<(), String> {
    use pb::model_instance_group::Kind;
    if config.instance_group.is_empty() {
        config.instance_group.push(pb::ModelInstanceGroup { count: 1, ..Default::default() });
    }
    for (i, group) in config.instance_group.iter_mut().enumerate() {
        match Kind::try_from(group.kind) {
            Ok(Kind::Auto | Kind::Cpu) => group.kind = Kind::Cpu as i32,
            _ => return Err(format!("instance_group {i}: only KIND_CPU is supported (this build has no GPU support)")),
        }
        if !group.gpus.is_empty() {
            return Err(format!("instance_group {i}: gpus is not supported on KIND_CPU"));
        }
        if group.count < 0 {
            return Err(format!("instance_group {i}: count must be >= 1, got {}", group.count));
        }
        if group.count == 0 {
            group.count = 1;
        }
        if group.name.is_empty() {
            group.name = format!("{}_{i}", config.name);
        }
    }
    Ok(())
}

fn check_batching(config: &pb::ModelConfig) -> Result<(), String> {
    let Some(pb::model_config::SchedulingChoice::DynamicBatching(batching)) = &config.scheduling_choice else {
        return Ok(());
    };
    if config.max_batch_size == 0 {
        return Err("dynamic_batching needs max_batch_size > 0".into());
    }
    if let Some(&bad) = batching.preferred_batch_size.iter().find(|&&s| s < 1 || s > config.max_batch_size) {
        return Err(format!("dynamic_batching preferred_batch_size {bad} is outside 1..={}", config.max_batch_size));
    }
    let levels = batching.priority_levels;
    if levels == 0 && (batching.default_priority_level > 0 || !batching.priority_queue_policy.is_empty()) {
        return Err("dynamic_batching default_priority_level and priority_queue_policy need priority_levels > 0".into());
    }
    if levels > MAX_PRIORITY_LEVELS {
        return Err(format!("dynamic_batching priority_levels {levels} is over {MAX_PRIORITY_LEVELS}"));
    }
    if levels > 0 && !(1..=levels).contains(&batching.default_priority_level) {
        return Err(format!(
            "dynamic_batching default_priority_level {} is outside 1..={levels} (priority_levels)",
            batching.default_priority_level
        ));
    }
    if let Some(bad) = batching.priority_queue_policy.keys().find(|&&level| !(1..=levels).contains(&level)) {
        return Err(format!(
            "dynamic_batching priority_queue_policy level {bad} is outside 1..={levels} (priority_levels)"
        ));
    }
    Ok(())
}

fn check_parameters(config: &pb::ModelConfig) -> Result<(), String> {
    for (key, value) in &config.parameters {
        if !KNOWN_PARAMETERS.contains(&key.as_str()) {
            return Err(format!("unknown parameter '{key}'; known parameters: {}", KNOWN_PARAMETERS.join(", ")));
        }
        if key.starts_with("slo_") {
            if value.string_value.parse::<f64>().is_err() {
                return Err(format!("parameter '{key}' must be a number, got '{}'", value.string_value));
            }
        } else if value.string_value.parse::<usize>().is_err() {
            return Err(format!("parameter '{key}' must be a whole number, got '{}'", value.string_value));
        }
    }
    Ok(())
}

/// A whole-number parameter from `parameters`, if set.
pub fn parameter(config: &pb::ModelConfig, key: &str) -> Option<usize> {
    config.parameters.get(key).and_then(|p| p.string_value.parse().ok())
}

/// A decimal parameter (the `slo_*` keys), if set.
pub fn decimal_parameter(config: &pb::ModelConfig, key: &str) -> Option<f64> {
    config.parameters.get(key).and_then(|p| p.string_value.parse().ok())
}

/// Total instances over all instance groups.
pub fn instance_count(config: &pb::ModelConfig) -> usize {
    config.instance_group.iter().map(|g| g.count.max(1) as usize).sum::<usize>().max(1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn file_names_stay_inside_the_model() {
        for name in ["../../etc/passwd", "/etc/passwd", "a/model.onnx", "..", "x\\y"] {
            let text = format!("default_model_filename: {name:?}");
            let error = parse(&text).unwrap_err();
            assert!(error.contains("plain file name"), "{name}: {error}");
            let json = format!("{{\"default_model_filename\": {name:?}}}");
            assert!(parse_json(&json).unwrap_err().contains("plain file name"), "{name}");
        }
        let warmup = r#"model_warmup [{ name: "w" batch_size: 1 inputs { key: "x" value: { data_type: TYPE_FP32 dims: [1] input_data_file: "../../../secret" } } }]"#;
        assert!(parse(warmup).unwrap_err().contains("input_data_file"));
        assert_eq!(parse("default_model_filename: \"model.v2.onnx\"").unwrap().default_model_filename, "model.v2.onnx");
    }

    use super::*;

    #[test]
    fn lists_of_messages_parse_with_or_without_colon() {
        let with = parse("input: [ { name: \"a\" dims: [ 1 ] } ]").unwrap();
        let without = parse("input [ { name: \"a\" # a [comment]\n dims: [ 1 ] } ]").unwrap();
        assert_eq!(with, without);
        assert_eq!(without.input[0].dims, vec![1]);
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = parse("name: \"m\"\nmax_batch_sise: 4").unwrap_err();
        assert!(err.contains("max_batch_sise"), "{err}");
    }

    #[test]
    fn strings_keep_brackets() {
        let config = parse("name: \"x[1]\"").unwrap();
        assert_eq!(config.name, "x[1]");
    }
}
