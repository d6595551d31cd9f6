//! Data blobs under construction: one temp file per source layer, appended to in order, hashed as
//! written. The temp files live in the conversion's temp dir and disappear with it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::ConvertError;
use crate::digest::{Digest, Hasher};

/// A finished data blob on local disk, ready to push.
#[derive(Debug, Clone)]
pub struct BlobFile {
    pub digest: Digest,
    pub size: u64,
    pub path: PathBuf,
}

pub(crate) struct BlobWriter {
    out: BufWriter<File>,
    path: PathBuf,
    hasher: Hasher,
    size: u64,
}

impl BlobWriter {
    pub fn create(dir: &Path, name: &str) -> Result<BlobWriter, ConvertError> {
        let path = dir.join(name);
        let file = File::create(&path).map_err(|e| ConvertError::Io {
            path: path.clone(),
            what: "create data blob".into(),
            error: e,
        })?;
        Ok(BlobWriter { out: BufWriter::with_capacity(1 << 20, file), path, hasher: Hasher::new(), size: 0 })
    }

    /// Appends bytes; returns the offset they were written at.
    pub fn append(&mut self, data: &[u8]) -> Result<u64, ConvertError> {
        let offset = self.size;
        self.out.write_all(data).map_err(|e| ConvertError::Io {
            path: self.path.clone(),
            what: "write data blob".into(),
            error: e,
        })?;
        self.hasher.update(data);
        self.size += data.len() as u64;
        Ok(offset)
    }

    pub fn finish(mut self) -> Result<BlobFile, ConvertError> {
        self.out.flush().map_err(|e| ConvertError::Io {
            path: self.path.clone(),
            what: "flush data blob".into(),
            error: e,
        })?;
        Ok(BlobFile { digest: self.hasher.finish(), size: self.size, path: self.path })
    }
}
