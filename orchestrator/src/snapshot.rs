//! A volume's contents to a file and back, through the engine's archive API (`docker cp`):
//! no helper image and no shell in the app's image needed, the container only has to exist.

use std::path::Path;

use bollard::query_parameters::{
    DownloadFromContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::{engine_err, Engine, Error};

impl Engine {
    /// Writes what `container` has at `target` (a mounted volume) to `file` as a tar whose
    /// entries start with `target`'s last component; returns its size.
    pub async fn save_path(
        &self,
        container: &str,
        target: &str,
        file: &Path,
    ) -> Result<u64, Error> {
        let io = |e: std::io::Error| Error::Engine {
            action: format!("write {}", file.display()),
            error: e.to_string(),
        };
        let options = DownloadFromContainerOptionsBuilder::new()
            .path(target)
            .build();
        let mut chunks = std::pin::pin!(self
            .docker
            .download_from_container(container, Some(options)));
        // Written beside, then renamed: a snapshot is whole or absent.
        let partial = file.with_extension("tar.partial");
        let mut out = tokio::fs::File::create(&partial).await.map_err(io)?;
        let mut size = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(engine_err(format!("read {target} of {container}")))?;
            size += chunk.len() as u64;
            out.write_all(&chunk).await.map_err(io)?;
        }
        out.sync_all().await.map_err(io)?;
        tokio::fs::rename(&partial, file).await.map_err(io)?;
        Ok(size)
    }

    /// Unpacks `file` (from [`Engine::save_path`]) into `container` (created, not running) so
    /// that it becomes `target` again.
    pub async fn restore_path(
        &self,
        container: &str,
        target: &str,
        file: &Path,
    ) -> Result<(), Error> {
        let parent = Path::new(target)
            .parent()
            .and_then(|p| p.to_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/");
        let tar = tokio::fs::read(file).await.map_err(|e| Error::Engine {
            action: format!("read {}", file.display()),
            error: e.to_string(),
        })?;
        let options = UploadToContainerOptionsBuilder::new().path(parent).build();
        self.docker
            .upload_to_container(container, Some(options), bollard::body_full(tar.into()))
            .await
            .map_err(engine_err(format!("write {target} of {container}")))
    }
}
