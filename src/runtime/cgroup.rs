//! The CPU limit of the server's cgroup, in cores and fractions of one:
//! a Kubernetes limit of 1500m reads 1.5 (std's `available_parallelism`
//! rounds it down to whole cores, which is right for sizing thread pools
//! and wrong for a capacity answer). cgroup v2 keeps it in `cpu.max`
//! ("quota period" or "max period"), v1 in `cpu.cfs_quota_us` (-1 for
//! none) over `cpu.cfs_period_us`. A limit anywhere from the process's
//! own group up to the hierarchy's root applies, so the tightest counts.

use std::path::{Path, PathBuf};

/// The tightest CPU limit over the process's cgroup and its parents, in
/// cores; None where there is none or it cannot be read.
pub fn cpu_limit() -> Option<f64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    groups(&cgroups, &mounts)
        .into_iter()
        .filter_map(|group| group.limit(|path| std::fs::read_to_string(path).ok()))
        .min_by(f64::total_cmp)
}

/// A cgroup directory holding a CPU controller, below its hierarchy's mount.
#[derive(Debug, PartialEq)]
struct Group {
    mount: PathBuf,
    directory: PathBuf,
    v2: bool,
}

impl Group {
    /// The tightest limit from `directory` up to `mount`, read with `read`.
    fn limit(&self, read: impl Fn(&Path) -> Option<String>) -> Option<f64> {
        let mut tightest: Option<f64> = None;
        let mut directory = Some(self.directory.as_path());
        while let Some(at) = directory.filter(|d| d.starts_with(&self.mount)) {
            let here = if self.v2 {
                read(&at.join("cpu.max")).and_then(|text| parse_max(&text))
            } else {
                match (read(&at.join("cpu.cfs_quota_us")), read(&at.join("cpu.cfs_period_us"))) {
                    (Some(quota), Some(period)) => parse_v1(&quota, &period),
                    _ => None,
                }
            };
            tightest = match (tightest, here) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            directory = at.parent();
        }
        tightest
    }
}

/// The process's CPU cgroups: each line of /proc/self/cgroup whose
/// hierarchy carries the cpu controller (v1) or is the unified one (v2),
/// placed under the mount of that hierarchy from /proc/self/mountinfo.
fn groups(cgroups: &str, mountinfo: &str) -> Vec<Group> {
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else { continue };
        let fields: Vec<&str> = before.split(' ').collect();
        let rest: Vec<&str> = after.split(' ').collect();
        let (Some(root), Some(mount), Some(kind)) = (fields.get(3), fields.get(4), rest.first()) else { continue };
        let v2 = match *kind {
            "cgroup2" => true,
            "cgroup" if rest.get(2).is_some_and(|options| options.split(',').any(|o| o == "cpu")) => false,
            _ => continue,
        };
        let path = cgroups.lines().find_map(|entry| {
            let mut parts = entry.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let wanted = if v2 { controllers.is_empty() } else { controllers.split(',').any(|c| c == "cpu") };
            wanted.then_some(path)
        });
        let Some(path) = path else { continue };
        // The mount shows the hierarchy from `root` on; a group outside it
        // (another namespace's view) cannot be read from here.
        let Some(relative) = Path::new(path).strip_prefix(root).ok() else { continue };
        found.push(Group { mount: PathBuf::from(mount), directory: Path::new(mount).join(relative), v2 });
    }
    found
}

/// cgroup v2 `cpu.max`: "50000 100000" is half a core, "max 100000" none.
fn parse_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    parse_v1(fields.next()?, fields.next().unwrap_or("100000"))
}

/// cgroup v1 (and each half of v2's `cpu.max`): a quota of -1 (or "max")
/// is none.
fn parse_v1(quota: &str, period: &str) -> Option<f64> {
    let quota: f64 = quota.trim().parse().ok()?;
    let period: f64 = period.trim().parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const MOUNTINFO: &str = "\
24 30 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
31 24 0:26 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
33 24 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 24 0:29 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 24 0:30 /kubepods /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory";

    const CGROUP: &str = "\
5:memory:/kubepods/pod1
4:cpuset:/
3:cpu,cpuacct:/kubepods/pod1/c1
0::/system.slice/ferroserve.service";

    #[test]
    fn each_cpu_hierarchy_is_placed_under_its_mount() {
        let found = groups(CGROUP, MOUNTINFO);
        assert_eq!(
            found,
            vec![
                Group {
                    mount: "/sys/fs/cgroup/unified".into(),
                    directory: "/sys/fs/cgroup/unified/system.slice/ferroserve.service".into(),
                    v2: true,
                },
                Group {
                    mount: "/sys/fs/cgroup/cpu,cpuacct".into(),
                    directory: "/sys/fs/cgroup/cpu,cpuacct/kubepods/pod1/c1".into(),
                    v2: false,
                },
            ]
        );
    }

    #[test]
    fn the_tightest_limit_up_the_tree_counts() {
        let files: HashMap<&str, &str> = [
            ("/cg/a/b/cpu.cfs_quota_us", "-1\n"),
            ("/cg/a/b/cpu.cfs_period_us", "100000\n"),
            ("/cg/a/cpu.cfs_quota_us", "150000\n"),
            ("/cg/a/cpu.cfs_period_us", "100000\n"),
            ("/cg/cpu.cfs_quota_us", "-1\n"),
            ("/cg/cpu.cfs_period_us", "100000\n"),
            // Above the mount: never read.
            ("/cpu.cfs_quota_us", "1000\n"),
            ("/cpu.cfs_period_us", "100000\n"),
        ]
        .into();
        let read = |path: &Path| files.get(path.to_str().unwrap()).map(|s| s.to_string());
        let group = Group { mount: "/cg".into(), directory: "/cg/a/b".into(), v2: false };
        assert_eq!(group.limit(read), Some(1.5));
        let none = Group { mount: "/cg".into(), directory: "/cg".into(), v2: false };
        assert_eq!(none.limit(read), None);
    }

    #[test]
    fn quotas_parse_as_cores() {
        assert_eq!(parse_max("50000 100000\n"), Some(0.5));
        assert_eq!(parse_max("max 100000\n"), None);
        assert_eq!(parse_max("200000"), Some(2.0));
        assert_eq!(parse_max(""), None);
        assert_eq!(parse_v1("1000", "2000"), Some(0.5));
        assert_eq!(parse_v1("-1", "100000"), None);
        assert_eq!(parse_v1("x", "100000"), None);
    }
}
