//! Where the ONNX Runtime shared library is looked for.

use std::path::{Path, PathBuf};

const LIBRARY: &str = "libonnxruntime.so";

/// The library to load: the explicit path (flag or ORT_DYLIB_PATH) when given,
/// else the first that exists of `.deps/onnxruntime/` (what deploy/setup.sh
/// fetches) under the working directory or above the executable, the
/// executable's own directory, and /usr/local/lib, /usr/lib.
pub fn locate_library(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(format!(
                "the ONNX Runtime library {} does not exist; run deploy/setup.sh or fix --onnxruntime-library / ORT_DYLIB_PATH",
                path.display()
            ))
        };
    }
    let candidates = candidates();
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        let tried: Vec<_> = candidates.iter().map(|p| p.display().to_string()).collect();
        format!(
            "no ONNX Runtime library found (tried {}); run deploy/setup.sh, or set --onnxruntime-library / ORT_DYLIB_PATH",
            tried.join(", ")
        )
    })
}

fn candidates() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        dirs.push(cwd.join(".deps/onnxruntime"));
    }
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        // target/{debug,release}/ferroserve (and target/debug/deps/ for tests)
        for up in exe_dir.ancestors().skip(1).take(3) {
            dirs.push(up.join(".deps/onnxruntime"));
        }
        dirs.push(exe_dir);
    }
    dirs.push(PathBuf::from("/usr/local/lib"));
    dirs.push(PathBuf::from("/usr/lib"));
    dirs.into_iter().map(|d| d.join(LIBRARY)).collect()
}
