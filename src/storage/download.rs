//! One object to one file, checked against its listing: the store must
//! still hold the version listed (its ETag, as a precondition of every
//! read) and exactly the bytes listed. Large objects come in ranged reads,
//! several at once, each written as it arrives, so memory stays bounded
//! whatever the size.

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Objects up to this size come in one read; larger ones in reads of this size.
pub const CHUNK: u64 = 8 << 20;

/// Ranged reads in flight at once for one large object (each body is
/// written as it comes, so this bounds connections, not memory).
const PARALLEL: usize = 8;

/// What went wrong, by the `reason` label of the sync error counter.
#[derive(Debug)]
pub enum Failure {
    /// The store did not answer the read (unreachable, an error, the object
    /// gone or changed since it was listed).
    Read(String),
    /// The bytes are not what the listing said.
    Verify(String),
    /// The local disk.
    Io(String),
}

impl Failure {
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Read(_) => "download",
            Failure::Verify(_) => "verify",
            Failure::Io(_) => "io",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Read(m) | Failure::Verify(m) | Failure::Io(m) => f.write_str(m),
        }
    }
}

fn read_error(location: &ObjectPath, e: object_store::Error) -> Failure {
    match e {
        object_store::Error::Precondition { .. } => {
            Failure::Verify(format!("{location} changed since it was listed (its ETag no longer matches)"))
        }
        object_store::Error::NotFound { .. } => Failure::Read(format!("{location} vanished since it was listed")),
        e => Failure::Read(format!("reading {location}: {e}")),
    }
}

/// Downloads `location` into `dest` (created), checking it is `size` bytes
/// with `e_tag`; calls `progress` with each piece's length. Each read's
/// body is written as it arrives, at its offset, so memory holds only the
/// pieces in flight, whatever the object's size.
pub async fn object(
    store: &dyn ObjectStore,
    location: &ObjectPath,
    size: u64,
    e_tag: Option<&str>,
    dest: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), Failure> {
    let file = std::fs::File::create(dest).map_err(|e| Failure::Io(format!("writing {}: {e}", dest.display())))?;
    let ranges: Vec<_> = (0..size.div_ceil(CHUNK).max(1)).map(|i| i * CHUNK..((i + 1) * CHUNK).min(size)).collect();
    let whole = ranges.len() == 1;
    let read = |range: std::ops::Range<u64>| {
        let file = &file;
        async move {
            let options = GetOptions {
                if_match: e_tag.map(str::to_string),
                // One read asks for the object, so a size that is not as
                // listed shows; more ask for their ranges.
                range: (!whole).then(|| GetRange::Bounded(range.clone())),
                ..Default::default()
            };
            let result = store.get_opts(location, options).await.map_err(|e| read_error(location, e))?;
            check_e_tag(location, e_tag, result.meta.e_tag.as_deref())?;
            let mut at = range.start;
            let mut pieces = result.into_stream();
            while let Some(piece) = pieces.next().await {
                let piece = piece.map_err(|e| read_error(location, e))?;
                if at + piece.len() as u64 > range.end {
                    return Err(Failure::Verify(format!("{location} holds more than the {size} bytes listed")));
                }
                file.write_all_at(&piece, at).map_err(|e| Failure::Io(format!("writing {}: {e}", dest.display())))?;
                at += piece.len() as u64;
                progress(piece.len() as u64);
            }
            Ok::<_, Failure>(at - range.start)
        }
    };
    let mut reads = futures::stream::iter(ranges).map(read).buffer_unordered(PARALLEL);
    let mut written = 0u64;
    while let Some(bytes) = reads.try_next().await? {
        written += bytes;
    }
    if written != size {
        return Err(Failure::Verify(format!("{location}: {written} bytes read, {size} listed")));
    }
    Ok(())
}

/// Stores that honour `if_match` never get here with a different ETag;
/// this catches the ones that ignore it.
fn check_e_tag(location: &ObjectPath, listed: Option<&str>, served: Option<&str>) -> Result<(), Failure> {
    match (listed, served) {
        (Some(listed), Some(served)) if listed != served => {
            Err(Failure::Verify(format!("{location}: served ETag {served} is not the listed {listed}")))
        }
        _ => Ok(()),
    }
}
